"""Throughput of the library's training and sampling against batch size, normalised by the
machine's own matrix-multiply rate.

    python benchmarks/run_bench.py --bench_out=runs/bench/bench.json \
        [--bench_models=refinenet,resnet_cpu,edm_cpu] [--policies=float32,mixed_bfloat16] \
        [--train_batches=32,64,128,256] [--sample_batches=64,256,1024] [--timed_repeats=3] \
        [--baseline_repo=/tmp/base --baseline_models=resnet_cpu,edm_cpu]

Every figure runs in its own process (so its peak RSS is its own) on the workloads of
``benchmarks/workloads.py``: training is the training loop's compiled steps on a preset,
sampling is ``api.generate`` with ``workloads.sampler_options``. A figure is the median of
``--timed_repeats`` timed calls after a warm-up call (tracing and compilation, reported
apart); a training call runs enough steps to last about two seconds. GFLOP/s counts the
forward pass with TF's graph profiler (``workloads.forward_flops``; a training image costs
three forward passes: forward, and the backward pass's two products), and each figure is
also given as a fraction of the 4096 x 4096 matmul rate the same script measured in the
figure's precision, in the figure's own process right after it (the rate at the start of the
run is kept too). ``--baseline_repo`` times the same workloads on another checkout of the
library (e.g. ``git archive 7c2a407 | tar -x -C /tmp/base``) in the same run, interleaved
with this one: with ``--rounds=N`` each figure alternates N times between the two, the
median round is reported and the speed-up is the median of the N paired ratios (this
machine's speed drifts by tens of percent between minutes). ``--torch_python`` and
``--ncsn_repo`` time the official PyTorch NCSN (``torch_ncsn.py``, in a Python that has
PyTorch) in the same rounds as every RefineNet figure, with its own matmul rates;
``--torch_json`` instead adds figures measured earlier (JSON files) to the comparison table.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from timing import timed  # beside this script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.dirname(os.path.abspath(__file__))

#: training images cost three forward passes (forward, input gradient, weight gradient)
TRAIN_PASSES = 3
_THREAD_ENV = ("TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")
# ---------------------------------------------------------------------------- one figure


def matmul_figure(precision: str, repeats: int, n: int = 4096) -> dict:
    """GFLOP/s of an n x n matmul in float32 or bfloat16 (the machine's reference rate)."""
    import tensorflow as tf

    dtype = tf.bfloat16 if "bfloat16" in precision else tf.float32
    a = tf.cast(tf.random.stateless_normal([n, n], [0, 1]), dtype)
    b = tf.cast(tf.random.stateless_normal([n, n], [0, 2]), dtype)
    mm = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    seconds, _ = timed(lambda: mm(a, b).numpy(), max(repeats, 5))
    return {"gflops": 2 * n**3 / seconds / 1e9, "seconds": seconds, "n": n}


def workload_figure(spec: dict) -> dict:
    """Train or sample throughput of one (model, precision, batch) of the checkout at
    ``spec['repo']``."""
    import tensorflow as tf
    import workloads

    from tf_score import api

    model, b, repeats = spec["model"], spec["batch"], spec["repeats"]
    cfg, step, loop = workloads.build(spec["repo"], model, spec["precision"], b, spec["jit"])
    net = next(iter(step.models.values()))
    out = {"params": int(net.count_params()), "forward_flops": workloads.forward_flops(cfg, net)}
    if spec["kind"] == "train":
        one = tf.constant(1, tf.int64)
        t0 = time.perf_counter()
        loop(one)["loss"].numpy()  # tracing and compilation
        t1 = time.perf_counter()
        loop(one)["loss"].numpy()
        t2 = time.perf_counter()
        compile_s = (t1 - t0) - (t2 - t1)
        n = int(min(50, max(1, round(2.0 / (t2 - t1)))))
        steps = tf.constant(n, tf.int64)
        seconds, _ = timed(lambda: loop(steps)["loss"].numpy(), repeats)
        per_s = b * n / seconds
        out.update(steps_per_call=n, images_per_s=per_s, compile_seconds=compile_s)
        out["gflops"] = per_s * TRAIN_PASSES * out["forward_flops"] / 1e9
    else:
        run = workloads.sampling_run(cfg, step)
        options = workloads.sampler_options(model)
        evals = []

        def call():
            evals.append(api.generate(run, b, 0, batch_size=b, **options).num_evals)

        seconds, warm = timed(call, repeats)
        per_s = b * evals[-1] / seconds
        out.update(sampler_options=options, evals_per_image=evals[-1])
        out.update(evals_per_s=per_s, images_per_s=b / seconds, compile_seconds=warm - seconds)
        out["gflops"] = per_s * out["forward_flops"] / 1e9
    out["seconds_per_call"] = seconds
    return out


def child(spec: dict) -> dict:
    """One figure; a workload's is followed by the matmul rate in the same process (its
    peak RSS read before), so each figure is normalised by the machine's speed of the
    same minute, not that of the start of a long run."""
    sys.path[:0] = [spec["repo"], BENCH]  # the checkout measured, then workloads.py
    if spec["kind"] == "matmul":
        out = matmul_figure(spec["precision"], spec["repeats"])
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out
    out = workload_figure(spec)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["matmul_gflops"] = matmul_figure(spec["precision"], spec["repeats"])["gflops"]
    return out


#: workload -> the PyTorch script of its twin (the official NCSN, or torch_edm.py's U-Net)
TWINS = {"refinenet": "torch_ncsn.py", "edm_avx2_90": "torch_edm.py"}


def _twin_command(spec: dict) -> list[str]:
    """The PyTorch figure of ``spec``: its model's twin (``TWINS``; a matmul: torch_ncsn's),
    compiled when ``spec['compile']``."""
    python, ncsn = spec["torch"]
    script = TWINS.get(spec.get("model"), "torch_ncsn.py")
    cmd = [python, os.path.join(BENCH, script)]
    if script == "torch_ncsn.py":
        cmd.append(f"--ncsn_repo={ncsn}")
    else:
        cmd.append(f"--preset={workloads_preset(spec['model'])}")
        cmd += ["--compile"] if spec.get("compile") else []
    cmd += [f"--kind={spec['kind']}", f"--precision={spec['precision']}"]
    return [*cmd, f"--batch={spec.get('batch', 1)}", f"--repeats={spec['repeats']}"]


def workloads_preset(model: str) -> str:
    """The preset a workload runs (``workloads.MODELS``; workloads.py imports no TF)."""
    import workloads

    return workloads.MODELS[model][0]


def run_child(spec: dict) -> dict:
    """One figure in a fresh Python process (its own peak memory, no shared caches); with
    ``spec['torch']`` (the PyTorch Python and the ncsn checkout) the PyTorch twin's figure."""
    if spec.get("torch"):
        cmd = _twin_command(spec)
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=spec["repo"])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(child(json.loads(sys.argv[2]))), flush=True)
    sys.exit(0)

