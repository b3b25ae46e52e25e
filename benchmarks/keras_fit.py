"""Keras' fit() against api.train on the toy EDM preset: wall time, steps/s, peak memory, and
whether the EMA weights agree, each figure in its own process, alternated over rounds.

    python benchmarks/keras_fit.py --steps=3000 --rounds=2 --out=runs/bench/keras_fit.json

Both train ``flags/presets/toy_edm.cfg`` cut to ``--steps`` steps (its cosine schedule over
them) from the same seed on the same batches: ``ScoreModel.fit(training_data(cfg))`` and
``api.train`` (run_train.py's call, the loop compiling ``steps_per_loop`` steps per call).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_report  # beside this script

STEPS = flags.DEFINE_integer("steps", 3000, "Training steps per figure.")
ROUNDS = flags.DEFINE_integer("rounds", 2, "Rounds (fit and api.train in each).")
OUT = flags.DEFINE_string("out", "runs/bench/keras_fit.json", "Where to write the JSON.")

_CHILD = """
import json, resource, sys, tempfile, time
import numpy as np
from absl import flags
import tf_score.cli.definitions as F
from tf_score import api
from tf_score.keras import ScoreModel, training_data
how, steps, weights = sys.argv[1], int(sys.argv[2]), sys.argv[3]
flags.FLAGS(["bench", "--flagfile=flags/presets/toy_edm.cfg", f"--num_steps={steps}",
             f"--checkpoint_every={steps}", f"--log_every={steps}", f"--sample_every={steps}"])
cfg = F.experiment_config()
t0 = time.perf_counter()
if how == "fit":
    model = ScoreModel(cfg)
    model.fit(training_data(cfg), epochs=1, steps_per_epoch=steps, verbose=0)
    ema = model.ema_network
else:
    workdir = tempfile.mkdtemp()
    api.train(cfg, workdir, progress=False)
    ema = api.load(workdir).models["score"]
seconds = time.perf_counter() - t0
np.savez(weights, *[w.numpy() for w in ema.weights])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"how": how, "seconds": seconds, "steps_per_s": steps / seconds,
                  "peak_rss_mb": peak}))
"""


def _figure(how: str, weights: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, how, str(STEPS.value), weights],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def _max_difference(a: str, b: str) -> float:
    with np.load(a) as x, np.load(b) as y:
        return max(float(np.max(np.abs(x[k] - y[k]))) for k in x.files)


def main(argv):
    del argv
    runs, tmp = {"fit": [], "train": []}, tempfile.mkdtemp()
    differences = []
    for r in range(ROUNDS.value):
        paths = {how: os.path.join(tmp, f"{how}{r}.npz") for how in runs}
        for how in runs if r % 2 == 0 else reversed(list(runs)):
            runs[how].append(_figure(how, paths[how]))
            print(runs[how][-1], flush=True)
        differences.append(_max_difference(paths["fit"], paths["train"]))
    summary = {how: {k: statistics.median(f[k] for f in figs)
                     for k in ("seconds", "steps_per_s", "peak_rss_mb")}
               for how, figs in runs.items()}  # fmt: skip
    ratio = summary["fit"]["seconds"] / summary["train"]["seconds"]
    result = {"steps": STEPS.value, "rounds": ROUNDS.value, "cpu": bench_report.cpu_info(),
              "median": summary, "runs": runs, "ema_max_difference": differences,
              "fit_over_train_seconds": ratio}  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(OUT.value)), exist_ok=True)
    with open(OUT.value, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("median", "ema_max_difference")}, indent=1))


if __name__ == "__main__":
    app.run(main)
