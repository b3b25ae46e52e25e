"""Sample quality against network evaluations: classifier FID/KID of each sampler on one
trained image model (run_sample.py --metrics for every setting), collected into a JSON and a
PNG plot of FID against evaluations.

    python benchmarks/sampler_quality.py --workdir=runs/mnist_cpu \\
        --classifier=runs/mnist_classifier --data_dir=DIR --num_samples=500 \\
        [--single_dsm_workdir=runs/mnist_single_dsm]

Writes runs/bench/sampler_quality.json (one row per setting: sampler, flags, evaluations,
FID, KID, the real-vs-real floor at the same n, label histogram, seconds) and
runs/bench/sampler_quality.png. The optional single-DSM model (flags/presets/
mnist_single_dsm_cpu.cfg) adds the NCSN paper's negative result: plain Langevin on a score
learned at one small sigma.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

WORKDIR = flags.DEFINE_string("workdir", "runs/mnist_cpu", "The trained NCSN image model.")
SINGLE = flags.DEFINE_string(
    "single_dsm_workdir", None, "A model from mnist_single_dsm_cpu.cfg (plain Langevin row)."
)
CLASSIFIER = flags.DEFINE_string("classifier", "runs/mnist_classifier", "Saved classifier.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir of the model's data set.")
NUM_SAMPLES = flags.DEFINE_integer("num_samples", 500, "Samples per setting (FID's n).")
BATCH = flags.DEFINE_integer("sample_batch_size", 250, "Chains run at once.")
OUT = flags.DEFINE_string("out", "runs/bench/sampler_quality.json", "Output JSON.")
ONLY = flags.DEFINE_list("only", [], "Run only these setting names (default: all).")
REUSE = flags.DEFINE_boolean(
    "reuse", False, "Keep the rows whose per-setting JSON exists; run only the missing ones."
)

# name -> run_sample.py flags. The 1000-evaluation row is the NCSN paper's MNIST sampler
# (T = 100, eps = 2e-5); the others spend 10 to 200 evaluations on the same 10 levels.
SETTINGS = {
    "annealed_T20": ["--sampler=annealed_langevin", "--n_steps_each=20", "--step_lr=5e-5"],
    "annealed_T10": ["--sampler=annealed_langevin", "--n_steps_each=10", "--step_lr=5e-5"],
    "annealed_T9": ["--sampler=annealed_langevin", "--n_steps_each=9", "--step_lr=5e-5"],
    "annealed_T5": ["--sampler=annealed_langevin", "--n_steps_each=5", "--step_lr=5e-5"],
    "pc_c4": ["--sampler=predictor_corrector", "--n_corrector=4"],
    "pc_c9": ["--sampler=predictor_corrector", "--n_corrector=9"],
    "cas": ["--sampler=consistent_annealed"],
    "heun": ["--sampler=heun"],
    "ode_1e-3": ["--sampler=ode", "--ode_tol=1e-3"],
    "annealed_T100": ["--sampler=annealed_langevin", "--n_steps_each=100", "--step_lr=2e-5"],
}
SINGLE_SETTING = [
    "--sampler=langevin",
    "--langevin_steps=1000",
    "--langevin_step_size=2e-5",
]


def _run(name: str, workdir: str, extra: list[str], out_dir: str) -> dict:
    path = os.path.join(out_dir, f"{name}.json")
    cmd = [
        sys.executable,
        os.path.join(REPO, "run_sample.py"),
        f"--workdir={workdir}",
        "--metrics=fid,kid",
        f"--classifier={CLASSIFIER.value}",
        f"--num_samples={NUM_SAMPLES.value}",
        f"--sample_batch_size={BATCH.value}",
        f"--metrics_file={path}",
        "--denoise",
        *([f"--data_dir={DATA_DIR.value}"] if DATA_DIR.value else []),
        *extra,
    ]
    t0 = time.time()
    ran = not (REUSE.value and os.path.exists(path))
    if ran:
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    with open(path) as f:
        row = json.load(f)
    wall = time.time() - t0 if ran else None
    row.update(
        name=name, flags=extra, wall_seconds=wall or row.get("wall_seconds"), workdir=workdir
    )
    with open(path, "w") as f:
        json.dump(row, f, indent=2)
    return row


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib.pyplot as plt

    from tf_score import plotting  # noqa: F401  (selects the headless backend)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in rows:
        single = r["workdir"] == SINGLE.value
        ax.scatter(r["num_evals"], r["fid"], color="tab:red" if single else "tab:blue", s=24)
        ax.annotate(r["name"], (r["num_evals"], r["fid"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")  # fmt: skip
    floor = rows[0]["fid_floor"]
    ax.axhline(floor, color="gray", ls="--", lw=1, label=f"real test images ({floor:.2f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations per sample")
    ax.set_ylabel(f"classifier FID (n = {rows[0]['n']})")
    ax.set_title("MNIST, CPU-preset ResNet: sample quality against evaluations", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    out_dir = os.path.splitext(OUT.value)[0]
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for name, extra in SETTINGS.items():
        if not ONLY.value or name in ONLY.value:
            rows.append(_run(name, WORKDIR.value, extra, out_dir))
    if SINGLE.value and (not ONLY.value or "single_dsm_langevin" in ONLY.value):
        rows.append(_run("single_dsm_langevin", SINGLE.value, SINGLE_SETTING, out_dir))
    with open(OUT.value, "w") as f:
        json.dump({"num_samples": NUM_SAMPLES.value, "rows": rows}, f, indent=2)
    _plot(rows, os.path.splitext(OUT.value)[0] + ".png")
    print(f"\n{'setting':<22}{'evals':>7}{'FID':>9}{'KID':>10}{'seconds':>9}")
    for r in rows:
        print(
            f"{r['name']:<22}{r['num_evals']:>7}{r['fid']:>9.3f}{r['kid']:>10.5f}"
            f"{r['sample_seconds']:>9.1f}"
        )
    print(f"floor (real test images, n = {rows[0]['n']}): FID {rows[0]['fid_floor']:.3f}")
    print(f"wrote {OUT.value} and {os.path.splitext(OUT.value)[0]}.png")


if __name__ == "__main__":
    app.run(main)
