"""Noise levels: the grids sigma_1 > ... > sigma_L (geometric, karras), the NCSNv2 rules
that choose them, and the training distributions of sigma (levels, lognormal, log-uniform)."""

from tf_score.noise.grids import (
    SIGMA_DISTS,
    geometric_sigmas,
    karras_sigmas,
    level_ratio_for_dim,
    nearest_level,
    num_levels_for,
    sample_sigmas,
    sigma_max_from_data,
    step_size_for,
)

__all__ = [
    "SIGMA_DISTS",
    "geometric_sigmas",
    "karras_sigmas",
    "level_ratio_for_dim",
    "nearest_level",
    "num_levels_for",
    "sample_sigmas",
    "sigma_max_from_data",
    "step_size_for",
]
