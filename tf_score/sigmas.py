"""Noise schedules for noise-conditional score models."""

from __future__ import annotations

import numpy as np


def geometric_sigmas(sigma_begin: float, sigma_end: float, num_levels: int) -> np.ndarray:
    """Geometric schedule sigma_1 > ... > sigma_L with sigma_i = sigma_1 * r^(i-1).

    r = (sigma_L / sigma_1)^(1/(L-1)). With L = 1 the schedule is [sigma_begin] and
    sigma_end must equal it. Returned as float32 numpy so callers choose where it lives.
    """
    num_levels_int = int(num_levels)
    if num_levels_int != num_levels or num_levels_int < 1:
        raise ValueError(f"num_levels must be an integer >= 1, got {num_levels!r}")
    if not (np.isfinite(sigma_begin) and np.isfinite(sigma_end)):
        raise ValueError(
            f"sigma_begin and sigma_end must be finite, got {sigma_begin}, {sigma_end}"
        )
    if sigma_end <= 0:
        raise ValueError(f"sigma_end must be > 0, got {sigma_end}")
    if num_levels_int == 1:
        if not np.isclose(sigma_begin, sigma_end):
            raise ValueError(
                f"with num_levels=1, sigma_begin ({sigma_begin}) must equal sigma_end ({sigma_end})"
            )
        return np.array([sigma_begin], dtype=np.float32)
    if sigma_begin <= sigma_end:
        raise ValueError(
            f"sigma_begin must be > sigma_end for a decreasing schedule, "
            f"got sigma_begin={sigma_begin}, sigma_end={sigma_end}"
        )
    return np.exp(
        np.linspace(np.log(sigma_begin), np.log(sigma_end), num_levels_int, dtype=np.float64)
    ).astype(np.float32)
