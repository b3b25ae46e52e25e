"""Noise schedules for noise-conditional score models (numpy only: the config computes its
grid without TensorFlow)."""

from __future__ import annotations

import math

import numpy as np


def geometric_sigmas(sigma_max: float, sigma_min: float, num_levels: int) -> np.ndarray:
    """Geometric schedule sigma_1 > ... > sigma_L with sigma_i = sigma_1 * r^(i-1).

    r = (sigma_L / sigma_1)^(1/(L-1)). With L = 1 the schedule is [sigma_max] and
    sigma_min must equal it. Returned as float32 numpy so callers choose where it lives.
    """
    num_levels_int = int(num_levels)
    if num_levels_int != num_levels or num_levels_int < 1:
        raise ValueError(f"num_levels must be an integer >= 1, got {num_levels!r}")
    if not (np.isfinite(sigma_max) and np.isfinite(sigma_min)):
        raise ValueError(f"sigma_max and sigma_min must be finite, got {sigma_max}, {sigma_min}")
    if sigma_min <= 0:
        raise ValueError(f"sigma_min must be > 0, got {sigma_min}")
    if num_levels_int == 1:
        if not np.isclose(sigma_max, sigma_min):
            raise ValueError(
                f"with num_levels=1, sigma_max ({sigma_max}) must equal sigma_min ({sigma_min})"
            )
        return np.array([sigma_max], dtype=np.float32)
    if sigma_max <= sigma_min:
        raise ValueError(
            f"sigma_max must be > sigma_min > 0 for a decreasing schedule, got "
            f"sigma_max={sigma_max}, sigma_min={sigma_min}"
        )
    return np.exp(
        np.linspace(np.log(sigma_max), np.log(sigma_min), num_levels_int, dtype=np.float64)
    ).astype(np.float32)


# --- NCSNv2 rules (Song & Ermon 2020, "Improved techniques"), as functions --------------------


def sigma_max_from_data(x, max_examples: int = 10_000, seed: int = 0) -> float:
    """Technique 1: sigma_1 about the largest pairwise Euclidean distance in the data.

    ``x`` is [N, ...] (flattened per example). Above ``max_examples`` a seeded random subset
    is used (the exact maximum over N^2 pairs is rarely worth it; the subset's is a lower
    bound). Distances are computed in float64 in row chunks.
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    if len(x) < 2:
        raise ValueError(f"need at least 2 examples, got {len(x)}")
    if len(x) > max_examples:
        x = x[np.random.default_rng(seed).choice(len(x), max_examples, replace=False)]
    sq = np.einsum("ij,ij->i", x, x)
    best = 0.0
    for start in range(0, len(x), 1024):
        block = x[start : start + 1024]
        d2 = sq[start : start + 1024, None] + sq[None, :] - 2.0 * block @ x.T
        best = max(best, float(d2.max()))
    return float(np.sqrt(max(best, 0.0)))


def _phi(v: float) -> float:
    return 0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))


def level_ratio_for_dim(dim: int, target: float = 0.5) -> float:
    """Technique 2: the ratio gamma = sigma_(i-1) / sigma_i for data of dimension ``dim``.

    Solves Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) = target
    (so that a sample at one level is typical at the next with probability ``target``) by
    bisection; the left side decreases in gamma > 1.
    """
    if dim < 1 or not 0.0 < target < _phi(3.0) - _phi(-3.0):
        raise ValueError(f"need dim >= 1 and target in (0, 0.997), got {dim}, {target}")
    root = math.sqrt(2.0 * dim)

    def overlap(g):
        return _phi(root * (g - 1.0) + 3.0 * g) - _phi(root * (g - 1.0) - 3.0 * g)

    lo, hi = 1.0, 2.0
    while overlap(hi) > target:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if overlap(mid) > target else (lo, mid)
    return 0.5 * (lo + hi)


def num_levels_for(dim: int, sigma_max: float, sigma_min: float, target: float = 0.5) -> int:
    """Technique 2: L for a geometric schedule sigma_max -> sigma_min with the gamma rule."""
    if not sigma_max > sigma_min > 0:
        raise ValueError(f"need sigma_max > sigma_min > 0, got {sigma_max}, {sigma_min}")
    gamma = level_ratio_for_dim(dim, target)
    return math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma)) + 1


def step_size_for(n_steps_each: int, sigmas) -> float:
    """Technique 4: eps for annealed Langevin with T = ``n_steps_each`` steps per level.

    With a = eps / sigma_L^2 and gamma = sigma_(L-1) / sigma_L, the chain's variance after
    the last level, relative to sigma_L^2, is (1 - a)^(2T) (gamma^2 - 2/(2 - a)) + 2/(2 - a)
    (for a Gaussian-like p). eps makes it closest to 1 (searched on a fine log grid of a).
    """
    sigmas = np.asarray(sigmas, np.float64)
    if sigmas.ndim != 1 or len(sigmas) < 2 or n_steps_each < 1:
        raise ValueError("need a schedule of at least 2 levels and n_steps_each >= 1")
    gamma, sigma_last = sigmas[-2] / sigmas[-1], sigmas[-1]
    a = np.logspace(-9, np.log10(0.999), 200_001)
    two = 2.0 / (2.0 - a)
    ratio = (1.0 - a) ** (2 * int(n_steps_each)) * (gamma**2 - two) + two
    return float(a[np.argmin(np.abs(ratio - 1.0))] * sigma_last**2)


# --- continuous models (EDM, Karras et al. 2022) ------------------------------------------


def karras_sigmas(sigma_max: float, sigma_min: float, num_levels: int, rho: float = 7.0):
    """The EDM time grid sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho, i < N = ``num_levels``, decreasing from sigma_max to sigma_min
    (float32 [N]; the solvers append sigma_N = 0 themselves). Same argument order as
    ``geometric_sigmas``."""
    if num_levels < 2:
        raise ValueError(f"a karras grid needs num_levels >= 2, got {num_levels}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(
            f"sigma_max must be > sigma_min > 0 for a decreasing schedule, got "
            f"sigma_max={sigma_max}, sigma_min={sigma_min}"
        )
    i = np.arange(num_levels, dtype=np.float64) / (num_levels - 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((hi + i * (lo - hi)) ** rho).astype(np.float32)
