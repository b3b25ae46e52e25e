"""Continuous-noise variance-exploding models with EDM preconditioning (Karras et al. 2022).

A model is a denoiser D(x; sigma) of x_sigma = x + sigma n, n ~ N(0, I), for any sigma > 0.
In the network's scale y = a x + b (images in [0, 1] -> [-1, 1]: a = 2, b = -1; 2-D toys:
a = 1, b = 0) with sigma_y = a sigma:

    D_y(y; s) = c_skip(s) y + c_out(s) F(c_in(s) y; c_noise(s))
    EDM:     c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2),
             c_in = 1 / sqrt(s^2 + sd^2), c_noise = ln(s) / 4     (sd = sigma_data)
    NCSNv2:  c_skip = 1, c_out = s, c_in = 1, c_noise = ln(s) / 4  (score = F / s)

and the score in data units is Tweedie's grad_x log p(x; sigma) = (D(x; sigma) - x) / sigma^2,
so every solver runs on a denoiser (``networks.contract``). Noise levels (``sigma_min``,
``sigma_max``, the sampling grid) are in data units, as everywhere in the library;
``sigma_data``, ``p_mean`` and ``p_std`` are in the network's scale, as in the EDM paper.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_score.config import PARAMETERIZATIONS
from tf_score.networks import contract


def preconditioning(sigma, sigma_data: float, parameterization: str = "edm"):
    """(c_skip, c_out, c_in, c_noise) at noise level ``sigma`` (network scale)."""
    sigma = tf.convert_to_tensor(sigma, tf.float32)
    c_noise = tf.math.log(sigma) / 4.0
    if parameterization == "ncsnv2":
        return tf.ones_like(sigma), sigma, tf.ones_like(sigma), c_noise
    sd2 = sigma_data**2
    norm = tf.sqrt(tf.square(sigma) + sd2)
    return sd2 / (tf.square(sigma) + sd2), sigma * sigma_data / norm, 1.0 / norm, c_noise


class Denoiser(keras.Model):
    """Base of D(x; sigma) with EDM (or NCSNv2) preconditioning around a raw network
    ``self.raw(y_in, c_noise)`` that subclasses build (a class-conditional one, ``num_classes``
    > 0, is also given ``labels=`` int32 [B], index ``num_classes`` for "no label").
    ``call(x, sigma)`` and ``score(x, sigma)`` take data-unit x [B, ...] and sigma [B];
    outputs are float32."""

    def __init__(
        self,
        data_shape,
        sigma_data: float = 0.5,
        data_scale: float = 1.0,
        data_shift: float = 0.0,
        parameterization: str = "edm",
        num_classes: int = 0,
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
        self.num_classes = int(num_classes)

    def build(self, input_shape=None):
        self.call(tf.zeros((1, *self.data_shape)), tf.ones([1]))
        self.built = True

    def raw(self, y_in, c_noise, labels=None, training=False):
        raise NotImplementedError

    def call(self, x, sigma, training=False, labels=None):
        x = tf.cast(x, tf.float32)
        sigma = tf.cast(sigma, tf.float32)
        a, b = self.data_scale, self.data_shift
        y, s = a * x + b, a * sigma
        *coeffs, c_noise = preconditioning(s, self.sigma_data, self.parameterization)
        c_skip, c_out, c_in = (tf.reshape(c, [-1] + [1] * len(self.data_shape)) for c in coeffs)
        labels = self.label_input(labels, tf.shape(x)[0])
        given = {} if labels is None else {"labels": labels}  # a raw of no labels: unconditional
        f = self.raw(tf.cast(c_in * y, self.compute_dtype), c_noise, training=training, **given)
        d_y = c_skip * y + c_out * tf.cast(f, tf.float32)
        return (d_y - b) / a

    def label_input(self, labels, batch):
        """labels int32 [B] for the network: None is "no label" (index ``num_classes``) for a
        class-conditional model; an unconditional one takes none (ValueError)."""
        if not self.num_classes:
            if labels is not None:
                raise ValueError(f"{self.name} is unconditional (num_classes=0): no labels")
            return None
        if labels is None:
            return tf.fill([batch], tf.constant(self.num_classes, tf.int32))
        return tf.broadcast_to(tf.cast(labels, tf.int32), [batch])

    #: a continuous model: defined at every sigma (``networks.contract``)
    levels = None

    def network_calls(self, off_grid: bool = True) -> int:
        del off_grid
        return 1

    def denoise(self, x, sigma, labels=None):
        """D(x; sigma), sigma per example [B] or a scalar (the model contract); ``labels``
        [B] (a class-conditional model; None: unconditional)."""
        return self(x, tf.broadcast_to(tf.cast(sigma, tf.float32), [tf.shape(x)[0]]), labels=labels)

    def score(self, x, sigma, labels=None):
        """grad_x log p(x; sigma) = (D(x; sigma) - x) / sigma^2 (Tweedie)."""
        sigma = tf.broadcast_to(tf.cast(sigma, tf.float32), [tf.shape(x)[0]])
        d = self(x, sigma, labels=labels)
        return (d - tf.cast(x, tf.float32)) / tf.reshape(
            tf.square(sigma), [-1] + [1] * len(self.data_shape)
        )

    def conditioned(self, labels=None, guidance=1.0, **kwargs):
        """This model conditioned on ``labels`` and guided (``contract.conditioned``)."""
        return contract.conditioned(self, labels, guidance, **kwargs)

    def get_config(self):
        return {
            **super().get_config(),
            "data_shape": list(self.data_shape),
            "sigma_data": self.sigma_data,
            "data_scale": self.data_scale,
            "data_shift": self.data_shift,
            "parameterization": self.parameterization,
            "num_classes": self.num_classes,
        }
