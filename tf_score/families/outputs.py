"""What ``api.sample`` and ``api.evaluate`` compute and write into a directory: samples, figures
and metrics of a loaded run, by family (toy, image or VAE), with the settings of the run's
``evaluation`` section. Every file is written whole or not at all (``atomic``)."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tf_score import atomic, data, sampling
from tf_score.evaluation import plotting
from tf_score.families import evaluate, score_model, vae
from tf_score.families.run import (
    Generated,
    Guidance,
    Run,
    generate,
    generate_request,
    inpaint,
    request,
)


def guidance_of(run: Run, guide: Run | None = None) -> Guidance:
    """What the run's ``evaluation`` section conditions and guides its samples by (labels,
    guidance, guidance_interval), ``guide`` the autoguidance run (``api.load_guide``)."""
    ev = run.config.evaluation
    return Guidance(ev.labels or None, ev.guidance, guide, ev.guidance_interval or None)


def toy_samples(run: Run, out_dir: str, seed: int, jit: bool = False,
                guide: Run | None = None) -> Generated:  # fmt: skip
    """samples.npz and samples.png of a 2-D toy run's sampler (conditioned and guided per
    ``guidance_of``)."""
    ev, how = run.config.evaluation, guidance_of(run, guide)
    out = generate(run, ev.num_samples, seed, jit=jit, max_evaluations=ev.max_evaluations,
                   labels=how.labels, guidance=how.guidance, guide=guide,
                   guidance_interval=how.interval, seeding=ev.seeding)  # fmt: skip
    atomic.save_npz(os.path.join(out_dir, "samples.npz"), samples=out.samples)
    title = f"{run.config.sampler.sampler} ({out.num_evals} evaluations)"
    extent = data.get_toy(run.config.data.dataset).extent
    plotting.scatter_panels({title: out.samples}, extent, path=os.path.join(out_dir, "samples.png"))
    return out


def toy_evaluation(run: Run, out_dir: str, seed: int, jit: bool = False) -> dict:
    """metrics.json and samples.png: the two-mode comparison (NCSN runs: plain vs annealed
    Langevin, learned vs exact score), the fast solvers of a continuous run, or a conditional
    run's classes and guidance against the exact denoisers."""
    ev, extent = run.config.evaluation, data.get_toy(run.config.data.dataset).extent
    common = dict(num_samples=ev.num_samples, seed=seed, num_permutations=ev.num_permutations)
    if score_model.conditional(run.config):
        r = evaluate.two_mode_conditional(run, **common)
        panels = {"exact samples": r.exact}
        for name, x in r.samples.items():
            row = r.metrics["rows"][name]
            heavy, p = row["mode_weight"], row["two_sample_p_vs_exact"]
            panels[f"{name} (at (5, 5): {heavy:.2f}, p={p:.2f})"] = x
    elif score_model.is_continuous(run.config):
        r = evaluate.two_mode_fast(run, num_seeds=ev.eval_repeats, **common)
        panels = {"exact samples": r.exact}
        for name, x in r.samples.items():
            row = r.metrics["samplers"][name]
            panels[f"{name}, {row['num_evals']} evals (w={row['mode_weight']:.2f})"] = x[:1280]
    else:
        r = evaluate.two_mode(run, num_batches=ev.eval_repeats, jit=jit, **common)
        panels = evaluate.two_mode_panels(r)
    plotting.scatter_panels(panels, extent, path=os.path.join(out_dir, "samples.png"))
    atomic.save_npz(os.path.join(out_dir, EVALUATION_PANELS), titles=np.array(list(panels)),
                    **{f"panel_{i}": x for i, x in enumerate(panels.values())})  # fmt: skip
    atomic.write_json(os.path.join(out_dir, "metrics.json"), r.metrics)
    return r.metrics


#: the panels of a toy's samples.png, saved beside it for ``toy_overview``
EVALUATION_PANELS = "evaluation_panels.npz"


