"""Noise levels in a graph: the training draws of sigma and the nearest trained level."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def sample_sigmas(batch, seed, dist, p_mean, p_std, sigma_min, sigma_max, scale):
    """Training noise levels in data units: ln(scale sigma) ~ N(p_mean, p_std) (EDM), or
    log-uniform on [sigma_min, sigma_max]."""
    u = tf.random.stateless_normal([batch], seed, alg="philox")
    if dist == "lognormal":
        return tf.exp(p_mean + p_std * u) / scale
    v = tf.random.stateless_uniform([batch], seed, alg="philox")
    lo, hi = np.log(sigma_min), np.log(sigma_max)
    return tf.exp(lo + v * (hi - lo))


def nearest_level(sigmas):
    """sigma [B] -> int32 index of the nearest entry of ``sigmas`` in log space."""
    log_s = tf.math.log(tf.constant(sigmas, tf.float32))
    return lambda sigma: tf.argmin(
        tf.abs(tf.math.log(sigma)[:, None] - log_s[None, :]), axis=1, output_type=tf.int32
    )
