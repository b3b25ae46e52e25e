"""Classifier-free guidance and autoguidance on a class-conditional MNIST model: FID (with the
real-vs-real floor at the same n) and the classifier's accuracy on the samples (the fraction
it labels as asked, beside its accuracy on the real test images) against the weight w.

    python benchmarks/guidance_mnist.py --workdir=runs/mnist_edm_cond \\
        --classifier=runs/mnist_classifier --data_dir=DIR \\
        --guide_checkpoint=runs/mnist_edm_cond_early/ckpt-3000

Every setting draws n = --num_samples class-balanced samples (n / 10 of each digit, in order)
with the run's solver and options, seeded --seed per sample; the unconditional row has no
labels. Writes --out (JSON, CPU flags included), a PNG plot beside it, and prints a table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

WORKDIR = flags.DEFINE_string("workdir", "runs/mnist_edm_cond", "The conditional run.")
CLASSIFIER = flags.DEFINE_string("classifier", "runs/mnist_classifier", "Saved classifier.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir of MNIST.")
GUIDE = flags.DEFINE_string("guide_checkpoint", None, "Autoguidance: the weak checkpoint.")
NUM = flags.DEFINE_integer("num_samples", 2000, "Samples per setting (FID's n).")
BATCH = flags.DEFINE_integer("sample_batch_size", 500, "Chains run at once.")
WEIGHTS = flags.DEFINE_list("weights", ["0", "0.5", "1", "1.5", "2", "3", "4"], "CFG weights.")
AUTO = flags.DEFINE_list("auto_weights", ["1.5", "2", "3"], "Autoguidance weights.")
SEED = flags.DEFINE_integer("seed", 0, "Sampling seed of every setting.")
SAMPLER = flags.DEFINE_string("sampler", "dpm2_ancestral", "Solver (the preset's FID 2.15 row).")
LEVELS = flags.DEFINE_integer("num_levels", 10, "Levels of the run's karras grid to sample on.")
OUT = flags.DEFINE_string("out", "runs/bench/guidance_mnist.json", "Output JSON.")


def _settings():
    """(name, kind, w): the unconditional model, CFG at each w, autoguidance at each w."""
    rows = [("unconditional", "none", 1.0)]
    rows += [(f"cfg w={w}", "cfg", float(w)) for w in WEIGHTS.value]
    if GUIDE.value:
        rows += [(f"auto w={w}", "auto", float(w)) for w in AUTO.value]
    return rows


def main(argv):
    del argv
    from run_bench import cpu_info

    from tf_score import api
    from tf_score.families import evaluate, score_model

    run = api.load(WORKDIR.value, data_dir=DATA_DIR.value)
    guide = api.load(WORKDIR.value, GUIDE.value, DATA_DIR.value) if GUIDE.value else None
    ref = evaluate.quality_reference(run, NUM.value, classifier=CLASSIFIER.value)
    classes = run.config.data.num_classes
    labels = score_model.class_labels(classes, NUM.value // classes)
    sigmas = dataclasses.replace(run.config.noise, num_levels=LEVELS.value).sigmas()
    rows = []
    for name, kind, w in _settings():
        given = {} if kind == "none" else {"labels": labels, "guidance": w}
        if kind == "auto":
            given["guide"] = guide
        out = api.generate(
            run,
            len(labels),
            seed=SEED.value,
            batch_size=BATCH.value,
            sampler=SAMPLER.value,
            sigmas=sigmas,
            **given,
        )
        q = evaluate.image_quality(evaluate.to_uint8(out.samples), ref, seed=SEED.value,
                                   labels=None if kind == "none" else labels)  # fmt: skip
        rows.append({"name": name, "kind": kind, "w": w, "num_evals": out.num_evals,
                     "sample_seconds": out.seconds, **q})  # fmt: skip
        print(f"{name}: FID {q['fid']:.3f} (floor {q['fid_floor']:.3f}), accuracy "
              f"{q.get('class_accuracy', float('nan')):.4f}, {out.num_evals} evaluations, "
              f"{out.seconds:.0f} s", flush=True)  # fmt: skip
    report = {"workdir": WORKDIR.value, "step": run.step, "guide": GUIDE.value,
              "guide_step": guide.step if guide else None, "sampler": SAMPLER.value,
              "num_levels": LEVELS.value,
              "num_samples": len(labels), "seed": SEED.value, "rows": rows, "cpu": cpu_info(),
              "classifier_test_accuracy": rows[0].get("classifier_test_accuracy")}  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(OUT.value)), exist_ok=True)
    with open(OUT.value, "w") as f:
        json.dump(report, f, indent=1, default=float)
    plot(report, os.path.splitext(OUT.value)[0] + ".png")
    print(table(report))


def table(report: dict) -> str:
    lines = ["| setting | evaluations | FID | floor | FID / floor | accuracy on samples |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["rows"]:
        acc = r.get("class_accuracy")
        lines.append(f"| {r['name']} | {r['num_evals']} | {r['fid']:.3f} | {r['fid_floor']:.3f} "
                     f"| {r['fid'] / r['fid_floor']:.2f} | "
                     f"{'-' if acc is None else f'{acc:.4f}'} |")  # fmt: skip
    real = report.get("classifier_test_accuracy")
    lines.append(f"\nthe classifier's accuracy on the real test images: {real}")
    return "\n".join(lines)


def plot(report: dict, path: str) -> str:
    """FID / floor and accuracy against w: CFG and autoguidance lines, the unconditional
    model and the real images' accuracy as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, style in (("cfg", "o-"), ("auto", "s--")):
        rs = [r for r in report["rows"] if r["kind"] == kind]
        if rs:
            a1.plot([r["w"] for r in rs], [r["fid"] for r in rs], style, label=kind)
            a2.plot([r["w"] for r in rs], [100 * r["class_accuracy"] for r in rs], style,
                    label=kind)  # fmt: skip
    unc, floor = report["rows"][0], report["rows"][0]["fid_floor"]
    a1.axhline(unc["fid"], color="grey", ls=":", label="unconditional")
    a1.axhline(floor, color="k", lw=0.8, label=f"real-vs-real floor (n={report['num_samples']})")
    a1.axhline(2 * floor, color="k", lw=0.8, ls="--", label="2x floor")
    if report.get("classifier_test_accuracy"):
        a2.axhline(100 * report["classifier_test_accuracy"], color="k", lw=0.8,
                   label="real test images")  # fmt: skip
    a1.set(xlabel="guidance w", ylabel="classifier FID", title="FID against guidance")
    a2.set(xlabel="guidance w", ylabel="accuracy on samples (%)", title="asked digit drawn")
    for a in (a1, a2):
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    app.run(main)