# ---------------------------------------------------------------------------- the grid

import bench_report  # noqa: E402  (beside this script)
from absl import app, flags  # noqa: E402  (the child above needs no flags)
from bench_report import cpu_info  # noqa: E402

# (names unlike run_train.py's flags, which workloads.py parses the presets with)
OUT = flags.DEFINE_string("bench_out", "runs/bench/bench.json", "Where to write the JSON.")
REPEATS = flags.DEFINE_integer("timed_repeats", 3, "Timed calls per figure (median).")
MODELS = flags.DEFINE_list(
    "bench_models", ["refinenet", "resnet_cpu", "edm_cpu"], "Workloads (workloads.MODELS)."
)
POLICIES = flags.DEFINE_list("policies", ["float32", "mixed_bfloat16"], "Precisions.")
TRAIN_BATCHES = flags.DEFINE_list("train_batches", ["32", "64", "128", "256"], "")
SAMPLE_BATCHES = flags.DEFINE_list("sample_batches", ["64", "256", "1024"], "")
XLA = flags.DEFINE_boolean("xla", False, "XLA-compile the train step (as --jit).")
BASELINE = flags.DEFINE_string("baseline_repo", None, "Another checkout timed alongside.")
BASELINE_MODELS = flags.DEFINE_list(
    "baseline_models", ["resnet_cpu", "edm_cpu"], "Workloads timed on --baseline_repo too."
)
ROUNDS = flags.DEFINE_integer(
    "rounds",
    1,
    "Rounds per figure, this checkout and the baseline alternating; the "
    "median round is reported (the machine's speed drifts between minutes).",
)
TORCH = flags.DEFINE_list("torch_json", [], "PyTorch reference JSON files (fp32, bf16).")
TORCH_PYTHON = flags.DEFINE_string(
    "torch_python", None, "A Python with PyTorch: time the twins (TWINS) in the same rounds."
)
NCSN_REPO = flags.DEFINE_string("ncsn_repo", None, "ermongroup/ncsn checkout (refinenet's twin).")
TORCH_COMPILE = flags.DEFINE_boolean(
    "torch_compile", False, "Also time the torch.compile'd EDM twin in the same rounds."
)


