"""Noise levels: the grids sigma_1 > ... > sigma_L (geometric, karras) and the NCSNv2 rules
that choose them (``grids``, numpy only), and the draws of sigma in a graph (``draws``:
training distributions, nearest level; imported by name, so that reading a config needs no
TensorFlow)."""

from tf_score.noise.grids import (
    geometric_sigmas,
    karras_sigmas,
    level_ratio_for_dim,
    num_levels_for,
    sigma_max_from_data,
    step_size_for,
)

__all__ = [
    "geometric_sigmas",
    "karras_sigmas",
    "level_ratio_for_dim",
    "num_levels_for",
    "sigma_max_from_data",
    "step_size_for",
]
