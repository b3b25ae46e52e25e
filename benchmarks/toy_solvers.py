"""The toy table: every registered solver on the two-mode mixture 0.2 N((-5,-5), I) +
0.8 N((5,5), I), with the exact score and with a learned continuous model, each on the
flags' grid and sampler options (``evaluate.two_mode_fast``): for each of 5 sampling seeds,
the kernel two-sample p of its 1280 samples against as many exact ones, and the mode weight
and per-mode sd of the 5 x 1280 pooled.

    python benchmarks/toy_solvers.py --flagfile=flags/presets/toy_edm.cfg \\
        [--learned=runs/toy_edm] [--samplers=heun,edm] [--out=runs/bench/toy_solvers.json]

The exact rows use the flags' config (the preset's grid and sampler options) with the
score replaced by the mixture's closed form; the learned rows load --learned and sample it
with the same grid and options. Writes the
JSON (rows per score: sampler, evaluations, weight, sd, p per seed, seeds passing p > 0.05)
and prints the table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import tf_score.cli.definitions as F  # noqa: E402  (the run flags, --flagfile included)

LEARNED = flags.DEFINE_string("learned", None, "A trained continuous toy workdir (optional).")
SAMPLERS = flags.DEFINE_list("samplers", [], "Solvers to run (default: every registered one).")
NUM_SEEDS = flags.DEFINE_integer("num_seeds", 5, "Sampling seeds, one two-sample test each.")
OUT = flags.DEFINE_string("out", "runs/bench/toy_solvers.json", "Output JSON.")


#: the flags' sampling grid, which the learned model is sampled on too
GRID = ("schedule", "num_levels", "sigma_max", "sigma_min", "rho")


def _exact_run():
    """A Run of the flags' config whose model is the mixture's exact score."""
    from tf_score import api, data
    from tf_score.families import score_model
    from tf_score.networks import contract

    cfg = F.experiment_config()
    cfg = cfg.replace(data={"data_mean": score_model.data_mean(cfg), "data_shape": (2,)})
    run = api.Run("(exact score)", cfg, {}, 0)
    run.__dict__["model"] = contract.ScoreFunction(data.get_toy(cfg.data.dataset).score)
    return run


def _rows(run, names) -> list[dict]:
    from tf_score.families import evaluate

    result = evaluate.two_mode_fast(run, tuple(names), num_seeds=NUM_SEEDS.value)
    rows = []
    for name, r in result.metrics["samplers"].items():
        passing = sum(p > 0.05 for p in r["two_sample_p"])
        rows.append({"sampler": name, **r, "seeds_passing": passing})
        print(
            f"  {name:<22}{r['num_evals']:>6}{r['mode_weight']:>8.3f} ± {r['mode_weight_se']:.3f}"
            f"{r['mode_sd'][0]:>8.3f}/{r['mode_sd'][1]:.3f}  {passing}/{NUM_SEEDS.value}  "
            + " ".join(f"{p:.3f}" for p in r["two_sample_p"]),
            flush=True,
        )
    return rows


def main(argv):
    del argv
    from tf_score import api, sampling

    names = SAMPLERS.value or list(sampling.registry.SAMPLERS)
    print(f"{'':2}{'sampler':<22}{'evals':>6}{'weight':>16}{'sd light/heavy':>15}  pass  p")
    out = {"num_seeds": NUM_SEEDS.value, "num_samples": 1280, "tables": {}}
    print("exact score")
    out["tables"]["exact"] = _rows(_exact_run(), names)
    if LEARNED.value:
        run = api.load(LEARNED.value)
        flags_cfg = F.experiment_config()  # its grid (e.g. --num_levels) and sampler options
        grid = {k: getattr(flags_cfg.noise, k) for k in GRID}
        cfg = run.config.replace(noise=grid, sampler=flags_cfg.sampler)
        run = dataclasses.replace(run, config=cfg)
        print(f"learned: {LEARNED.value} (step {run.step})")
        out["tables"]["learned"] = _rows(run, names)
        out["learned_workdir"], out["learned_step"] = LEARNED.value, run.step
    os.makedirs(os.path.dirname(OUT.value) or ".", exist_ok=True)
    with open(OUT.value, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {OUT.value}")


if __name__ == "__main__":
    app.run(main)
