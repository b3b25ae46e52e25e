"""Sample a trained run, plot, evaluate or export: flags -> tf_score.runs / evaluate -> files.

    python run_sample.py --workdir=runs/toy_mixture                 # samples.npz + samples.png
    python run_sample.py --workdir=runs/toy_mixture --evaluate      # the two-mode comparison
    python run_sample.py --workdir=runs/mnist_cpu --sampler=heun --metrics=fid,kid \
        --classifier=runs/mnist_classifier                          # FID/KID with the floor
    python run_sample.py --workdir=runs/mnist_vae_ssm --evaluate      # VAE: AIS test NLL

The run is rebuilt from workdir/config.json and the EMA weights of the latest checkpoint; its
sampler settings are the workdir's, except those given on the command line.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import app

import flags.definitions as F


def _write_json(path, obj):
    from tf_score import atomic

    atomic.write_json(path, obj)


def _save_npz(path, **arrays):
    """np.savez to a temporary name, then renamed: an interrupted write leaves the old file."""
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _out(run) -> str:
    """Where this command writes its results: --output_dir, else the run's workdir."""
    return F.OUTPUT_DIR.value or run.workdir


def print_table(m: dict) -> None:
    """The two-mode table (``evaluate.two_mode`` metrics)."""
    from tf_score.families.evaluate import TWO_MODE_ROWS

    n = m["num_samples_per_batch"] * m["num_batches"]
    print(
        f"\nmode weight = fraction with x1 + x2 > 0 (target 0.80), n = {n} "
        f"({m['num_batches']} x {m['num_samples_per_batch']}); MMD^2 vs exact samples, "
        f"n = {m['num_samples_per_batch']} (exact vs exact: {m['exact_vs_exact_mmd']:.4f}); "
        f"p: kernel two-sample test against exact samples ({m['num_permutations']} "
        "permutations)"
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


def _toy_fast(run) -> None:
    from tf_score import data
    from tf_score.evaluation import plotting
    from tf_score.families import evaluate

    r = evaluate.two_mode_fast(
        run, num_samples=F.NUM_SAMPLES.value, num_batches=F.EVAL_REPEATS.value,
        seed=F.SEED.value, num_permutations=F.NUM_PERMUTATIONS.value,
    )  # fmt: skip
    panels = {"exact samples": r.exact}
    for name, x in r.samples.items():
        row = r.metrics["samplers"][name]
        panels[f"{name}, {row['num_evals']} evals (w={row['mode_weight']:.2f})"] = x[:1280]
    extent = data.get_toy(run.config.data.dataset).extent
    plotting.scatter_panels(panels, extent, path=os.path.join(_out(run), "samples.png"))
    _write_json(os.path.join(_out(run), "metrics.json"), r.metrics)
    print_fast_table(r.metrics)
    print(f"wrote {_out(run)}/metrics.json and samples.png")


def _toy(run) -> None:
    from tf_score import api, data
    from tf_score.evaluation import plotting
    from tf_score.families import evaluate

    extent = data.get_toy(run.config.data.dataset).extent
    if F.EVALUATE.value and run.config.is_continuous:
        return _toy_fast(run)
    if F.EVALUATE.value:
        r = evaluate.two_mode(
            run,
            num_samples=F.NUM_SAMPLES.value,
            num_batches=F.EVAL_REPEATS.value,
            seed=F.SEED.value,
            num_permutations=F.NUM_PERMUTATIONS.value,
            jit_compile=F.JIT.value,
        )
        evaluate.plot_two_mode(r, extent, os.path.join(_out(run), "samples.png"))
        _write_json(os.path.join(_out(run), "metrics.json"), r.metrics)
        print_table(r.metrics)
        print(f"wrote {_out(run)}/metrics.json and samples.png")
        return
    out = api.generate(run, F.NUM_SAMPLES.value, F.SEED.value, jit_compile=F.JIT.value)
    _save_npz(os.path.join(_out(run), "samples.npz"), samples=out.samples)
    title = f"{run.config.sampler.sampler} ({out.num_evals} evaluations)"
    plotting.scatter_panels(
        {title: out.samples}, extent, path=os.path.join(_out(run), "samples.png")
    )
    print(f"wrote {len(out.samples)} samples to {_out(run)}/samples.npz and samples.png")


def _inpaint(run) -> None:
    import tensorflow as tf

    from tf_score import api
    from tf_score.evaluation import plotting
    from tf_score.families import score_model

    shape, n = run.data_shape, F.NUM_SAMPLES.value
    images, *_ = score_model.load_training_images(run.config.data, split="test")
    x_obs = tf.cast(next(iter(images.batch(n))), tf.float32) / 255.0
    w = shape[1]
    left = tf.ones([shape[0], w // 2, shape[2]])
    mask = tf.concat([left, tf.zeros([shape[0], w - w // 2, shape[2]])], axis=1)
    out = api.inpaint(run, x_obs, mask, F.SEED.value, jit_compile=F.JIT.value)
    occluded = x_obs * mask + 0.5 * (1 - mask)
    rows = [
        plotting.image_grid(a, ncols=min(n, 16))
        for a in (occluded.numpy(), out.samples.numpy(), x_obs.numpy())
    ]
    gap = np.full((4, rows[0].shape[1], rows[0].shape[2]), 255, np.uint8)
    grid = np.concatenate([rows[0], gap, rows[1], gap, rows[2]])
    plotting.save_png(grid, os.path.join(_out(run), "inpaint.png"), scale=2)
    _save_npz(
        os.path.join(_out(run), "inpaint.npz"),
        observed=x_obs.numpy(),
        mask=mask.numpy(),
        samples=out.samples.numpy(),
    )
    print(
        f"inpainted {n} test images ({int(out.num_evals)} evaluations each): "
        f"{_out(run)}/inpaint.png (rows: occluded, samples, original)"
    )


def _save_snapshots(workdir, snaps, shape) -> None:
    from tf_score.evaluation import plotting

    k = min(8, snaps.shape[1])
    strip = snaps[:, :k].transpose(1, 0, 2, 3, 4).reshape(-1, *shape)
    plotting.save_png(
        plotting.image_grid(strip, ncols=len(snaps)), os.path.join(workdir, "snapshots.png"), 2
    )
    frames = [plotting.image_grid(f) for f in snaps]
    plotting.save_gif(frames, os.path.join(workdir, "snapshots.gif"), scale=2)


def _images(run) -> None:
    from tf_score import api
    from tf_score.evaluation import plotting
    from tf_score.families import evaluate

    n, name = F.NUM_SAMPLES.value, run.config.sampler.sampler
    reference = None
    if F.METRICS.value:  # every check and load before any sampling
        reference = evaluate.quality_reference(
            run, n, F.FEATURE_EXTRACTOR.value, F.CLASSIFIER.value, F.INCEPTION_WEIGHTS.value
        )
    out = api.generate(
        run,
        n,
        F.SEED.value,
        batch_size=F.SAMPLE_BATCH_SIZE.value,
        jit_compile=F.JIT.value,
        snapshots=F.SNAPSHOTS.value,
        progress=F.PROGRESS.value,
    )
    x = out.samples
    images = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    plotting.save_png(plotting.image_grid(x[:100]), os.path.join(_out(run), "samples.png"), 2)
    _save_npz(os.path.join(_out(run), "samples.npz"), samples=x, images=images)
    if out.snapshots is not None:
        _save_snapshots(_out(run), out.snapshots, run.data_shape)
    print(
        f"{name}: {n} samples, {out.num_evals} evaluations each, {out.seconds:.1f} s "
        f"({n * out.num_evals / out.seconds:.0f} evaluations/s), checkpoint step {run.step} "
        f"-> {_out(run)}/samples.png, samples.npz"
        + (", snapshots.png, snapshots.gif" if out.snapshots is not None else "")
    )
    if reference is not None:
        q = evaluate.image_quality(images, reference, seed=F.SEED.value)
        q.update(
            sampler=name,
            num_evals=out.num_evals,
            sample_seconds=out.seconds,
            checkpoint_step=run.step,
            denoise=run.config.sampler.denoise,
            seed=F.SEED.value,
        )
        path = F.METRICS_FILE.value or os.path.join(_out(run), f"quality_{name}.json")
        _write_json(path, q)
        print_quality(q)
        print(f"wrote {path}")


def _bits_per_dim(run) -> None:
    from tf_score.families import evaluate

    tol = run.config.sampler.ode_tol
    summary, per_image = evaluate.bits_per_dim(
        run, F.BITS_PER_DIM.value, F.SEED.value, F.EVAL_BATCH.value, tol, progress=F.PROGRESS.value
    )
    path = os.path.join(_out(run), "bits_per_dim.json")
    _write_json(path, summary)
    _save_npz(os.path.join(_out(run), "bits_per_dim_per_image.npz"), bits_per_dim=per_image)
    print(
        f"bits/dim {summary['mean']:.4f} ± {summary['se']:.4f} on {summary['n']} dequantised "
        f"test images (ODE tol {tol:g}, {summary['ode_fn_evaluations']:.0f} evaluations, "
        f"{summary['seconds']:.0f} s, step {run.step}) -> {path}"
    )


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


def _vae(run) -> None:
    import tensorflow as tf

    from tf_score.evaluation import plotting
    from tf_score.families import evaluate, vae

    vcfg, seed, wd = vae.vae_config(run.config), F.SEED.value, _out(run)
    prior_x = vae.prior_samples(vcfg, run.models["decoder"], F.NUM_SAMPLES.value, [seed, 0])
    plotting.save_png(plotting.image_grid(prior_x.numpy()), f"{wd}/prior_samples.png", 2)
    n_eval = F.EVAL_EXAMPLES.value if F.EVALUATE.value else 32
    x = evaluate.vae_test_images(run, max(n_eval, 32))
    rec = vae.reconstructions(vcfg, run.models, x[:32], tf.constant([seed, 1])).numpy()
    pairs = np.concatenate([x[:32], rec], axis=2)
    plotting.save_png(plotting.image_grid(pairs, ncols=4), f"{wd}/reconstructions.png", 2)
    print(f"wrote {wd}/prior_samples.png and reconstructions.png (data | reconstruction)")
    if not F.EVALUATE.value:
        return
    m, per_example = evaluate.vae_likelihood(
        run,
        x[:n_eval],
        seed,
        ais_chains=F.AIS_CHAINS.value,
        ais_temperatures=F.AIS_TEMPERATURES.value,
        ais_leapfrog_steps=F.AIS_LEAPFROG_STEPS.value,
        eval_batch=F.EVAL_BATCH.value,
        iwae_samples=F.IWAE_SAMPLES.value,
        progress=F.PROGRESS.value,
    )
    _write_json(os.path.join(wd, "metrics.json"), m)
    # Per-example values: two models evaluated on the same images compare pairwise.
    _save_npz(os.path.join(wd, "nll_per_example.npz"), **per_example)
    print_vae_table(m)
    print(f"wrote {os.path.join(wd, 'metrics.json')}")


def _load(workdir):
    """The run with this command line's sampler settings over the workdir's."""
    from tf_score import api

    data_dir = F.FLAGS["data_dir"].value if F.FLAGS["data_dir"].present else None
    run = api.load(workdir, F.CHECKPOINT.value, data_dir=data_dir)
    cfg = run.config.replace(sampler=F.sampler_overrides())
    return dataclasses.replace(run, config=cfg)


def _check_request(run) -> None:
    if F.BITS_PER_DIM.value and (not run.config.is_image or run.family != "score"):
        raise app.UsageError("--bits_per_dim is for image score models")
    if F.METRICS.value and (not run.config.is_image or F.INPAINT.value):
        raise app.UsageError(
            "--metrics is for sampling image models (not with --inpaint); the 2-D toys report "
            "mode weights, MMD and a two-sample test with --evaluate"
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tf_score import api, config, sampling
    from tf_score.families import evaluate
    from tf_score.training import signals

    try:
        F.load_plugins()
        with signals.exit_on_interrupt("stopped (results are written only when complete)"):
            _main(_load(F.WORKDIR.value))
    except (
        config.ConfigError,
        api.RunError,
        evaluate.EvaluationError,
        sampling.SamplerError,
    ) as e:
        raise app.UsageError(str(e)) from e


def _main(run) -> None:
    from tf_score import api

    _check_request(run)
    if not F.EXPORT_DIR.value:  # before any work: results are never computed to be lost
        api.check_writable(_out(run), "--output_dir")
    if F.EXPORT_DIR.value:
        path = F.export(run)
        print(f"exported step {run.step} for TF Serving: {path}")
    elif run.family == "vae":
        _vae(run)
    elif run.config.is_image and F.BITS_PER_DIM.value:
        _bits_per_dim(run)
    elif run.config.is_image:
        _inpaint(run) if F.INPAINT.value else _images(run)
    else:
        _toy(run)


if __name__ == "__main__":
    from absl import flags

    flags.mark_flag_as_required("workdir")
    app.run(main)