def _check_flags() -> None:
    """Bad torch flags fail before any figure is measured."""
    if NCSN_REPO.value and not TORCH_PYTHON.value:
        raise app.UsageError("--ncsn_repo needs --torch_python")
    if TORCH_COMPILE.value and not TORCH_PYTHON.value:
        raise app.UsageError("--torch_compile needs --torch_python")
    if TORCH_PYTHON.value:
        if not os.access(TORCH_PYTHON.value, os.X_OK):
            raise app.UsageError(f"--torch_python={TORCH_PYTHON.value!r} is not executable")
        if "refinenet" in MODELS.value:
            model = os.path.join(NCSN_REPO.value or "", "models", "cond_refinenet_dilated.py")
            if not os.path.isfile(model):
                raise app.UsageError(f"refinenet's twin needs --ncsn_repo (an ermongroup/ncsn "
                                     f"checkout with {model})")  # fmt: skip
        if TORCH.value:
            raise app.UsageError("give --torch_python or --torch_json, not both")


def _torch():
    if TORCH_PYTHON.value:
        ncsn = os.path.abspath(NCSN_REPO.value) if NCSN_REPO.value else ""
        return [os.path.abspath(TORCH_PYTHON.value), ncsn]
    return None


def _places(model: str) -> list[tuple[str, str]]:
    """(results key, checkout) of every figure timed in a round of ``model``: this checkout,
    the baseline, the PyTorch twin (eager, compiled)."""
    places = [("figures", REPO)]
    if BASELINE.value and model in BASELINE_MODELS.value:
        places.append(("baseline", os.path.abspath(BASELINE.value)))
    if _torch() and model in TWINS:
        places.append(("torch_figures", REPO))
        if TORCH_COMPILE.value and TWINS[model] == "torch_edm.py":
            places.append(("torch_compiled_figures", REPO))
    return places


def _figures():
    """(kind, model, precision, batch) of the grid, RefineNet last (its figures are slow)."""
    grid = []
    order = sorted(MODELS.value, key=lambda m: m == "refinenet")
    for model in order:
        for precision in POLICIES.value:
            for kind, batches in (("train", TRAIN_BATCHES.value), ("sample", SAMPLE_BATCHES.value)):
                grid += [(kind, model, precision, int(b)) for b in batches]
    return grid


def _label(kind, model, precision, batch):
    return f"{model} {precision} {kind} b{batch}"


