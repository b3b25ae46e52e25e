"""Guidance on the conditional two-mode toy: exact denoisers against a trained model.

    python run_train.py --flagfile=flags/presets/toy_edm_cond.cfg --workdir=runs/toy_edm_cond
    python benchmarks/guidance_toy.py --workdir=runs/toy_edm_cond

For each guidance weight w in {0, 1, 2, 4} and class k in {0, 1}: n samples from the exact
conditional / unconditional denoisers (``GaussianMixtureToy.denoise``) and from the trained
model, each through the run's solver on the run's grid, for several sampling seeds. Per row:
the fraction in mode 1 (x > 0), the class's mean and sd per coordinate, and kernel two-sample
p-values: learned against exact (same w and k), and at w = 1 against exact draws of class k,
at w = 0 against exact draws of p. Writes --out (JSON, the CPU flags with it) and prints a
markdown table.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

WORKDIR = flags.DEFINE_string("workdir", "runs/toy_edm_cond", "A trained conditional toy.")
NUM = flags.DEFINE_integer("num_samples", 2000, "Samples per row and seed.")
SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Sampling seeds.")
WEIGHTS = flags.DEFINE_list("weights", ["0", "1", "2", "4"], "Guidance weights.")
OUT = flags.DEFINE_string("out", "runs/bench/guidance_toy.json", "Output JSON.")


def _stats(x, ref, exact, seed):
    """Mode weight, per-coordinate mean and sd, p-values against ``ref`` and ``exact``."""
    import numpy as np

    from tf_score.evaluation import metrics

    row = {"mode1": float(np.mean(x[:, 0] > 0)), "mean": x.mean(0).round(4).tolist(),
           "sd": x.std(0).round(4).tolist()}  # fmt: skip
    row["p_vs_exact_solver"] = float(metrics.kernel_two_sample_test(x, exact, 500, seed)[1])
    if ref is not None:
        row["p_vs_target"] = float(metrics.kernel_two_sample_test(x, ref, 500, seed)[1])
    return row


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf
    from run_bench import cpu_info

    from tf_score import api, data
    from tf_score.families.run import Guidance, generate_from
    from tf_score.networks import contract

    run = api.load(WORKDIR.value)
    toy = data.get_toy(run.config.data.dataset)
    exact = contract.DenoiserFunction(toy.denoise, toy.num_classes, "exact")
    rows, t0 = [], time.time()
    for w in (float(v) for v in WEIGHTS.value):
        for k in (0, 1):
            for seed in (int(s) for s in SEEDS.value):
                how = Guidance(k, w)
                drawn = {name: generate_from(model, run.sigmas, run.space, NUM.value, seed,
                                             run.config.sampler, guidance=how).samples
                         for name, model in (("exact", exact), ("learned", run.model))}  # fmt: skip
                rng = np.random.default_rng(100 + seed)
                target = None
                if w == 1.0:
                    target = np.asarray(toy.locs[k]) + rng.standard_normal((NUM.value, 2))
                elif w == 0.0:
                    target = toy.sample(NUM.value, tf.constant([seed, 7])).numpy()
                for name, x in drawn.items():
                    stats = _stats(x, target, drawn["exact"], seed) if name == "learned" else \
                        _stats(x, target, x, seed)  # fmt: skip
                    rows.append({"model": name, "w": w, "class": k, "seed": seed, **stats})
                    print(json.dumps(rows[-1]))
    report = {"workdir": WORKDIR.value, "step": run.step, "sampler": run.config.sampler.sampler,
              "num_samples": NUM.value, "rows": rows, "seconds": time.time() - t0,
              "cpu": cpu_info()}  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(OUT.value)), exist_ok=True)
    with open(OUT.value, "w") as f:
        json.dump(report, f, indent=1)
    print(table(report))


def table(report: dict) -> str:
    """Markdown: one line per (w, class, model), pooled over seeds."""
    import numpy as np

    lines = [
        "| w | class | model | mode-1 weight | mean x | sd x, y | p vs target (min over "
        "seeds) | p learned vs exact (min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["w"], r["class"], r["model"]) for r in report["rows"]},
                  key=lambda t: (t[0], t[1], t[2] != "exact"))  # fmt: skip
    for w, k, m in keys:
        rs = [r for r in report["rows"] if (r["w"], r["class"], r["model"]) == (w, k, m)]
        sd = np.mean([r["sd"] for r in rs], 0)
        p_t = min(r.get("p_vs_target", np.nan) for r in rs)
        p_e = min(r["p_vs_exact_solver"] for r in rs) if m == "learned" else float("nan")
        lines.append(f"| {w:g} | {k} | {m} | {np.mean([r['mode1'] for r in rs]):.3f} | "
                     f"{np.mean([r['mean'][0] for r in rs]):+.3f} | {sd[0]:.3f}, {sd[1]:.3f} | "
                     f"{p_t:.3f} | {p_e:.3f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
