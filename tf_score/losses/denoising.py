"""The denoising objective of continuous-sigma denoisers (EDM, Karras et al. 2022)."""

from __future__ import annotations

import tensorflow as tf


def loss_weight(sigma, sigma_data: float, parameterization: str = "edm"):
    """lambda(sigma) of ||D - y||^2 (network scale): EDM's (s^2 + sd^2) / (s sd)^2, unit
    effective weight at every sigma; NCSNv2's 1 / s^2, which is DSM with lambda = s^2."""
    sigma = tf.convert_to_tensor(sigma, tf.float32)
    if parameterization == "ncsnv2":
        return 1.0 / tf.square(sigma)
    return (tf.square(sigma) + sigma_data**2) / tf.square(sigma * sigma_data)


def denoising_loss(denoiser, x, seed, sigma_fn, levels_of=None, labels=None,
                   label_dropout: float = 0.0):  # fmt: skip
    """Per-example lambda(sigma) ||D(x + sigma n; sigma) - x||^2 in the network's scale,
    sigma = ``sigma_fn(batch, seed)``; also the level index of each sigma (``levels_of``)
    for per-level summaries. A class-conditional denoiser gets ``labels`` [B], each replaced
    by "no label" (index ``denoiser.num_classes``) with probability ``label_dropout``.
    Returns (loss [B], levels [B] or None)."""
    s_seed, n_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2, alg="philox"))
    x = tf.convert_to_tensor(x, tf.float32)
    sigma = sigma_fn(tf.shape(x)[0], s_seed)
    sb = tf.reshape(sigma, [-1] + [1] * (x.shape.rank - 1))
    noise = tf.random.stateless_normal(tf.shape(x), n_seed, alg="philox")
    if labels is None:
        d = denoiser(x + sb * noise, sigma, training=True)
    else:
        drop_seed = tf.random.experimental.stateless_fold_in(seed, 2, alg="philox")
        dropped = tf.random.stateless_uniform(tf.shape(labels), drop_seed) < label_dropout
        labels = tf.where(dropped, denoiser.num_classes, tf.cast(labels, tf.int32))
        d = denoiser(x + sb * noise, sigma, training=True, labels=labels)
    d = tf.cast(d, tf.float32)
    a = denoiser.data_scale
    err = tf.reduce_sum(tf.reshape(tf.square(a * (d - x)), [tf.shape(x)[0], -1]), axis=1)
    w = loss_weight(a * sigma, denoiser.sigma_data, denoiser.parameterization)
    return w * err, (levels_of(sigma) if levels_of else None)
