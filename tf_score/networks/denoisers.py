"""Continuous-sigma denoisers (``preconditioning.Denoiser``): the raw network F(c_in y; c_noise)
is conditioned on c_noise = ln(sigma) / 4 through sinusoidal features and an MLP, which
drive every hidden layer (MLP) or every residual block (U-Net, FiLM: GroupNorm, then
(1 + scale) h + shift)."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tf_score.networks.base import check_spatial, stage_factor
from tf_score.networks.layers import spatial_moments
from tf_score.networks.preconditioning import Denoiser


@keras.saving.register_keras_serializable(package="tf_score")
class NoiseEmbedding(keras.layers.Layer):
    """c_noise [B] -> [B, dim]: sin/cos at ``dim / 2`` geometric frequencies 1 .. 1000, then
    Dense -> SiLU -> Dense; a class-conditional model's class embedding is added before the
    SiLU (as EDM adds its label map to the noise map)."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        half = self.dim // 2
        self._freqs = [math.exp(math.log(1000.0) * k / max(half - 1, 1)) for k in range(half)]
        self.dense1 = keras.layers.Dense(self.dim, dtype=self.dtype_policy, name="dense1")
        self.dense2 = keras.layers.Dense(self.dim, dtype=self.dtype_policy, name="dense2")

    def build(self, input_shape=None):
        self.dense1.build((None, 2 * len(self._freqs)))
        self.dense2.build((None, self.dim))

    def call(self, c_noise, extra=None):
        """``extra`` [B, dim] (a class embedding) joins the first layer's output."""
        angles = tf.cast(c_noise, tf.float32)[:, None] * tf.constant(self._freqs)[None, :]
        feats = tf.cast(tf.concat([tf.sin(angles), tf.cos(angles)], 1), self.compute_dtype)
        h = self.dense1(feats)
        if extra is not None:
            h = h + tf.cast(extra, h.dtype)
        return self.dense2(keras.activations.silu(h))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


