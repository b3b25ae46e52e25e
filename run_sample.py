"""Sample a trained score model, plot, and evaluate.

    python run_sample.py --workdir=runs/toy_mixture                 # samples.npz + samples.png
    python run_sample.py --flagfile=flags/presets/toy_mixture.cfg --workdir=runs/toy_mixture \
        --evaluate                                                   # the two-mode comparison

The model is rebuilt from workdir/config.json and the EMA weights of the latest checkpoint.
"""

from __future__ import annotations

import functools
import json
import os
import time

import numpy as np
from absl import app

import flags.definitions as F


def _load(workdir: str):
    from tf_score import score_model, train

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise app.UsageError(f"--workdir={workdir} has no config.json: train there first")
    with open(path) as f:
        cfg = json.load(f)
    sigmas = score_model.sigmas_from_config(cfg)
    model_fn = score_model.toy_model_fn(sigmas, score_model.toy_model_config(cfg))
    models, step = train.load_ema_models({"score": model_fn}, os.path.join(workdir, "checkpoints"))
    return cfg, sigmas, models["score"], step


def _at_level(model, level: int):
    """Unconditional score x -> s(x, level) from a noise-conditional network."""
    import tensorflow as tf

    return lambda x: model(x, tf.fill([tf.shape(x)[0]], level))


