"""Classifier-free guidance, autoguidance and classifier guidance on a class-conditional
MNIST model: FID (with the real-vs-real floor at the same n) and the classifier's accuracy on
the samples (the fraction it labels as asked, beside its accuracy on the real test images)
against the weight w.

    python benchmarks/guidance_mnist.py --workdir=runs/mnist_edm_cond \\
        --classifier=runs/mnist_classifier --data_dir=DIR \\
        --guide_checkpoint=runs/mnist_edm_cond_early/ckpt-3000 \\
        --noisy_classifier=runs/mnist_noisy_classifier

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
INTERVAL = flags.DEFINE_list(
    "interval", [], "lo,hi: guidance only there (data units), in the rows of --interval_weights."
)
INTERVAL_W = flags.DEFINE_list("interval_weights", ["1.5", "2", "3"], "CFG weights, interval.")
NOISY = flags.DEFINE_string("noisy_classifier", None, "Classifier guidance: its workdir.")
CG = flags.DEFINE_list("classifier_weights", ["1", "2", "4"], "Classifier guidance weights.")
SEED = flags.DEFINE_integer("seed", 0, "Sampling seed of every setting.")
#: DPM2 ancestral (the unconditional preset's FID 2.15 row) loses the asked class under strong
#: guidance on 10 levels (docs/guidance.md); DPM-Solver++(2S) ancestral has its 19 evaluations
SAMPLER = flags.DEFINE_string("sampler", "dpmpp_2s_ancestral", "Solver of every setting.")
LEVELS = flags.DEFINE_integer("num_levels", 10, "Levels of the run's karras grid to sample on.")
OUT = flags.DEFINE_string("out", "runs/bench/guidance_mnist.json", "Output JSON.")
COMBINE = flags.DEFINE_list("combine", [], "Instead of sampling: merge the rows of these "
                            "reports (same run, sampler, n and seed) into --out.")  # fmt: skip
#: the settings' order in a combined table and plot
KINDS = ("none", "cfg", "interval", "auto", "classifier")


def _settings():
    """(name, kind, w): the unconditional model, CFG at each w, autoguidance and classifier
    guidance (of the model at "no label") at each of theirs."""
    rows = [("unconditional", "none", 1.0)]
    rows += [(f"cfg w={w}", "cfg", float(w)) for w in WEIGHTS.value]
    if INTERVAL.value:
        lo, hi = INTERVAL.value
        rows += [(f"cfg w={w} in [{lo}, {hi}]", "interval", float(w)) for w in INTERVAL_W.value]
    if GUIDE.value:
        rows += [(f"auto w={w}", "auto", float(w)) for w in AUTO.value]
    if NOISY.value:
        rows += [(f"classifier w={w}", "classifier", float(w)) for w in CG.value]
    return rows


def combine(paths: list[str]) -> dict:
    """One report of the rows of several runs of this benchmark on the same run, sampler, n
    and seed (ValueError otherwise), each setting once, in ``KINDS`` order then by w."""
    reports = [json.load(open(p)) for p in paths]
    same = ("workdir", "step", "sampler", "num_levels", "num_samples", "seed")
    for r in reports[1:]:
        differ = [k for k in same if r[k] != reports[0][k]]
        if differ:
            raise ValueError(f"reports differ in {differ}: they do not share a table")
    rows = {row["name"]: row for r in reports for row in r["rows"]}
    merged = {k: v for r in reversed(reports) for k, v in r.items() if v not in (None, [])}
    merged["rows"] = sorted(rows.values(), key=lambda row: (KINDS.index(row["kind"]), row["w"]))
    merged["combined_from"] = paths
    return merged


def _write(report: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(OUT.value)), exist_ok=True)
    with open(OUT.value, "w") as f:
        json.dump(report, f, indent=1, default=float)
    plot(report, os.path.splitext(OUT.value)[0] + ".png")
    print(table(report))


def main(argv):
    del argv
    if COMBINE.value:
        return _write(combine(COMBINE.value))
    from run_bench import cpu_info

    from tf_score import api
    from tf_score.families import evaluate, score_model

    run = api.load(WORKDIR.value, data_dir=DATA_DIR.value)
    guide = api.load(WORKDIR.value, GUIDE.value, DATA_DIR.value) if GUIDE.value else None
    noisy = api.load(NOISY.value) if NOISY.value else None
    ref = evaluate.quality_reference(run, NUM.value, classifier=CLASSIFIER.value)
    classes = run.config.data.num_classes
    labels = score_model.class_labels(classes, NUM.value // classes)
    sigmas = dataclasses.replace(run.config.noise, num_levels=LEVELS.value).sigmas()
    rows = []
    for name, kind, w in _settings():
        given = {} if kind == "none" else {"labels": labels, "guidance": w}
        if kind in ("auto", "classifier"):
            given["guide"] = guide if kind == "auto" else noisy
        if kind == "interval":
            given["guidance_interval"] = tuple(float(v) for v in INTERVAL.value)
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
              "guide_step": guide.step if guide else None, "noisy_classifier": NOISY.value,
              "interval": INTERVAL.value,
              "sampler": SAMPLER.value,
              "num_levels": LEVELS.value,
              "num_samples": len(labels), "seed": SEED.value, "rows": rows, "cpu": cpu_info(),
              "classifier_test_accuracy": rows[0].get("classifier_test_accuracy")}  # fmt: skip
    _write(report)


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


def _lines(rows: list[dict]):
    """(label, style, rows by w) of each guidance kind, one line per interval."""
    styles = {"cfg": "o-", "interval": "d-", "auto": "s--", "classifier": "^:"}
    names = {"cfg": "classifier-free", "auto": "autoguidance", "classifier": "classifier"}
    for kind, style in styles.items():
        rs = [r for r in rows if r["kind"] == kind]
        where = sorted({r["name"].split(" in ", 1)[-1] for r in rs}) if kind == "interval" else [""]
        for w in where:
            line = [r for r in rs if not w or r["name"].endswith(" in " + w)]
            if line:
                yield (f"classifier-free, sigma in {w}" if w else names[kind]), style, line


def _error(accuracy: float, n: int) -> float:
    """The percentage not labelled as asked, at least half of one sample in ``n`` (a log
    axis has no 0)."""
    return max(100.0 * (1.0 - accuracy), 50.0 / n)


def plot(report: dict, path: str) -> str:
    """FID and accuracy against w: a line per guidance (``_lines``), the unconditional model,
    the floor and the real images' accuracy as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 5.5))
    n = report["num_samples"]
    for label, style, rs in _lines(report["rows"]):
        a1.plot([r["w"] for r in rs], [r["fid"] for r in rs], style, label=label)
        a2.plot([r["w"] for r in rs], [_error(r["class_accuracy"], n) for r in rs], style,
                label=label)  # fmt: skip
    unc, floor = report["rows"][0], report["rows"][0]["fid_floor"]
    a1.axhline(unc["fid"], color="grey", ls=":", label="unconditional (FID)")
    a1.axhline(floor, color="k", lw=0.8, label=f"real-vs-real floor (n={report['num_samples']})")
    a1.axhline(2 * floor, color="k", lw=0.8, ls="--", label="2x floor")
    if report.get("classifier_test_accuracy"):
        a2.axhline(_error(report["classifier_test_accuracy"], n), color="k", lw=0.8, ls="-.",
                   label="real test images (errors)")  # fmt: skip
    a1.set(xlabel="guidance w", ylabel="classifier FID", yscale="log", title="FID against guidance")
    a2.set(xlabel="guidance w", ylabel="not the asked digit (%)", yscale="log",
           title=f"classifier's errors (0 drawn at {_error(1.0, n):.3g}%)")  # fmt: skip
    for a in (a1, a2):
        a.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        a.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        a.yaxis.set_minor_formatter(NullFormatter())
    lines, labels = a1.get_legend_handles_labels()
    more = [(h, t) for h, t in zip(*a2.get_legend_handles_labels(), strict=True) if t not in labels]
    fig.legend(lines + [h for h, _ in more], labels + [t for _, t in more], loc="lower center",
               ncol=4, fontsize=8)  # fmt: skip
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    app.run(main)
