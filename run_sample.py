"""Sample a trained run, plot, evaluate or export: flags -> one tf_score.api call -> a report.

    python run_sample.py --workdir=runs/toy_mixture                 # samples.npz + samples.png
    python run_sample.py --workdir=runs/toy_mixture --evaluate      # the two-mode comparison
    python run_sample.py --workdir=runs/mnist_cpu --sampler=heun --metrics=fid,kid \
        --classifier=runs/mnist_classifier                          # FID/KID with the floor
    python run_sample.py --workdir=runs/mnist_vae_ssm --evaluate      # VAE: AIS test NLL

The run is rebuilt from workdir/config.json and the EMA weights of the latest checkpoint; its
sampler settings are the workdir's, except those given on the command line; the evaluation
and export settings are this command's.
"""

from __future__ import annotations

import dataclasses
import sys

from flags import startup

if __name__ == "__main__":  # first: Ctrl-C while TensorFlow loads is one line
    startup.guard()
from absl import app

import flags.definitions as F


def print_table(m: dict) -> None:
    """The two-mode table (``evaluate.two_mode`` metrics)."""
    from tf_score.families.evaluate import TWO_MODE_ROWS

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
        f"n = {n * m['num_batches']}; p: two-sample test of {n} samples against {n} exact, "
        "one per sampling seed"
    )
    print(f"{'sampler':<22}{'evals':>6}{'mode weight':>18}{'sd':>14}  p per seed")
    for name, r in m["samplers"].items():
        sd = "{:.3f}/{:.3f}".format(*r["mode_sd"])
        ps = " ".join(f"{p:.3f}" for p in r["two_sample_p"])
        w = f"{r['mode_weight']:.3f} ± {r['mode_weight_se']:.3f}"
        print(f"{name:<22}{r['num_evals']:>6}{w:>18}{sd:>14}  {ps}")


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


def _report(run, out_dir: str, result, action: str) -> None:
    """What one api.sample / api.evaluate call computed, as lines and tables."""
    cfg, name = run.config, run.config.sampler.sampler
    if run.family == "vae":
        print(f"wrote {out_dir}/prior_samples.png and reconstructions.png (data | reconstruction)")
    if isinstance(result, dict) and "samplers" in result:
        print_fast_table(result)
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
    elif result is None and run.family == "vae":
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
        print(f"wrote {out_dir}/" + ("metrics.json" if run.family == "vae" else
                                     "metrics.json and samples.png"))  # fmt: skip


def _grid(n) -> str:
    rho = f", rho {n.rho:g}" if n.schedule == "karras" else ""
    return f"{n.schedule}, {n.num_levels} levels, sigma {n.sigma_max:g} -> {n.sigma_min:g}{rho}"


def _load(workdir):
    """The run with this command's settings over the workdir's (``F.sample_config``: the
    sampler's, the evaluation and export sections, a continuous model's sampling grid),
    every flag checked before the checkpoint is read."""
    from tf_score import api

    data_dir = F.FLAGS["data_dir"].value if F.FLAGS["data_dir"].present else None
    cfg = F.sample_config(api.read_config(workdir, data_dir), F.typed(sys.argv))
    if F.FLAGS.checkpoint and F.FLAGS.posthoc_sigma_rel:
        raise app.UsageError("--checkpoint and --posthoc_sigma_rel: give one of them")
    run = api.load(workdir, F.FLAGS.checkpoint, data_dir, F.FLAGS.posthoc_sigma_rel)
    if cfg.noise != run.config.noise:
        print(f"sampling grid: {_grid(cfg.noise)} (trained run's: {_grid(run.config.noise)})")
    return dataclasses.replace(run, config=cfg)


def _check_request(run) -> None:
    ev = run.config.evaluation
    if ev.bits_per_dim and (not run.config.is_image or run.family != "score"):
        raise app.UsageError("--bits_per_dim is for image score models")
    if ev.metrics and (not run.config.is_image or F.FLAGS.inpaint):
        raise app.UsageError(
            "--metrics is for sampling image models (not with --inpaint); the 2-D toys report "
            "mode weights, MMD and a two-sample test with --evaluate"
        )


def _main(run) -> None:
    from tf_score import api

    _check_request(run)
    if run.config.export.export_dir:
        path = F.export(run, run.config)
        print(f"exported step {run.step} for TF Serving: {path}")
        return
    out_dir = F.FLAGS.output_dir or run.workdir
    api.check_writable(out_dir, "--output_dir")  # before any work: nothing computed is lost
    common = dict(seed=F.FLAGS.seed, jit=F.FLAGS.jit, progress=F.FLAGS.progress)
    evaluated = run.family == "vae" or not run.config.is_image
    if run.config.evaluation.bits_per_dim or (F.FLAGS.evaluate and evaluated):
        result, action = api.evaluate(run, out_dir, **common), "evaluate"
    else:
        action = "inpaint" if F.FLAGS.inpaint else "images" if run.config.is_image else "toy"
        result = api.sample(run, out_dir, snapshots=F.FLAGS.snapshots, inpainting=F.FLAGS.inpaint,
                            metrics_file=F.FLAGS.metrics_file, **common)  # fmt: skip
    _report(run, out_dir, result, action)


def _overview(workdirs: list[str], out_dir: str) -> None:
    """The toys' picture, and where a newcomer looks next."""
    import os

    from tf_score import api

    try:
        for w in workdirs:  # each is a run, and every flag's value is valid, before any work
            F.sample_config(api.read_config(w), typed_names=set())
    except api.RunError as e:
        raise api.RunError(f"--overview: {e}") from e
    api.check_writable(out_dir, "--output_dir")
    path = api.toy_overview(workdirs, os.path.join(out_dir, "overview.png"))
    print(f"\nthe picture: {path}")
    spec = ",".join(f"{os.path.basename(os.path.normpath(w))}:{w}/tb" for w in workdirs)
    print(f"training curves: tensorboard --logdir_spec={spec}")
    for w in workdirs:
        export = os.path.join(w, "export")
        for name in sorted(os.listdir(export)) if os.path.isdir(export) else []:
            print(f"serve the export: tensorflow_model_server --rest_api_port=8501 "
                  f"--model_name={name} --model_base_path=$PWD/{export}/{name}  "
                  "(docker and requests: docs/serving.md)")  # fmt: skip


def main(argv):
    with F.one_line_usage_errors():
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        from tf_score import api, config, sampling
        from tf_score.families import evaluate
        from tf_score.training import signals

        try:
            F.load_plugins()
            with signals.exit_on_interrupt("stopped (results are written only when complete)"):
                if F.FLAGS.overview:
                    _overview(F.FLAGS.overview, F.FLAGS.output_dir or ".")
                else:
                    _main(_load(F.FLAGS.workdir))
        except (
            config.ConfigError,
            api.RunError,
            evaluate.EvaluationError,
            sampling.SamplerError,
        ) as e:
            raise app.UsageError(str(e)) from e


def declare_key_flags() -> None:
    """--help and --helpshort list the flags this command reads (they are defined in
    flags/definitions.py, so absl lists none of them by itself)."""
    from absl import flags

    for name in F.sample_flags():
        flags.declare_key_flag(name)


if __name__ == "__main__":
    from absl import flags

    flags.register_multi_flags_validator(
        ["workdir", "overview"], lambda f: bool(f["workdir"] or f["overview"]),
        message="--workdir is required (or --overview=W1,W2: the toys' picture)",
    )  # fmt: skip
    declare_key_flags()
    F.run(main)  # Ctrl-C while the flags are parsed: one line (main reports the rest)
