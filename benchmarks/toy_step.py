"""Training steps/s of the toy EDM preset (make demo's EDM phase), for checkouts side by side.

    python benchmarks/toy_step.py --repos=.,/tmp/base --rounds=3 --out=runs/bench/toy_step.json

Each figure runs in its own process on the checkout named: the preset's compiled training loop
(``TrainStep.make_train_loop``: the toy's input pipeline, loss, gradient, Adam, EMA, NaN guard)
timed over ``--steps`` steps after a 200-step warm-up, the median of 3 calls. Checkouts and
``--jit`` settings alternate within each round. ``--profile_dir`` also traces 500 steps of each
and prints the op types that take the most time.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REPOS = flags.DEFINE_list("repos", ["."], "Checkouts to time, in order.")
JITS = flags.DEFINE_list("jits", ["false", "true"], "--jit settings to time.")
ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds (every checkout and setting in each).")
STEPS = flags.DEFINE_integer("steps", 2000, "Steps per timed call.")
PROFILE = flags.DEFINE_string("profile_dir", None, "Trace each figure here (prints top ops).")
OUT = flags.DEFINE_string("out", "runs/bench/toy_step.json", "Where to write the JSON.")
CHILD = flags.DEFINE_string("child", None, "(internal) one figure's settings, as JSON.")

_CHILD_CODE = """
import json, os, sys, time
spec = json.loads(sys.argv[1]); sys.path.insert(0, spec["repo"])
from absl import flags
try:
    import tf_score.cli.definitions as F
except ImportError:  # a checkout from before the command lines moved into tf_score/cli
    import flags.definitions as F
import tensorflow as tf
from tf_score.families import score_model
from tf_score.training.step import TrainStep
flags.FLAGS(["toy", "--flagfile=" + os.path.join(spec["repo"], "flags/presets/toy_edm.cfg"),
             "--workdir=/nonexistent", "--jit=" + spec["jit"]])
cfg = F.experiment_config()
bundle, _ = score_model.bundle(cfg)
step = TrainStep(bundle, cfg.train, seed=0)
strategy = tf.distribute.get_strategy()
it = iter(strategy.distribute_datasets_from_function(
    lambda ctx: bundle.dataset_fn(cfg.train.batch_size, ctx, 0)))
loop = step.make_train_loop(it)
loop(tf.constant(200, tf.int64))
rates = []
for _ in range(3):
    t = time.perf_counter()
    out = loop(tf.constant(spec["steps"], tf.int64))
    float(out["loss"][0])
    rates.append(spec["steps"] / (time.perf_counter() - t))
result = {"steps_per_s": sorted(rates)[1], "loss": float(out["loss"][0])}
if spec.get("profile"):
    sys.path.insert(0, os.path.join(spec["repo"], "benchmarks"))
    import profile_step
    tf.profiler.experimental.start(spec["profile"])
    t = time.perf_counter(); float(loop(tf.constant(500, tf.int64))["loss"][0])
    wall = time.perf_counter() - t
    tf.profiler.experimental.stop()
    result["profile"] = profile_step.summarise(profile_step.op_times(spec["profile"]), wall, 12)
print("RESULT " + json.dumps(result))
"""


def _figure(repo: str, jit: str, profile: str | None) -> dict:
    spec = {"repo": os.path.abspath(repo), "jit": jit, "steps": STEPS.value, "profile": profile}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", _CHILD_CODE, json.dumps(spec)],
                          capture_output=True, text=True, env=env, check=False)  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"figure {spec} failed:\n{proc.stderr[-3000:]}")
    return {**spec, **json.loads(lines[-1][len("RESULT ") :])}


def main(argv):
    del argv
    figures = []
    for r in range(ROUNDS.value):
        for repo in REPOS.value:
            for jit in JITS.value:
                prof = None
                if PROFILE.value and r == 0:
                    prof = os.path.join(PROFILE.value, f"{os.path.basename(repo)}_jit_{jit}")
                fig = {**_figure(repo, jit, prof), "round": r}
                figures.append(fig)
                print(f"round {r} {repo} jit={jit}: {fig['steps_per_s']:.1f} steps/s", flush=True)
    medians = {
        f"{repo} jit={jit}": statistics.median(
            f["steps_per_s"] for f in figures if f["repo"] == os.path.abspath(repo)
            and f["jit"] == jit
        )
        for repo in REPOS.value
        for jit in JITS.value
    }  # fmt: skip
    for name, rate in medians.items():
        print(f"median {name}: {rate:.1f} steps/s")
    os.makedirs(os.path.dirname(os.path.abspath(OUT.value)), exist_ok=True)
    from bench_report import cpu_info

    with open(OUT.value, "w") as f:
        json.dump({"cpu": cpu_info(), "figures": figures, "medians": medians}, f, indent=1)
    print(f"wrote {OUT.value}")


if __name__ == "__main__":
    app.run(main)
