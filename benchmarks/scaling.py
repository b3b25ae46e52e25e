"""Scaling of the real training loop over replicas: 1 device, micro-batches, mirrored, and
multi-worker processes, each a ``run_train.py`` run of the same preset.

    python benchmarks/scaling.py --out=runs/bench/scaling.json [--presets=cpu_preset,toy]

Throughput is ``train_summary.json``'s ``examples_per_sec``: images (or points) per second
after the first compiled call, so tracing and compilation are excluded; wall time includes
start-up and compilation. Peak RSS is the chief's (worker 0's for multi-worker).
On a machine without accelerators ``--cpu_devices=2`` splits the CPU into two logical
devices that share the same cores: the figures show the overhead of the distribution
machinery, not a speed-up.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = flags.DEFINE_string("out", "runs/bench/scaling.json", "Where to write the JSON.")
WORKROOT = flags.DEFINE_string("workroot", "runs/bench/scaling", "Scratch workdirs.")
PRESETS = flags.DEFINE_list("presets", ["cpu_preset", "toy"], "Which runs to measure.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir with MNIST (cpu_preset).")
INTRA_OP_THREADS = flags.DEFINE_integer(
    "intra_op_threads",
    0,
    "TF_NUM_INTRAOP_THREADS for every run (0: TensorFlow's default, all cores per device or "
    "process; 1 gives each of two replicas its own core here).",
)
MODES = flags.DEFINE_list(
    "modes",
    ["default", "grad_accum_2", "mirrored_2", "multi_worker_2"],
    "Topologies: default (1 replica), grad_accum_2 (1 replica, 2 micro-batches), "
    "mirrored_2 (2 logical CPU devices), multi_worker_2 (2 local processes).",
)

PRESET_ARGS = {
    # The CPU NCSN preset (ResNet on MNIST, batch 128): enough steps for a steady figure.
    "cpu_preset": [
        "--flagfile=flags/presets/mnist_ncsn_cpu.cfg",
        "--num_steps=60",
        "--steps_per_loop=10",
        "--log_every=10",
        "--checkpoint_every=1000",
        "--n_steps_each=1",
    ],
    "toy": [
        "--flagfile=flags/presets/toy_mixture.cfg",
        "--num_steps=3000",
        "--steps_per_loop=100",
        "--log_every=500",
        "--checkpoint_every=10000",
        "--n_steps_each=1",
    ],
}
MODE_ARGS = {
    "default": [],
    "grad_accum_2": ["--grad_accum_steps=2"],
    "mirrored_2": ["--strategy=mirrored", "--cpu_devices=2", "--devices=/cpu:0,/cpu:1"],
    "multi_worker_2": ["--strategy=multi_worker_mirrored"],
}


def _ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run(preset: str, mode: str) -> dict:
    workdir = os.path.join(WORKROOT.value, f"{preset}_{mode}")
    shutil.rmtree(workdir, ignore_errors=True)
    args = [sys.executable, "run_train.py", f"--workdir={workdir}", "--noprogress"]
    args += PRESET_ARGS[preset] + MODE_ARGS[mode]
    if DATA_DIR.value:
        args.append(f"--data_dir={DATA_DIR.value}")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if INTRA_OP_THREADS.value:
        env["TF_NUM_INTRAOP_THREADS"] = str(INTRA_OP_THREADS.value)
    envs = [env]
    if mode == "multi_worker_2":
        cluster = {"worker": [f"localhost:{p}" for p in _ports(2)]}
        envs = [
            {
                **env,
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": i}}
                ),
            }
            for i in range(2)
        ]
    t0 = time.time()
    procs = [
        subprocess.Popen(
            args, cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for e in envs
    ]
    outs = [p.communicate()[0] for p in procs]
    wall = time.time() - t0
    for p, out in zip(procs, outs, strict=True):
        if p.returncode:
            raise RuntimeError(f"{preset}/{mode} failed ({p.returncode}):\n{out[-3000:]}")
    with open(os.path.join(REPO, workdir, "train_summary.json")) as f:
        summary = json.load(f)
    peaks = [summary["peak_rss_mb"]]
    return {
        "preset": preset,
        "mode": mode,
        "replicas": summary["replicas"],
        "grad_accum_steps": summary["grad_accum_steps"],
        "global_batch": summary["global_batch"],
        "examples_per_sec": summary["examples_per_sec"],
        "steps": summary["step"],
        "wall_seconds": wall,
        "processes": len(procs),
        "peak_rss_mb_chief": max(peaks),
    }


def main(argv):
    del argv
    results = []
    for preset in PRESETS.value:
        rows = [run(preset, mode) for mode in MODES.value]
        base = next((r["examples_per_sec"] for r in rows if r["mode"] == "default"), None)
        for r in rows:
            rate = r["examples_per_sec"]
            r["relative_to_default"] = rate / base if rate and base else None
            results.append(r)
            ratio = f"{r['relative_to_default']:.2f}x" if r["relative_to_default"] else "n/a"
            print(
                f"{preset:11s} {r['mode']:15s} {r['replicas']} replica(s) x "
                f"{r['grad_accum_steps']}: "
                f"{rate or float('nan'):9.1f} examples/s ({ratio}), "
                f"wall {r['wall_seconds']:.1f} s, peak RSS {r['peak_rss_mb_chief']:.0f} MB",
                flush=True,
            )
    out = {
        "results": results,
        "cpu_count": os.cpu_count(),
        "intra_op_threads": INTRA_OP_THREADS.value or os.environ.get("TF_NUM_INTRAOP_THREADS"),
        "note": "2 logical CPU devices / 2 processes share the same 2 cores here",
    }
    os.makedirs(os.path.dirname(OUT.value) or ".", exist_ok=True)
    with open(OUT.value, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {OUT.value}")


if __name__ == "__main__":
    app.run(main)
