"""Markdown tables of a ``run_bench.py`` JSON (the README's speed section).

python benchmarks/bench_report.py runs/bench/bench.json
"""

from __future__ import annotations

import json
import os
import platform
import sys

_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_info() -> dict:
    """The CPU model, core count and the vector/matrix flags that decide bf16 speed."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": {f: f in flags for f in _CPU_FLAGS}}


_SHORT = {"float32": "fp32", "mixed_bfloat16": "bf16"}


def _rate(r: dict) -> float | None:
    return r.get("evals_per_s", r.get("images_per_s")) if r and "error" not in r else None


def machine(results: dict) -> str:
    cpu, mm = results["cpu"], results["matmul"]
    flags = ", ".join(f for f, on in cpu["flags"].items() if on) or "none"
    rates = ", ".join(
        f"{_SHORT.get(p, p)} {m['gflops']:.0f}" for p, m in mm.items() if "gflops" in m
    )
    threads = ", ".join(f"{k}={v}" for k, v in results.get("thread_env", {}).items() if v)
    return (
        f"{cpu['model']}, {cpu['cores']} cores, flags: {flags}; TensorFlow "
        f"{results['tensorflow']}; 4096 x 4096 matmul GFLOP/s: {rates}"
        + (f"; {threads}" if threads else "")
    )


def _speedup(results: dict, key: str, rate: float | None) -> str:
    """Paired ratio over rounds if measured, else the single pair's; or why there is none."""
    base = results["baseline"].get(key, {})
    if "error" in base:
        return "baseline fails" if rate else ""
    paired = results.get("ratios", {}).get(key)
    if paired:
        return f"{paired:.2f}x"
    b_rate = _rate(base)
    return f"{rate / b_rate:.2f}x" if rate and b_rate else ""


def model_table(results: dict, model: str, kind: str) -> str:
    figs, base = results["figures"], results["baseline"]
    precisions = list(results["matmul"])
    unit = "images/s" if kind == "train" else "evaluations/s"
    head = "| batch |"
    rule = "|---:|"
    for p in precisions:
        s = _SHORT.get(p, p)
        head += f" {s} {unit} | {s} GFLOP/s / matmul | {s} of matmul | {s} peak RSS MB |"
        rule += "---:|---:|---:|---:|"
        if any(k.startswith(model) for k in base):
            head += f" {s} x baseline |"
            rule += "---:|"
    rows = [head, rule]
    batches = sorted(
        {int(k.rsplit(" b", 1)[1]) for k in figs if k.startswith(f"{model} ") and f" {kind} " in k}
    )
    for b in batches:
        row = f"| {b} |"
        for p in precisions:
            key = f"{model} {p} {kind} b{b}"
            r = figs.get(key, {})
            rate = _rate(r)
            if rate is None:
                row += " error | | | |" if r else " | | | |"
            else:
                mm = r.get("matmul_gflops") or results["matmul"][p].get("gflops", 0)
                row += (
                    f" {rate:.1f} | {r['gflops']:.0f} / {mm:.0f} |"
                    f" {r.get('fraction_of_matmul', 0):.2f} | {r['peak_rss_mb']:.0f} |"
                )
            if any(k.startswith(model) for k in base):
                row += f" {_speedup(results, key, rate)} |"
        rows.append(row)
    return "\n".join(rows)


def torch_table(results: dict) -> str:
    figs, torch = results["figures"], results.get("torch", {})
    rows = ["| RefineNet ngf 64 | tf_score | PyTorch NCSN | ratio |", "|---|---:|---:|---:|"]
    for p, ref in torch.items():
        s = _SHORT.get(p, p)
        pairs = [
            ("train images/s", f"refinenet {p} train b{ref['train_batch']}", "train_images_per_s"),
            (
                "sample evaluations/s",
                f"refinenet {p} sample b{ref['sample_batch']}",
                "sample_evals_per_s",
            ),
        ]
        for what, key, field in pairs:
            ours = _rate(figs.get(key, {}))
            if ours is None:
                continue
            theirs = ref[field]
            rows.append(
                f"| {what}, {s}, batch {key.rsplit('b', 1)[1]} | {ours:.1f} | {theirs:.1f} |"
                f" {ours / theirs:.2f}x |"
            )
    return "\n".join(rows)


#: workload -> (how the table names it, its PyTorch twin)
_TWIN_NAMES = {
    "refinenet": ("RefineNet ngf 64", "PyTorch NCSN"),
    "edm_avx2_90": ("EDM U-Net ngf 32", "PyTorch twin"),
}


def same_run_torch_table(results: dict, model: str = "refinenet") -> str:
    """tf_score against ``model``'s PyTorch twin timed in the same rounds (``--torch_python``;
    with ``--torch_compile`` also the compiled twin)."""
    figs, torch = results["figures"], results["torch_figures"]
    compiled = results.get("torch_compiled_figures", {})
    ratios, mm = results.get("torch_ratios", {}), results.get("torch_matmul", {})
    ours_name, twin = _TWIN_NAMES.get(model, (model, "PyTorch"))
    extra = " compiled | tf_score / compiled |" if compiled else ""
    rows = [
        f"| {ours_name} | tf_score | of matmul | {twin} | of its matmul |"
        f" tf_score / PyTorch | / PyTorch fp32 |{extra}",
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if compiled else ""),
    ]
    for key, theirs in torch.items():
        name, p, kind, b = key.split(" ")
        ours, ref = figs.get(key, {}), _rate(theirs)
        if name != model or _rate(ours) is None or ref is None:
            continue
        fp32 = _rate(torch.get(f"{model} float32 {kind} {b}", {}))
        vs_fp32 = f"{_rate(ours) / fp32:.2f}x" if fp32 and p != "float32" else ""
        unit = "images/s" if kind == "train" else "evaluations/s"
        paired = ratios.get(key) or _rate(ours) / ref
        row = (
            f"| {kind} {unit}, {_SHORT.get(p, p)}, batch {b[1:]} | {_rate(ours):.1f} |"
            f" {ours.get('fraction_of_matmul', 0):.2f} | {ref:.1f} |"
            f" {theirs.get('fraction_of_matmul', 0):.2f} | {paired:.2f}x | {vs_fp32} |"
        )
        if compiled:
            c = _rate(compiled.get(key, {}))
            c_ratio = results.get("torch_compiled_ratios", {}).get(key)
            row += f" {c or 0:.1f} | {c_ratio or 0:.2f}x |" if c else " - | - |"
        rows.append(row)
    rates = ", ".join(
        f"{_SHORT.get(p, p)} {m['gflops']:.0f}" for p, m in mm.items() if "gflops" in m
    )
    return "\n".join(rows) + (f"\n\nPyTorch's 4096 x 4096 matmul GFLOP/s: {rates}" if rates else "")


def report(results: dict) -> str:
    parts = [machine(results), ""]
    models = sorted({k.split(" ")[0] for k in results["figures"]})
    for model in models:
        for kind in ("train", "sample"):
            parts += [f"**{model} {kind}**", "", model_table(results, model, kind), ""]
    twinned = sorted({k.split(" ")[0] for k in results.get("torch_figures", {})})
    for model in twinned:
        parts += [f"**against {_TWIN_NAMES.get(model, (model, 'PyTorch'))[1]}, same rounds**"]
        parts += ["", same_run_torch_table(results, model), ""]
    if results.get("torch"):
        parts += ["**against the official PyTorch NCSN**", "", torch_table(results), ""]
    return "\n".join(parts)


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "runs/bench/bench.json") as f:
        print(report(json.load(f)))
