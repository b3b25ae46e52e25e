"""bench_report's tables read run_bench.py's JSON correctly: the same-run PyTorch table gives
each figure, its fraction of matmul, the paired ratio over rounds, and bf16 against PyTorch
fp32; a paired baseline ratio wins over the single pair's."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import bench_report


@pytest.fixture
def results():
    fig = lambda rate, frac, **kw: {"images_per_s": rate, "fraction_of_matmul": frac, **kw}
    return {
        "cpu": {"model": "test CPU", "cores": 2, "flags": {"avx2": True, "amx_tile": False}},
        "tensorflow": "2.x",
        "thread_env": {"TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": None},
        "matmul": {"float32": {"gflops": 200.0}, "mixed_bfloat16": {"gflops": 300.0}},
        "figures": {
            "refinenet float32 train b128": fig(
                14.0, 0.8, gflops=160.0, peak_rss_mb=3000.0, matmul_gflops=190.0
            ),
            "refinenet mixed_bfloat16 train b128": fig(24.0, 0.9, gflops=270.0, peak_rss_mb=2000),
        },
        "baseline": {"refinenet float32 train b128": fig(10.0, 0.6)},
        "ratios": {"refinenet float32 train b128": 1.5},
        "torch_matmul": {"float32": {"gflops": 130.0}},
        "torch_figures": {
            "refinenet float32 train b128": fig(12.0, 0.85),
            "refinenet mixed_bfloat16 train b128": fig(16.0, 0.7),
        },
        "torch_ratios": {"refinenet float32 train b128": 1.2},
    }


def test_same_run_torch_table(results):
    rows = bench_report.same_run_torch_table(results).splitlines()
    fp32 = next(r for r in rows if "fp32, batch 128" in r)
    bf16 = next(r for r in rows if "bf16, batch 128" in r)
    # the paired ratio over rounds (1.2), not 14 / 12
    assert fp32.split("|")[1:-1] == [
        " train images/s, fp32, batch 128 ",
        " 14.0 ",
        " 0.80 ",
        " 12.0 ",
        " 0.85 ",
        " 1.20x ",
        "  ",
    ]
    # no paired ratio: 24 / 16; against PyTorch fp32: 24 / 12
    assert bf16.split("|")[6:8] == [" 1.50x ", " 2.00x "]
    assert rows[-1] == "PyTorch's 4096 x 4096 matmul GFLOP/s: fp32 130"


def test_report_has_every_section_and_the_paired_baseline_ratio(results):
    text = bench_report.report(results)
    assert text.startswith("test CPU, 2 cores, flags: avx2; TensorFlow 2.x")
    assert text.splitlines()[0].endswith("; TF_NUM_INTEROP_THREADS=1")
    assert "**refinenet train**" in text and "same rounds" in text
    row = next(r for r in text.splitlines() if r.startswith("| 128 |"))
    assert "| 1.50x |" in row  # the paired ratio, not 14 / 10
    # GFLOP/s over the matmul rate of the figure's own minute (190), else the run's (300)
    assert "| 160 / 190 | 0.80 |" in row and "| 270 / 300 | 0.90 |" in row


def test_the_edm_twins_table_has_its_own_rows_and_the_compiled_twin(results):
    """An EDM U-Net figure beside its eager and compiled twins (``--torch_compile``): its
    own table, the compiled column's paired ratio, no RefineNet rows in it."""
    fig = lambda rate: {"evals_per_s": rate, "fraction_of_matmul": 0.5, "gflops": rate / 10,
                        "peak_rss_mb": 900.0}  # fmt: skip
    key = "edm_avx2_90 float32 sample b500"
    results["figures"][key] = fig(900.0)
    results["torch_figures"][key] = fig(600.0)
    results["torch_compiled_figures"] = {key: fig(750.0)}
    results["torch_compiled_ratios"] = {key: 1.1}
    rows = bench_report.same_run_torch_table(results, "edm_avx2_90").splitlines()
    assert rows[0].startswith("| EDM U-Net ngf 32 | tf_score |") and "compiled" in rows[0]
    (row,) = [r for r in rows if r.startswith("| sample")]
    # 900 / 600 with no paired ratio; the compiled twin's paired ratio 1.1 (not 900 / 750)
    assert row.split("|")[1:-1][5:] == [" 1.50x ", "  ", " 750.0 ", " 1.10x "]
    text = bench_report.report(results)
    assert "**against PyTorch twin, same rounds**" in text
    assert "**against PyTorch NCSN, same rounds**" in text
