"""Where a training or sampling step spends its time: a TF profiler trace, summarised by op.

    python benchmarks/profile_step.py --workload=refinenet --policy=mixed_bfloat16 \
        --batch=32 --out=runs/profile/refinenet_bf16.json

Traces one compiled training loop call and one sampling call of a workload
(``benchmarks/workloads.py``) with ``tf.profiler.experimental``, then reads the trace
(``*.xplane.pb``) and sums the time of every executed TensorFlow op by op type and by a
coarse category (convolution forward / backward, normalisation and elementwise, casts,
layout, optimizer, ...). Times are summed over the executor's threads, so the shares, not
the sums, compare with the wall time. The trace directory opens in TensorBoard's profile
tab as well.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# (names unlike run_train.py's flags, which workloads.py parses the presets with)
MODEL = flags.DEFINE_enum(
    "workload", "refinenet", ["refinenet", "resnet_cpu", "edm_cpu", "edm_avx2_90"], ""
)
PRECISION = flags.DEFINE_enum("policy", "float32", ["float32", "mixed_bfloat16"], "")
BATCH = flags.DEFINE_integer("batch", 32, "Training batch (and sampling batch).")
JIT = flags.DEFINE_boolean("xla", False, "XLA-compile the step (as --jit in run_train.py).")
STEPS = flags.DEFINE_integer("train_steps", 1, "Training steps in the traced call.")
OUT = flags.DEFINE_string("out", "runs/profile/profile.json", "Summary JSON; trace beside it.")
TOP = flags.DEFINE_integer("top", 25, "Op types printed per phase.")

_CATEGORIES = [
    ("conv backward", ("Conv2DBackprop", "BackpropInput", "BackpropFilter")),
    ("conv forward", ("Conv2D", "FusedConv2D", "DepthwiseConv")),
    ("space/batch (dilation)", ("SpaceToBatch", "BatchToSpace")),
    ("matmul", ("MatMul", "BatchMatMul", "Einsum")),
    ("cast", ("Cast",)),
    ("reduction", ("Mean", "Sum", "Max", "Min", "Prod")),
    ("layout/copy", ("Transpose", "Pad", "Concat", "Split", "Slice", "Reshape", "Tile")),
    ("optimizer", ("ResourceApply", "AssignVariable", "AssignSub", "AssignAdd")),
    ("pooling/resize", ("AvgPool", "Resize", "MaxPool")),
]


def categorise(op_type: str) -> str:
    for name, keys in _CATEGORIES:
        if any(k in op_type for k in keys):
            return name
    return "elementwise/other"


def op_times(logdir: str) -> dict[str, float]:
    """Seconds per op type of the newest trace in ``logdir`` (summed over threads)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals: dict[str, float] = collections.defaultdict(float)
    for plane in space.planes:
        meta = plane.event_metadata
        for line in plane.lines:
            if not (line.name.startswith("tf_Compute") or line.name.startswith("tf_XLA")):
                continue
            for event in line.events:
                name = meta[event.metadata_id].name
                if ":" not in name or "::" in name:  # executor bookkeeping, not an op
                    continue
                op_type = name.rsplit(":", 1)[1]
                totals[op_type] += event.duration_ps * 1e-12
    return dict(totals)


def summarise(times: dict[str, float], wall: float, top: int) -> dict:
    total = sum(times.values()) or 1.0
    by_cat: dict[str, float] = collections.defaultdict(float)
    for op, t in times.items():
        by_cat[categorise(op)] += t
    ops = sorted(times.items(), key=lambda kv: -kv[1])
    return {
        "wall_seconds": wall,
        "op_seconds_summed_over_threads": total,
        "categories": {k: v / total for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
        "op_types": {k: v / total for k, v in ops[:top]},
    }


def _trace(fn, logdir: str) -> float:
    import tensorflow as tf

    fn()  # compile outside the trace
    tf.profiler.experimental.start(logdir)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    tf.profiler.experimental.stop()
    return wall


def main(argv):
    del argv
    import tensorflow as tf
    import workloads

    from tf_score import api

    b, model = BATCH.value, MODEL.value
    cfg, step, loop = workloads.build(REPO, model, PRECISION.value, b, JIT.value)
    base = os.path.splitext(os.path.abspath(OUT.value))[0]
    n_steps = tf.constant(STEPS.value, tf.int64)
    result = {"model": model, "precision": PRECISION.value, "batch_size": b, "jit": JIT.value,
              "train_steps": STEPS.value}  # fmt: skip
    wall = _trace(lambda: loop(n_steps)["loss"].numpy(), base + "_train_trace")
    result["train"] = summarise(op_times(base + "_train_trace"), wall, TOP.value)
    run = workloads.sampling_run(cfg, step)
    options = workloads.sampler_options(model)
    wall = _trace(
        lambda: api.generate(run, b, 0, batch_size=b, jit=JIT.value, **options),
        base + "_sample_trace",
    )
    result["sample"] = summarise(op_times(base + "_sample_trace"), wall, TOP.value)
    result["sampler_options"] = options
    os.makedirs(os.path.dirname(base), exist_ok=True)
    with open(OUT.value, "w") as f:
        json.dump(result, f, indent=2)
    for phase in ("train", "sample"):
        r = result[phase]
        steps = f" ({STEPS.value} steps)" if phase == "train" else ""
        wall = r["wall_seconds"]
        print(f"\n{model} {PRECISION.value} batch {b} {phase}{steps}: wall {wall:.3f} s")
        for k, v in r["categories"].items():
            print(f"  {k:<26}{100 * v:6.1f}%")
        print("  top op types:")
        for k, v in r["op_types"].items():
            print(f"    {k:<36}{100 * v:6.1f}%")
    print(f"wrote {OUT.value}")


if __name__ == "__main__":
    app.run(main)