@keras.saving.register_keras_serializable(package="tf_score")
class GroupNorm(keras.layers.Layer):
    """Group normalisation of NHWC images, then FiLM: ((x - mu_g) / sd_g gamma + beta)
    (1 + scale) + shift, as one affine map a x + b per example and channel.

    The group statistics come from per-channel spatial moments (``spatial_moments``,
    float32), averaged over each group's channels on the small [B, C] tensors; the weights
    (``gamma``, ``beta``) and ``epsilon`` (1e-3) are those of keras.layers.GroupNormalization,
    whose checkpoints it reads.
    """

    def __init__(self, groups: int, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.groups, self.epsilon = int(groups), float(epsilon)

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(c,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(c,), initializer="zeros")

    def call(self, x, scale=None, shift=None):

        c = int(x.shape[-1])
        mu, mean_sq = spatial_moments(x)  # [B, 1, 1, C]
        per_group = lambda t: tf.repeat(
            tf.reduce_mean(tf.reshape(t, [-1, 1, 1, self.groups, c // self.groups]), -1),
            c // self.groups,
            axis=-1,
        )
        mu_g, mean_sq_g = per_group(mu), per_group(mean_sq)
        inv_sd = tf.math.rsqrt(tf.maximum(mean_sq_g - tf.square(mu_g), 0.0) + self.epsilon)
        a = tf.cast(self.gamma, tf.float32) * inv_sd
        b = tf.cast(self.beta, tf.float32) - mu_g * a
        if scale is not None:
            film = 1.0 + tf.cast(scale, tf.float32)
            a, b = a * film, b * film + tf.cast(shift, tf.float32)
        return x * tf.cast(a, x.dtype) + tf.cast(b, x.dtype)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="tf_score")
class FiLMResBlock(keras.layers.Layer):
    """GroupNorm -> SiLU -> conv -> GroupNorm -> FiLM(emb) -> SiLU -> conv, plus a shortcut."""

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)

    def build(self, input_shape):
        x_shape, emb_shape = input_shape
        cin, dt, f = int(x_shape[-1]), self.dtype_policy, self.filters
        self.norm1 = GroupNorm(_groups(cin), dtype=dt, name="norm1")
        self.conv1 = keras.layers.Conv2D(f, 3, padding="same", dtype=dt, name="conv1")
        self.norm2 = GroupNorm(_groups(f), dtype=dt, name="norm2")
        self.film = keras.layers.Dense(2 * f, dtype=dt, name="film")
        self.conv2 = keras.layers.Conv2D(f, 3, padding="same", dtype=dt, name="conv2")
        self.norm1.build(x_shape)
        self.conv1.build(x_shape)
        mid = (*x_shape[:-1], f)
        self.norm2.build(mid)
        self.film.build(emb_shape)
        self.conv2.build(mid)
        self.has_shortcut = cin != f
        if self.has_shortcut:
            self.shortcut = keras.layers.Conv2D(f, 1, dtype=dt, name="shortcut")
            self.shortcut.build(x_shape)

    def call(self, inputs):
        x, emb = inputs
        h = self.conv1(keras.activations.silu(self.norm1(x)))
        scale, shift = tf.split(self.film(emb)[:, None, None, :], 2, axis=-1)
        h = self.norm2(h, scale, shift)
        h = self.conv2(keras.activations.silu(h))
        return (self.shortcut(x) if self.has_shortcut else x) + h

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


class EmbeddedDenoiser(Denoiser):
    """A denoiser whose raw network is driven by a noise embedding (``NoiseEmbedding``), and
    for a class-conditional one (``num_classes`` > 0) by a class embedding joined to it: one
    row per class and a last row, index ``num_classes``, for "no label"."""

    def make_embedding(self, width: int) -> None:
        dt = self.dtype_policy
        self.embed = NoiseEmbedding(width, dtype=dt, name="embed")
        if self.num_classes:
            self.class_embed = keras.layers.Embedding(
                self.num_classes + 1, width, dtype=dt, name="class_embed"
            )

    def embedding(self, c_noise, labels):
        """The noise embedding of c_noise [B], joined by the class embedding of labels [B]."""
        extra = self.class_embed(labels) if self.num_classes else None
        return self.embed(c_noise, extra)


@keras.saving.register_keras_serializable(package="tf_score")
class EDMUNet(EmbeddedDenoiser):
    """An image denoiser: a U-Net of FiLM residual blocks (``num_blocks`` per stage at
    ``ngf * mult`` channels, 2x2 mean pool down, nearest up, additive skips)."""

    def __init__(self, data_shape, ngf=32, channel_mults=(1, 2, 2), num_blocks=2, **kwargs):
        super().__init__(data_shape, **kwargs)
        self.ngf = int(ngf)
        self.channel_mults = tuple(int(m) for m in channel_mults)
        self.num_blocks = int(num_blocks)
        check_spatial(self.data_shape, stage_factor(self.channel_mults),
                      f"{len(self.channel_mults)} stages (channel_mults)")  # fmt: skip
        dt = self.dtype_policy
        self.make_embedding(4 * self.ngf)
        self.begin_conv = keras.layers.Conv2D(self.ngf, 3, padding="same", dtype=dt, name="begin")
        for s, mult in enumerate(self.channel_mults):
            for b in range(self.num_blocks):
                for side in ("down", "up"):
                    name = f"{side}_{s}_{b}"
                    setattr(self, name, FiLMResBlock(self.ngf * mult, dtype=dt, name=name))
            if s > 0:
                prev = self.ngf * self.channel_mults[s - 1]
                conv = keras.layers.Conv2D(prev, 3, padding="same", dtype=dt, name=f"upconv_{s}")
                setattr(self, f"upconv_{s}", conv)
        self.out_norm = GroupNorm(_groups(self.ngf), dtype=dt, name="norm")
        self.end_conv = keras.layers.Conv2D(self.data_shape[-1], 3, padding="same", dtype=dt)

    def raw(self, y_in, c_noise, labels=None, training=False):
        emb = self.embedding(c_noise, labels)
        h = self.begin_conv(y_in)
        skips, n = [], len(self.channel_mults)
        for s in range(n):
            if s > 0:
                h = tf.nn.avg_pool2d(h, 2, 2, "VALID")
            for b in range(self.num_blocks):
                h = getattr(self, f"down_{s}_{b}")((h, emb))
            skips.append(h)
        for s in reversed(range(n)):
            h = h + skips[s] if s < n - 1 else h
            for b in range(self.num_blocks):
                h = getattr(self, f"up_{s}_{b}")((h, emb))
            if s > 0:  # nearest 2x by repetition (its gradient compiles under XLA)
                h = getattr(self, f"upconv_{s}")(tf.repeat(tf.repeat(h, 2, axis=1), 2, axis=2))
        return self.end_conv(keras.activations.silu(self.out_norm(h)))

    def get_config(self):
        return {
            **super().get_config(),
            "ngf": self.ngf,
            "channel_mults": list(self.channel_mults),
            "num_blocks": self.num_blocks,
        }


@keras.saving.register_keras_serializable(package="tf_score")
class EDMMLP(EmbeddedDenoiser):
    """A low-dimensional denoiser: MLP whose hidden layers add the noise embedding (width
    ``embed_dim``, 0: the first hidden width). The embedding depends on sigma only, yet is
    computed per example: at equal widths its MLP and projections cost 2.5x the hidden
    layers' multiply-adds, so a narrow one makes a step several times cheaper."""

    def __init__(self, data_shape=(2,), hidden_units=(128, 128), activation="silu",
                 embed_dim=0, **kwargs):  # fmt: skip
        super().__init__(data_shape, **kwargs)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self.embed_dim = int(embed_dim)
        self._act = keras.activations.get(activation)
        dt = self.dtype_policy
        self.make_embedding(self.embed_dim or self.hidden_units[0])
        for i, u in enumerate(self.hidden_units):
            setattr(self, f"hidden_{i}", keras.layers.Dense(u, dtype=dt, name=f"hidden_{i}"))
            setattr(self, f"emb_{i}", keras.layers.Dense(u, dtype=dt, name=f"emb_{i}"))
        self.out = keras.layers.Dense(self.data_shape[0], dtype=dt, name="out")

    def raw(self, y_in, c_noise, labels=None, training=False):
        emb = self.embedding(c_noise, labels)
        h = y_in
        for i in range(len(self.hidden_units)):
            h = self._act(getattr(self, f"hidden_{i}")(h) + getattr(self, f"emb_{i}")(emb))
        return self.out(h)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_units": list(self.hidden_units),
            "activation": self.activation,
            "embed_dim": self.embed_dim,
        }
