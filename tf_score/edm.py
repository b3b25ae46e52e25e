"""Continuous-noise variance-exploding models with EDM preconditioning (Karras et al. 2022).

A model is a denoiser D(x; sigma) of x_sigma = x + sigma n, n ~ N(0, I), for any sigma > 0.
In the network's scale y = a x + b (images in [0, 1] -> [-1, 1]: a = 2, b = -1; 2-D toys:
a = 1, b = 0) with sigma_y = a sigma:

    D_y(y; s) = c_skip(s) y + c_out(s) F(c_in(s) y; c_noise(s))
    EDM:     c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2),
             c_in = 1 / sqrt(s^2 + sd^2), c_noise = ln(s) / 4     (sd = sigma_data)
    NCSNv2:  c_skip = 1, c_out = s, c_in = 1, c_noise = ln(s) / 4  (score = F / s)

and the score in data units is Tweedie's grad_x log p(x; sigma) = (D(x; sigma) - x) / sigma^2,
so every sampler runs on a denoiser. Noise levels (``sigma_min``, ``sigma_max``, the sampling
grid) are in data units, as everywhere in the library; ``sigma_data``, ``p_mean`` and
``p_std`` are in the network's scale, as in the EDM paper.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

PARAMETERIZATIONS = ("edm", "ncsnv2")
SIGMA_DISTS = ("lognormal", "loguniform")


def preconditioning(sigma, sigma_data: float, parameterization: str = "edm"):
    """(c_skip, c_out, c_in, c_noise) at noise level ``sigma`` (network scale)."""
    sigma = tf.convert_to_tensor(sigma, tf.float32)
    c_noise = tf.math.log(sigma) / 4.0
    if parameterization == "ncsnv2":
        return tf.ones_like(sigma), sigma, tf.ones_like(sigma), c_noise
    sd2 = sigma_data**2
    norm = tf.sqrt(tf.square(sigma) + sd2)
    return sd2 / (tf.square(sigma) + sd2), sigma * sigma_data / norm, 1.0 / norm, c_noise


def loss_weight(sigma, sigma_data: float, parameterization: str = "edm"):
    """lambda(sigma) of ||D - y||^2 (network scale): EDM's (s^2 + sd^2) / (s sd)^2, unit
    effective weight at every sigma; NCSNv2's 1 / s^2, which is DSM with lambda = s^2."""
    sigma = tf.convert_to_tensor(sigma, tf.float32)
    if parameterization == "ncsnv2":
        return 1.0 / tf.square(sigma)
    return (tf.square(sigma) + sigma_data**2) / tf.square(sigma * sigma_data)


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0):
    """The EDM time grid sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho, i < N, decreasing from sigma_max to sigma_min (float32 [N]; the
    samplers append sigma_N = 0 themselves)."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    i = np.arange(num_steps, dtype=np.float64) / (num_steps - 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((hi + i * (lo - hi)) ** rho).astype(np.float32)


def sample_sigmas(batch, seed, dist, p_mean, p_std, sigma_min, sigma_max, scale):
    """Training noise levels in data units: ln(scale sigma) ~ N(p_mean, p_std) (EDM), or
    log-uniform on [sigma_min, sigma_max]."""
    u = tf.random.stateless_normal([batch], seed, alg="philox")
    if dist == "lognormal":
        return tf.exp(p_mean + p_std * u) / scale
    v = tf.random.stateless_uniform([batch], seed, alg="philox")
    lo, hi = np.log(sigma_min), np.log(sigma_max)
    return tf.exp(lo + v * (hi - lo))


def denoising_loss(denoiser, x, seed, sigma_fn, levels_of=None):
    """Per-example lambda(sigma) ||D(x + sigma n; sigma) - x||^2 in the network's scale,
    sigma = ``sigma_fn(batch, seed)``; also the level index of each sigma (``levels_of``)
    for per-level summaries. Returns (loss [B], levels [B] or None)."""
    s_seed, n_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2, alg="philox"))
    x = tf.convert_to_tensor(x, tf.float32)
    sigma = sigma_fn(tf.shape(x)[0], s_seed)
    sb = tf.reshape(sigma, [-1] + [1] * (x.shape.rank - 1))
    noise = tf.random.stateless_normal(tf.shape(x), n_seed, alg="philox")
    d = tf.cast(denoiser(x + sb * noise, sigma, training=True), tf.float32)
    a = denoiser.data_scale
    err = tf.reduce_sum(tf.reshape(tf.square(a * (d - x)), [tf.shape(x)[0], -1]), axis=1)
    w = loss_weight(a * sigma, denoiser.sigma_data, denoiser.parameterization)
    return w * err, (levels_of(sigma) if levels_of else None)


def nearest_level(sigmas):
    """sigma [B] -> int32 index of the nearest entry of ``sigmas`` in log space."""
    log_s = tf.math.log(tf.constant(sigmas, tf.float32))
    return lambda sigma: tf.argmin(
        tf.abs(tf.math.log(sigma)[:, None] - log_s[None, :]), axis=1, output_type=tf.int32
    )


def score_on_grid(denoiser, sigmas):
    """The level-conditioned score ``(x, levels) -> (D(x; sigma_l) - x) / sigma_l^2`` of a
    denoiser on the grid ``sigmas`` (what every registered sampler takes). Its
    ``continuous`` attribute is the score at any sigma, which the ODE and the stochastic
    EDM sampler use directly."""
    grid = tf.constant(sigmas, tf.float32)

    def score(x, levels):
        return denoiser.score(x, tf.gather(grid, levels))

    score.continuous = denoiser.score
    score.network_evals_per_call = 1
    return score


class Denoiser(keras.Model):
    """Base of D(x; sigma) with EDM (or NCSNv2) preconditioning around a raw network
    ``self.raw(y_in, c_noise)`` that subclasses build. ``call(x, sigma)`` and ``score(x,
    sigma)`` take data-unit x [B, ...] and sigma [B]; outputs are float32."""

    def __init__(
        self,
        data_shape,
        sigma_data: float = 0.5,
        data_scale: float = 1.0,
        data_shift: float = 0.0,
        parameterization: str = "edm",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}")
        self.data_shape = tuple(int(d) for d in data_shape)
        self.sigma_data = float(sigma_data)
        self.data_scale = float(data_scale)
        self.data_shift = float(data_shift)
        self.parameterization = parameterization

    def build(self, input_shape=None):
        self.call(tf.zeros((1, *self.data_shape)), tf.ones([1]))
        self.built = True

    def raw(self, y_in, c_noise, training=False):
        raise NotImplementedError

    def call(self, x, sigma, training=False):
        x = tf.cast(x, tf.float32)
        sigma = tf.cast(sigma, tf.float32)
        a, b = self.data_scale, self.data_shift
        y, s = a * x + b, a * sigma
        *coeffs, c_noise = preconditioning(s, self.sigma_data, self.parameterization)
        c_skip, c_out, c_in = (tf.reshape(c, [-1] + [1] * len(self.data_shape)) for c in coeffs)
        f = self.raw(tf.cast(c_in * y, self.compute_dtype), c_noise, training=training)
        d_y = c_skip * y + c_out * tf.cast(f, tf.float32)
        return (d_y - b) / a

    def score(self, x, sigma):
        """grad_x log p(x; sigma) = (D(x; sigma) - x) / sigma^2 (Tweedie)."""
        sigma = tf.broadcast_to(tf.cast(sigma, tf.float32), [tf.shape(x)[0]])
        d = self(x, sigma)
        return (d - tf.cast(x, tf.float32)) / tf.reshape(
            tf.square(sigma), [-1] + [1] * len(self.data_shape)
        )

    def get_config(self):
        return {
            **super().get_config(),
            "data_shape": list(self.data_shape),
            "sigma_data": self.sigma_data,
            "data_scale": self.data_scale,
            "data_shift": self.data_shift,
            "parameterization": self.parameterization,
        }