def toy_overview(out_dirs: list[str], path: str, extent: float = 10.0) -> str:
    """One PNG of several toy evaluations (``toy_evaluation``'s panels in each of
    ``out_dirs``), one row per run labelled with its directory; returns ``path``."""
    rows = []
    for d in out_dirs:
        f = os.path.join(d, EVALUATION_PANELS)
        if not os.path.exists(f):
            raise evaluate.EvaluationError(f"no toy evaluation in {d} (run --evaluate first)")
        with np.load(f) as z:
            rows.append((os.path.basename(os.path.normpath(d)),
                         {str(t): z[f"panel_{i}"] for i, t in enumerate(z["titles"])}))  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    plotting.scatter_grid(rows, extent, path=path)
    return path


def _save_snapshots(out_dir: str, snaps, shape) -> None:
    k = min(8, snaps.shape[1])
    strip = snaps[:, :k].transpose(1, 0, *range(2, snaps.ndim)).reshape(-1, *shape)
    grid = plotting.image_grid(strip, ncols=len(snaps))
    plotting.save_png(grid, os.path.join(out_dir, "snapshots.png"), 2)
    frames = [plotting.image_grid(f) for f in snaps]
    plotting.save_gif(frames, os.path.join(out_dir, "snapshots.gif"), scale=2)


def image_samples(run, out_dir, seed, jit=False, snapshots=False, progress=False,
                  metrics_file=None, guide=None) -> tuple[Generated, dict | None]:  # fmt: skip
    """samples.png / samples.npz (and snapshots.png / .gif) of an image run's sampler,
    conditioned and guided per ``guidance_of`` (a grid of one row per class when every class
    is asked for in order); with the evaluation section's ``metrics``, their FID / KID
    against the real-vs-real floor in ``metrics_file`` (default OUT_DIR/quality_SAMPLER.json).
    Every check and load before any sampling."""
    ev, name = run.config.evaluation, run.config.sampler.sampler
    req = request(run.model, run.sigmas, run.space, ev.num_samples, seed, run.config.sampler,
                  ev.sample_batch_size, ev.max_evaluations, guidance_of(run, guide),
                  ev.seeding)  # fmt: skip
    reference = None
    if ev.metrics:
        reference = evaluate.quality_reference(
            run, ev.num_samples, ev.feature_extractor, ev.classifier, ev.inception_weights
        )
    out = generate_request(req, jit=jit, progress=progress, snapshots=snapshots)
    images = evaluate.to_uint8(out.samples)
    plotting.save_png(plotting.image_grid(out.samples[:100], ncols=_columns(req.labels)),
                      f"{out_dir}/samples.png", 2)  # fmt: skip
    atomic.save_npz(os.path.join(out_dir, "samples.npz"), samples=out.samples, images=images)
    if out.snapshots is not None:
        _save_snapshots(out_dir, out.snapshots, run.data_shape)
    if reference is None:
        return out, None
    q = evaluate.image_quality(images, reference, seed=seed, labels=req.labels)
    q.update(sampler=name, num_evals=out.num_evals, sample_seconds=out.seconds,
             checkpoint_step=run.step, denoise=req.plan.options.get("denoise"), seed=seed,
             guidance=ev.guidance, guided_by=_guided_by(run, guide),
             seeding=ev.seeding)  # fmt: skip
    q["path"] = metrics_file or os.path.join(out_dir, f"quality_{name}.json")
    atomic.write_json(q["path"], q)
    return out, q


def _guided_by(run: Run, guide: Run | None) -> str:
    """What the samples were guided by, for the metrics file."""
    if guide is not None:
        return f"autoguidance: {guide.workdir} step {guide.step}"
    return "classifier-free" if run.config.evaluation.labels else "none"


def _columns(labels) -> int | None:
    """A grid's columns: one row per class when the labels run through the classes in
    order, k of each (``score_model.class_labels``); else square."""
    if labels is None or len(labels) < 2:
        return None
    k = int(np.argmax(labels != labels[0])) or len(labels)
    rows = score_model.class_labels(int(labels.max()) + 1, k)
    return k if len(rows) == len(labels) and np.array_equal(rows, labels) else None


