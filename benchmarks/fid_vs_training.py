"""Classifier FID of one sampler against training time: every kept checkpoint of a workdir
(or those named), each sampled with the run's own sampler (or --sampler) through the library
(``api.load(checkpoint=...)``, ``api.generate``, ``evaluate.image_quality``).

    python benchmarks/fid_vs_training.py --workdir=runs/mnist_edm_cpu \\
        --classifier=runs/mnist_classifier --data_dir=DIR --num_samples=500

Training minutes per checkpoint are the run's measured wall time (``train_summary.json``)
prorated by step. Writes runs/bench/fid_vs_training.json and .png.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKDIR = flags.DEFINE_string("workdir", "runs/mnist_edm_cpu", "A trained image model.")
CLASSIFIER = flags.DEFINE_string("classifier", "runs/mnist_classifier", "Saved classifier.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir of the model's data set.")
NUM_SAMPLES = flags.DEFINE_integer("num_samples", 500, "Samples per checkpoint (FID's n).")
SAMPLER = flags.DEFINE_string("sampler", None, "Registered sampler (default: the run's).")
STEPS = flags.DEFINE_list("steps", [], "Checkpoint steps (default: every kept checkpoint).")
OUT = flags.DEFINE_string("out", "runs/bench/fid_vs_training.json", "Output JSON.")


def _checkpoints(workdir: str) -> list[tuple[int, str]]:
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
    paths = list(state.all_model_checkpoint_paths) if state else []
    found = sorted((int(p.rsplit("-", 1)[1]), p) for p in paths)
    if STEPS.value:
        wanted = {int(s) for s in STEPS.value}
        found = [(s, p) for s, p in found if s in wanted]
    return found


def main(argv):
    del argv
    from tf_score import api
    from tf_score.families import evaluate

    with open(os.path.join(WORKDIR.value, "train_summary.json")) as f:
        summary = json.load(f)
    seconds_per_step = summary["train_seconds"] / summary["step"]
    rows, reference = [], None
    for step, path in _checkpoints(WORKDIR.value):
        run = api.load(WORKDIR.value, checkpoint=path, data_dir=DATA_DIR.value)
        if reference is None:
            reference = evaluate.quality_reference(
                run, NUM_SAMPLES.value, classifier=CLASSIFIER.value
            )
        out = api.generate(run, NUM_SAMPLES.value, seed=0, sampler=SAMPLER.value,
                            batch_size=250)  # fmt: skip
        images = np.round(np.clip(out.samples, 0, 1) * 255).astype(np.uint8)
        q = evaluate.image_quality(images, reference, seed=0)
        row = dict(step=step, train_minutes=step * seconds_per_step / 60, fid=q["fid"],
                   fid_floor=q["fid_floor"], kid=q["kid"], num_evals=out.num_evals,
                   label_histogram=q.get("label_histogram"))  # fmt: skip
        rows.append(row)
        msg = f"step {step:>6}  {row['train_minutes']:6.1f} min  FID {row['fid']:.2f} "
        print(msg + f"(floor {row['fid_floor']:.2f}, {out.num_evals} evaluations)", flush=True)
    os.makedirs(os.path.dirname(OUT.value) or ".", exist_ok=True)
    with open(OUT.value, "w") as f:
        json.dump({"workdir": WORKDIR.value, "n": NUM_SAMPLES.value, "rows": rows}, f, indent=2)
    _plot(rows, os.path.splitext(OUT.value)[0] + ".png")
    print(f"wrote {OUT.value}")


def _plot(rows, path):
    import matplotlib.pyplot as plt

    from tf_score.evaluation import plotting  # noqa: F401  (selects the headless backend)

    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    ax.plot([r["train_minutes"] for r in rows], [r["fid"] for r in rows], "o-", label="samples")
    ax.axhline(rows[0]["fid_floor"], color="gray", ls="--", lw=1, label="real test images")
    ax.axhline(3 * rows[0]["fid_floor"], color="tab:red", ls=":", lw=1, label="3x floor")
    ax.set_yscale("log")
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylabel(f"classifier FID (n = {NUM_SAMPLES.value})")
    ax.set_title(f"{WORKDIR.value}: FID against training time", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