def evaluate_two_mode(workdir, cfg, sigmas, model, step) -> dict:
    """Plain vs annealed Langevin, learned vs exact score; metrics.json and samples.png."""
    import tensorflow as tf

    from tf_score import data, metrics, plotting, samplers

    toy = data.get_toy(cfg["dataset"])
    n, repeats, seed = F.NUM_SAMPLES.value, F.EVAL_REPEATS.value, F.SEED.value
    last = len(sigmas) - 1
    # Score functions are made once: a new Python callable per call would retrace the sampler.
    exact_cond = toy.conditional_score_fn(sigmas)
    exact_score = toy.score_fn()
    learned_last = _at_level(model, last)
    plain = functools.partial(
        samplers.langevin,
        step_size=F.LANGEVIN_STEP_SIZE.value,
        n_steps=F.LANGEVIN_STEPS.value,
        jit_compile=F.JIT.value,
    )
    annealed = functools.partial(
        samplers.annealed_langevin,
        sigmas=sigmas,
        eps=F.STEP_LR.value,
        n_steps_each=F.N_STEPS_EACH.value,
        denoise=F.DENOISE.value,
        jit_compile=F.JIT.value,
    )
    score_fns = {
        "plain_langevin": (plain, learned_last),
        "exact_plain_langevin": (plain, exact_score),
        "annealed_langevin": (annealed, model),
        "exact_annealed_langevin": (annealed, exact_cond),
    }
    runs = {
        name: (lambda x0, s, run=run, fn=fn: run(fn, x0, seed=s))
        for name, (run, fn) in score_fns.items()
    }
    samples = {k: [] for k in runs}
    seconds = {k: 0.0 for k in runs}
    for r in range(repeats):
        x0 = samplers.uniform_init([n, 2], tf.constant([seed, 2 * r]), -toy.extent, toy.extent)
        chain_seed = tf.constant([seed, 2 * r + 1])
        for name, run in runs.items():
            t0 = time.time()
            samples[name].append(run(x0, chain_seed).samples.numpy())
            seconds[name] += time.time() - t0
    exact = toy.sample(n, seed=tf.constant([seed, 99991])).numpy()
    exact_ref = toy.sample(n, seed=tf.constant([seed, 99992])).numpy()

    out = {"num_samples_per_batch": n, "num_batches": repeats, "checkpoint_step": step}
    for name, xs in samples.items():
        pooled = np.concatenate(xs)
        w, se = metrics.mode_weight(pooled)
        out[f"{name}_mode_weight"] = w
        out[f"{name}_mode_weight_se"] = se
        out[f"{name}_mmd"] = metrics.mmd_rbf(xs[0], exact)
    out["exact_samples_mode_weight"] = metrics.mode_weight(exact)[0]
    out["exact_vs_exact_mmd"] = metrics.mmd_rbf(exact_ref, exact)
    out["sample_seconds"] = seconds["plain_langevin"] + seconds["annealed_langevin"]
    summary_path = os.path.join(workdir, "train_summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            out["train_seconds"] = json.load(f)["train_seconds"]
    out["train_loss"] = cfg["loss"]

    titles = {
        "plain_langevin": "plain Langevin, learned s",
        "exact_annealed_langevin": "annealed Langevin, exact s",
        "annealed_langevin": "annealed Langevin, learned s",
    }
    panels = {"exact samples": exact}
    for key, title in titles.items():
        panels[f"{title} (w={out[key + '_mode_weight']:.2f})"] = samples[key][0]
    plotting.scatter_panels(panels, toy.extent, path=os.path.join(workdir, "samples.png"))
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(out, f, indent=2)
    return out


def print_table(m: dict) -> None:
    n = m["num_samples_per_batch"] * m["num_batches"]
    print(
        f"\nmode weight = fraction with x1 + x2 > 0 (target 0.80), n = {n} "
        f"({m['num_batches']} x {m['num_samples_per_batch']}); MMD^2 vs exact samples, "
        f"n = {m['num_samples_per_batch']} (exact vs exact: {m['exact_vs_exact_mmd']:.4f})"
    )
    print(f"{'sampler':<28}{'score':<9}{'mode weight':>18}{'MMD^2':>10}")
    rows = [
        ("plain Langevin", "learned", "plain_langevin"),
        ("plain Langevin", "exact", "exact_plain_langevin"),
        ("annealed Langevin", "learned", "annealed_langevin"),
        ("annealed Langevin", "exact", "exact_annealed_langevin"),
    ]
    for label, score, key in rows:
        w, se = m[f"{key}_mode_weight"], m[f"{key}_mode_weight_se"]
        print(f"{label:<28}{score:<9}{w:>11.3f} ± {se:.3f}{m[f'{key}_mmd']:>10.4f}")
    if "train_seconds" in m:
        print(
            f"train {m['train_seconds']:.1f} s ({m['train_loss']}), "
            f"sample {m['sample_seconds']:.1f} s (learned score)"
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = F.WORKDIR.value
    cfg, sigmas, model, step = _load(workdir)
    if F.EVALUATE.value:
        m = evaluate_two_mode(workdir, cfg, sigmas, model, step)
        print_table(m)
        print(
            f"wrote {os.path.join(workdir, 'metrics.json')} and "
            f"{os.path.join(workdir, 'samples.png')}"
        )
        return

    import tensorflow as tf

    from tf_score import data, plotting, samplers

    toy = data.get_toy(cfg["dataset"])
    x0 = samplers.uniform_init(
        [F.NUM_SAMPLES.value, 2], tf.constant([F.SEED.value, 0]), -toy.extent, toy.extent
    )
    seed = tf.constant([F.SEED.value, 1])
    if F.SAMPLER.value == "langevin":
        out = samplers.langevin(
            _at_level(model, len(sigmas) - 1),
            x0,
            F.LANGEVIN_STEP_SIZE.value,
            F.LANGEVIN_STEPS.value,
            seed,
            jit_compile=F.JIT.value,
        )
    else:
        out = samplers.annealed_langevin(
            model,
            x0,
            sigmas,
            F.STEP_LR.value,
            F.N_STEPS_EACH.value,
            seed,
            denoise=F.DENOISE.value,
            jit_compile=F.JIT.value,
        )
    x = out.samples.numpy()
    np.savez(os.path.join(workdir, "samples.npz"), samples=x)
    plotting.scatter_panels(
        {f"{F.SAMPLER.value} ({int(out.num_evals)} evaluations)": x},
        toy.extent,
        path=os.path.join(workdir, "samples.png"),
    )
    print(f"wrote {len(x)} samples to {workdir}/samples.npz and samples.png")


if __name__ == "__main__":
    from absl import flags

    flags.mark_flag_as_required("workdir")
    app.run(main)