def inpaint_test_images(run: Run, out_dir: str, seed: int, jit: bool = False):
    """inpaint.png (rows: occluded, samples, original) and inpaint.npz: the right half of the
    first ``num_samples`` test images filled by the run's sampler. Returns ``SamplerOutput``."""
    shape, n = run.data_shape, run.config.evaluation.num_samples
    images, *_ = data.load_training_images(run.config.data, split="test")
    x_obs = tf.cast(next(iter(images.batch(n))), tf.float32) / 255.0
    w = shape[1]
    mask = tf.concat([tf.ones([shape[0], w // 2, shape[2]]),
                      tf.zeros([shape[0], w - w // 2, shape[2]])], axis=1)  # fmt: skip
    ev = run.config.evaluation
    out = inpaint(run, x_obs, mask, seed, jit=jit, max_evaluations=ev.max_evaluations,
                  labels=ev.labels or None, guidance=ev.guidance, seeding=ev.seeding)  # fmt: skip
    occluded = x_obs * mask + 0.5 * (1 - mask)
    rows = [plotting.image_grid(a, ncols=min(n, 16))
            for a in (occluded.numpy(), out.samples.numpy(), x_obs.numpy())]  # fmt: skip
    gap = np.full((4, rows[0].shape[1], rows[0].shape[2]), 255, np.uint8)
    grid = np.concatenate([rows[0], gap, rows[1], gap, rows[2]])
    plotting.save_png(grid, os.path.join(out_dir, "inpaint.png"), scale=2)
    atomic.save_npz(os.path.join(out_dir, "inpaint.npz"), observed=x_obs.numpy(),
                    mask=mask.numpy(), samples=out.samples.numpy())  # fmt: skip
    return out


def bits_per_dim(run: Run, out_dir: str, seed: int, progress: bool = False) -> dict:
    """bits_per_dim.json and bits_per_dim_per_image.npz (``evaluate.bits_per_dim`` of the
    evaluation section's ``bits_per_dim`` test images at the sampler's ``ode_tol``)."""
    ev = run.config.evaluation
    ode_tol = sampling.options_of(run.config.sampler, "ode")["ode_tol"]
    summary, per_image = evaluate.bits_per_dim(
        run, ev.bits_per_dim, seed, ev.eval_batch, ode_tol, progress=progress
    )
    summary["path"] = os.path.join(out_dir, "bits_per_dim.json")
    atomic.write_json(summary["path"], summary)
    atomic.save_npz(os.path.join(out_dir, "bits_per_dim_per_image.npz"), bits_per_dim=per_image)
    return summary


def vae_outputs(run: Run, out_dir: str, seed: int, likelihood: bool = False,
                progress: bool = False) -> dict | None:  # fmt: skip
    """prior_samples.png and reconstructions.png of a VAE (their names under ``figures``); with
    ``likelihood`` the AIS / IWAE negative log-likelihoods of ``eval_examples`` test images in
    metrics.json, also returned (and the per-example values in nll_per_example.npz, for
    paired comparisons)."""
    ev = run.config.evaluation
    prior_x = vae.prior_samples(run.config, run.models["decoder"], ev.num_samples, [seed, 0])
    plotting.save_png(plotting.image_grid(prior_x.numpy()), f"{out_dir}/prior_samples.png", 2)
    n_eval = ev.eval_examples if likelihood else 32
    x = evaluate.vae_test_images(run, max(n_eval, 32))
    rec = vae.reconstructions(run.config, run.models, x[:32], tf.constant([seed, 1])).numpy()
    pairs = np.concatenate([x[:32], rec], axis=2)
    plotting.save_png(plotting.image_grid(pairs, ncols=4), f"{out_dir}/reconstructions.png", 2)
    figures = {"figures": ("prior_samples.png", "reconstructions.png")}
    if not likelihood:
        return figures
    m, per_example = evaluate.vae_likelihood(run, x[:n_eval], seed, ev, progress=progress)
    atomic.write_json(os.path.join(out_dir, "metrics.json"), m)
    atomic.save_npz(os.path.join(out_dir, "nll_per_example.npz"), **per_example)
    return {**m, **figures}
