"""The timing rule every benchmark figure follows (standard library only: run_bench.py and
torch_ncsn.py, which runs in a PyTorch environment, both import it)."""

from __future__ import annotations

import statistics
import time


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median seconds of ``repeats`` calls, warm-up seconds of the first call)."""
    t0 = time.perf_counter()
    fn()
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), warmup
