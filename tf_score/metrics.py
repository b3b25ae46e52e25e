"""Sample-quality metrics."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def mode_weight(x) -> tuple[float, float]:
    """Fraction of 2-D samples in the (5, 5) mode (x1 + x2 > 0) and its standard error."""
    x = np.asarray(x)
    w = float(np.mean(x[:, 0] + x[:, 1] > 0))
    return w, float(np.sqrt(w * (1.0 - w) / len(x)))


def _median_bandwidth(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    z = tf.concat([x, y], 0)
    d2 = _sq_dists(z, z).numpy().ravel()
    return tf.constant(np.sqrt(0.5 * np.median(d2) + 1e-12), tf.float64)


def _sq_dists(a, b):
    return (
        tf.reduce_sum(a * a, 1)[:, None]
        + tf.reduce_sum(b * b, 1)[None, :]
        - 2.0 * a @ tf.transpose(b)
    )


def mmd_rbf(x, y, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD between samples x [n, d] and y [m, d] with an RBF kernel.

    MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y), k(a, b) = exp(-||a - b||^2 / (2 h^2)),
    with the diagonal terms left out (unbiased, so it can be slightly negative when p = q).
    ``bandwidth`` h defaults to the median heuristic on the pooled sample.
    """
    x = tf.convert_to_tensor(x, tf.float64)
    y = tf.convert_to_tensor(y, tf.float64)
    h = tf.constant(bandwidth, tf.float64) if bandwidth else _median_bandwidth(x, y)
    n = tf.cast(tf.shape(x)[0], tf.float64)
    m = tf.cast(tf.shape(y)[0], tf.float64)
    kxx = tf.exp(-_sq_dists(x, x) / (2 * h * h))
    kyy = tf.exp(-_sq_dists(y, y) / (2 * h * h))
    kxy = tf.exp(-_sq_dists(x, y) / (2 * h * h))
    term_x = (tf.reduce_sum(kxx) - tf.linalg.trace(kxx)) / (n * (n - 1))
    term_y = (tf.reduce_sum(kyy) - tf.linalg.trace(kyy)) / (m * (m - 1))
    return float(term_x + term_y - 2.0 * tf.reduce_mean(kxy))
