"""What the commands print: the tables and lines of one api.sample / api.evaluate result
(run_sample.py, and run_train.py --evaluate)."""

from __future__ import annotations


def print_table(m: dict) -> None:
    """The two-mode table (``evaluate.two_mode`` metrics)."""
    from tf_score.families.evaluate import TWO_MODE_ROWS  # with the result printed

    n = m["num_samples_per_batch"] * m["num_batches"]
    print(
        f"\nmode weight = fraction with x1 + x2 > 0 (target 0.80), n = {n} "
        f"({m['num_batches']} x {m['num_samples_per_batch']}); MMD^2 vs exact samples, "
        f"n = {m['num_samples_per_batch']} (exact vs exact: {m['exact_vs_exact_mmd']:.4f}); "
        "p: kernel two-sample test against exact samples of the chain's target (p for plain "
        f"Langevin, p_sigma_L for annealed; {m['num_permutations']} permutations)"
    )
    print(f"{'sampler':<28}{'score':<9}{'mode weight':>18}{'MMD^2':>10}{'p':>8}")
    for key, sampler, score in TWO_MODE_ROWS:
        label = "plain Langevin" if sampler == "langevin" else "annealed Langevin"
        w, se = m[f"{key}_mode_weight"], m[f"{key}_mode_weight_se"]
        p = m[f"{key}_two_sample_p"]
        print(f"{label:<28}{score:<9}{w:>11.3f} ± {se:.3f}{m[f'{key}_mmd']:>10.4f}{p:>8.3f}")
    if "train_seconds" in m:
        print(
            f"train {m['train_seconds']:.1f} s ({m['train_loss']}), "
            f"sample {m['sample_seconds']:.1f} s (learned score)"
        )


def print_fast_table(m: dict) -> None:
    """The continuous toy's table (``evaluate.two_mode_fast`` metrics)."""
    n = m["num_samples_per_batch"]
    print(
        f"\nmode weight (target 0.80) and per-mode sd (target 1.0, light / heavy mode) of "
        f"n = {n * m['num_seeds']} ({m['num_seeds']} sampling seeds x {n}); p: two-sample test "
        f"of each seed's {n} samples against {n} exact ({m['num_permutations']} permutations)"
    )
    print(f"{'sampler':<22}{'evals':>6}{'mode weight':>18}{'sd':>14}  p per seed")
    for name, r in m["samplers"].items():
        sd = "{:.3f}/{:.3f}".format(*r["mode_sd"])
        ps = " ".join(f"{p:.3f}" for p in r["two_sample_p"])
        w = f"{r['mode_weight']:.3f} ± {r['mode_weight_se']:.3f}"
        print(f"{name:<22}{r['num_evals']:>6}{w:>18}{sd:>14}  {ps}")


def print_conditional_table(m: dict) -> None:
    """The conditional toy's table (``evaluate.two_mode_conditional`` metrics)."""
    n = m["num_samples_per_batch"]
    print(
        f"\n{m['sampler']}, n = {n} per row: mode weight and per-mode sd (light / heavy), the "
        f"exact denoisers' sd through the same solver and seed, and the two-sample p of the "
        f"learned against those ({m['num_permutations']} permutations)"
    )
    print(f"{'row':<16}{'evals':>6}{'mode weight':>18}{'sd':>14}{'exact sd':>14}{'p':>8}")
    for name, r in m["rows"].items():
        sd, exact = (
            "/".join("-" if v != v else f"{v:.3f}" for v in r[k])
            for k in ("mode_sd", "exact_mode_sd")
        )  # NaN: no sample in that mode
        w = f"{r['mode_weight']:.3f} ± {r['mode_weight_se']:.3f}"
        p = r["two_sample_p_vs_exact"]
        print(f"{name:<16}{r['num_evals']:>6}{w:>18}{sd:>14}{exact:>14}{p:>8.3f}")


def print_quality(q: dict) -> None:
    print(
        f"FID {q['fid']:.3f} (real test images: {q['fid_floor']:.3f}), KID "
        f"{q['kid']:.5f} ± {q['kid_std']:.5f} (real: {q['kid_floor']:.5f}); n = {q['n']} "
        f"samples vs {q['n_reference']} training images, {q['feature_extractor']} features"
    )
    if "label_histogram" in q:
        for who, key in (("samples", "label_histogram"), ("test:   ", "label_histogram_floor")):
            print(f"labels, {who}: " + " ".join(f"{i}:{p:.3f}" for i, p in enumerate(q[key])))


def print_vae_table(m: dict) -> None:
    a = m["ais_nll"]
    print(
        f"{m['encoder']} VAE (latent {m['latent_dim']}, step {m['step']}), "
        f"{m['n_examples']} binarised test images:"
    )
    print(
        f"  AIS NLL   {a['mean']:8.2f} ± {a['se']:.2f} nats  ({a['chains']} chains, "
        f"{a['temperatures']} temperatures, HMC {a['leapfrog_steps']} leapfrog, "
        f"acceptance {a['accept_rate']:.2f}, {a['seconds']:.0f} s)"
    )
    if "iwae_nll" in m:
        i, e = m["iwae_nll"], m["neg_elbo"]
        print(f"  IWAE NLL  {i['mean']:8.2f} ± {i['se']:.2f} nats  (K = {i['samples']})")
        print(f"  -ELBO     {e['mean']:8.2f} ± {e['se']:.2f} nats")


def report(run, out_dir: str, result, action: str) -> None:
    """What one api.sample / api.evaluate call computed, as lines and tables."""
    cfg, name = run.config, run.config.sampler.sampler
    figures = result.get("figures") if isinstance(result, dict) else None
    if figures:
        print(f"wrote {out_dir}/" + " and ".join(figures) + " (data | reconstruction)")
    if isinstance(result, dict) and "samplers" in result:
        print_fast_table(result)
    elif isinstance(result, dict) and "rows" in result:
        print_conditional_table(result)
    elif isinstance(result, dict) and "exact_vs_exact_mmd" in result:
        print_table(result)
    elif isinstance(result, dict) and "ais_nll" in result:
        print_vae_table(result)
    elif isinstance(result, dict) and "ode_fn_evaluations" in result:
        s = result
        print(f"bits/dim {s['mean']:.4f} ± {s['se']:.4f} on {s['n']} dequantised test images "
              f"(ODE tol {s['ode_tol']:g}, {s['ode_fn_evaluations']:.0f} evaluations, "
              f"{s['seconds']:.0f} s, step {run.step}) -> {s['path']}")  # fmt: skip
        return
    elif figures:
        return
    elif action == "images":  # image samples (and their quality)
        out, q = result
        n = len(out.samples)
        print(
            f"{name}: {n} samples, {out.num_evals} evaluations each, {out.seconds:.1f} s "
            f"({n * out.num_evals / out.seconds:.0f} evaluations/s), checkpoint step "
            f"{run.step} -> {out_dir}/samples.png, samples.npz"
            + (", snapshots.png, snapshots.gif" if out.snapshots is not None else "")
        )
        if q is not None:
            print_quality(q)
            print(f"wrote {q['path']}")
    elif action == "toy":
        print(f"wrote {len(result.samples)} samples to {out_dir}/samples.npz and samples.png")
    else:  # inpainting
        print(
            f"inpainted {cfg.evaluation.num_samples} test images ({int(result.num_evals)} "
            f"evaluations each): {out_dir}/inpaint.png (rows: occluded, samples, original)"
        )
    if isinstance(result, dict):
        print(f"wrote {out_dir}/metrics.json" + ("" if figures else " and samples.png"))