def main(argv):
    del argv
    _check_flags()
    import tensorflow as tf

    results = {
        "cpu": cpu_info(),
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
        # thread settings every child inherits (TF's default is 0: its own choice)
        "thread_env": {v: os.environ.get(v) for v in _THREAD_ENV},
        "repo": REPO,
        "baseline_repo": BASELINE.value,
        "xla": XLA.value,
        "timed_repeats": REPEATS.value,
        "rounds": ROUNDS.value,
        "train_passes_per_image": TRAIN_PASSES,
        "matmul": {},
        "figures": {},
        "baseline": {},
        "ratios": {},
        "torch": {},
        "torch_matmul": {},
        "torch_figures": {},
        "torch_ratios": {},
        "torch_compiled_figures": {},
        "torch_compiled_ratios": {},
    }
    print(json.dumps(results["cpu"]), flush=True)
    for precision in POLICIES.value:
        spec = {"kind": "matmul", "precision": precision, "repeats": REPEATS.value, "repo": REPO}
        results["matmul"][precision] = run_child(spec)
        print(f"matmul {precision}: {results['matmul'][precision]}", flush=True)
        if _torch():
            results["torch_matmul"][precision] = run_child({**spec, "torch": _torch()})
            print(f"torch matmul {precision}: {results['torch_matmul'][precision]}", flush=True)
    for path in TORCH.value:
        with open(path) as f:
            ref = json.load(f)
        results["torch"][ref["precision"]] = ref
    t_start = time.perf_counter()
    for kind, model, precision, batch in _figures():
        repos = _places(model)
        key = _label(kind, model, precision, batch)
        runs = {where: [] for where, _ in repos}
        for round_ in range(ROUNDS.value):  # this checkout and the baseline, alternating
            for where, repo in repos:
                spec = {"kind": kind, "model": model, "precision": precision, "batch": batch}
                spec.update(repeats=REPEATS.value, jit=XLA.value, repo=repo)
                if where.startswith("torch"):
                    spec.update(torch=_torch(), compile=where == "torch_compiled_figures")
                r = run_child(spec)
                _normalise(r, results, where, key)
                runs[where].append(r)
                results[where][key] = _median_run(runs[where])
                elapsed = time.perf_counter() - t_start
                print(
                    f"[{elapsed:7.0f} s] {where:<8} {key} ({round_ + 1}): {json.dumps(r)}",
                    flush=True,
                )
                _write(results)
        if "baseline" in runs:
            results["ratios"][key] = _paired_ratio(runs["figures"], runs["baseline"])
        for twin in ("torch", "torch_compiled"):
            if f"{twin}_figures" in runs:
                ratio = _paired_ratio(runs["figures"], runs[f"{twin}_figures"])
                results[f"{twin}_ratios"][key] = ratio
        _write(results)
    print("\n" + bench_report.report(results))
    print(f"wrote {OUT.value}", flush=True)


def _normalise(r: dict, results: dict, where: str, key: str) -> None:
    """GFLOP/s (PyTorch's from the FLOP count of tf_score's same figure, timed just before
    it) and the fraction of the matmul rate its own framework measured right after it."""
    if "error" in r:
        return
    precision = key.split(" ")[1]
    if where.startswith("torch"):
        flops = results["figures"].get(key, {}).get("forward_flops")
        if flops:
            passes = TRAIN_PASSES if "steps_per_call" in r else 1
            r["gflops"] = _rate(r) * passes * flops / 1e9
        mm = results["torch_matmul"].get(precision, {}).get("gflops")
    else:
        mm = results["matmul"][precision].get("gflops")
    mm = r.get("matmul_gflops", mm)  # the rate of the figure's own minute
    if "gflops" in r and mm:
        r["fraction_of_matmul"] = r["gflops"] / mm


def _rate(r: dict) -> float:
    return r.get("evals_per_s", r.get("images_per_s"))


def _paired_ratio(ours: list[dict], base: list[dict]) -> float | None:
    """Median over rounds of this checkout's rate over the baseline's measured just after
    it (adjacent in time, so drift of the machine's speed mostly cancels)."""
    pairs = [
        _rate(a) / _rate(b)
        for a, b in zip(ours, base, strict=True)
        if "error" not in a and "error" not in b
    ]
    return statistics.median(pairs) if pairs else None


def _median_run(rounds: list[dict]) -> dict:
    """The round with the median rate (all rounds' rates kept), or the first error."""
    good = [r for r in rounds if "error" not in r]
    if not good:
        return rounds[0]
    good.sort(key=_rate)
    out = dict(good[(len(good) - 1) // 2])
    out["round_rates"] = [_rate(r) for r in rounds if "error" not in r]
    return out


def _write(results: dict) -> None:
    """The JSON so far, written atomically (a long run interrupted keeps what it measured)."""
    path = os.path.abspath(OUT.value)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    app.run(main)
