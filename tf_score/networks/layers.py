"""Building blocks of the NCSN image score networks (NHWC, noise-level conditional).

Every conditional layer takes ``(x, levels)`` with int32 level indices. Normalisation
statistics are computed in float32 whatever the compute dtype, so the networks are safe
under ``mixed_bfloat16`` / ``mixed_float16`` policies.

Sub-layers are held as attributes (never in Python lists): tf.train.Checkpoint does not see
into the lists Keras 3 keeps, and list-held weights would be left out of checkpoints.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tf_score")
class DilatedConv2D(keras.layers.Conv2D):
    """Conv2D whose dilation goes to the convolution kernel itself (oneDNN, cuDNN, XLA all
    take it), not through ``tf.nn.convolution``'s SpaceToBatch / BatchToSpace rewrite."""

    def convolution_op(self, inputs, kernel):
        return tf.nn.conv2d(
            inputs,
            kernel,
            strides=[1, *self.strides, 1],
            padding=self.padding.upper(),
            dilations=[1, *self.dilation_rate, 1],
        )


def _conv(filters, kernel=3, dilation=1, use_bias=True, name=None, dtype=None):
    cls = DilatedConv2D if dilation > 1 else keras.layers.Conv2D
    return cls(
        filters,
        kernel,
        padding="same",
        dilation_rate=dilation,
        use_bias=use_bias,
        name=name,
        dtype=dtype,
    )


@tf.custom_gradient
def spatial_moments(x):
    """Per-example, per-channel mean and mean square over H and W of NHWC ``x``, in float32
    whatever x's dtype ([B, 1, 1, C] each). The gradient is written out, two passes over x
    (dx = dmu / N + 2 x dmean_sq / N) instead of autodiff's broadcasts and tiles."""
    xf = tf.cast(x, tf.float32)
    mu = tf.reduce_mean(xf, axis=[1, 2], keepdims=True)
    mean_sq = tf.reduce_mean(tf.square(xf), axis=[1, 2], keepdims=True)
    n = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], tf.float32)

    def grad(d_mu, d_mean_sq):
        return x * tf.cast(2.0 * d_mean_sq / n, x.dtype) + tf.cast(d_mu / n, x.dtype)

    return (mu, mean_sq), grad


def mean_pool(x):
    """2x2 mean pooling (the NCSN down-sampling)."""
    return tf.nn.avg_pool2d(x, 2, 2, "VALID")


class _Indexed:
    """Mixin: attribute-held sub-layers addressed by index (checkpoint-visible lists)."""

    def _set(self, prefix, i, layer):
        setattr(self, f"{prefix}_{i}", layer)
        return layer

    def _get(self, prefix, i):
        return getattr(self, f"{prefix}_{i}")

    def _norm_conv(self, k, shape):
        """Build the k-th (conditional norm, bias-free 3x3 conv) pair at ``shape``."""
        dt, c = self.dtype_policy, int(shape[-1])
        self._set(
            "norm", k, ConditionalInstanceNormPlus(self.num_levels, dtype=dt, name=f"norm_{k}")
        ).build(shape)
        self._set("conv", k, _conv(c, use_bias=False, dtype=dt, name=f"conv_{k}")).build(shape)


@keras.saving.register_keras_serializable(package="tf_score")
class ConditionalInstanceNormPlus(keras.layers.Layer):
    """Conditional instance norm++ (NCSN): instance norm that keeps the channel means.

    h = IN(x) + alpha_i * (mu - mean_c(mu)) / std_c(mu),  out = gamma_i * h + beta_i,
    with mu the per-channel spatial means and (gamma, alpha, beta) learned per level i.
    Computed as one affine map a x + b per example and channel (statistics and a, b in
    float32), so a full-size tensor is read three times and written once.
    """

    def __init__(self, num_levels: int, bias: bool = True, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.num_levels = int(num_levels)
        self.bias = bool(bias)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.channels = c
        self.scale = self.add_weight(
            name="scale",
            shape=(self.num_levels, 2 * c),
            initializer=keras.initializers.RandomNormal(1.0, 0.02),
        )
        if self.bias:
            self.offset = self.add_weight(
                name="offset", shape=(self.num_levels, c), initializer="zeros"
            )

    def call(self, x, levels):
        mu, mean_sq = spatial_moments(x)  # [B, 1, 1, C], float32
        var = tf.maximum(mean_sq - tf.square(mu), 0.0)
        m, v = tf.nn.moments(mu, axes=[3], keepdims=True)
        # unbiased variance across channels, as the reference implementation
        c = float(x.shape[-1])
        v = v * c / max(c - 1.0, 1.0)
        mu_hat = (mu - m) * tf.math.rsqrt(v + self.epsilon)
        gamma, alpha = tf.split(tf.gather(tf.cast(self.scale, tf.float32), levels), 2, axis=-1)
        gamma, alpha = gamma[:, None, None, :], alpha[:, None, None, :]
        # gamma ((x - mu) / sd + alpha mu_hat) + beta = a x + b, per example and channel
        inv_sd = tf.math.rsqrt(var + self.epsilon)
        a = gamma * inv_sd
        b = gamma * (alpha * mu_hat - mu * inv_sd)
        if self.bias:
            b = b + tf.gather(tf.cast(self.offset, tf.float32), levels)[:, None, None, :]
        return x * tf.cast(a, x.dtype) + tf.cast(b, x.dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "num_levels": self.num_levels,
            "bias": self.bias,
            "epsilon": self.epsilon,
        }


@keras.saving.register_keras_serializable(package="tf_score")
class ConditionalAffine(keras.layers.Layer):
    """Per-level, per-channel affine map gamma_i * x + beta_i, with no normalisation.

    Unlike instance norm it keeps a global intensity offset of the input visible, which the
    score needs (at level sigma it is about -(offset) / sigma^2 for an image shifted off the
    data).
    """

    def __init__(self, num_levels: int, **kwargs):
        super().__init__(**kwargs)
        self.num_levels = int(num_levels)

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.scale = self.add_weight(
            name="scale",
            shape=(self.num_levels, c),
            initializer=keras.initializers.RandomNormal(1.0, 0.02),
        )
        self.offset = self.add_weight(
            name="offset", shape=(self.num_levels, c), initializer="zeros"
        )

    def call(self, x, levels):
        gamma = tf.gather(tf.cast(self.scale, x.dtype), levels)[:, None, None, :]
        beta = tf.gather(tf.cast(self.offset, x.dtype), levels)[:, None, None, :]
        return gamma * x + beta

    def get_config(self):
        return {**super().get_config(), "num_levels": self.num_levels}


@keras.saving.register_keras_serializable(package="tf_score")
class ConditionalResidualBlock(keras.layers.Layer):
    """norm -> act -> conv -> norm -> act -> conv, plus a (projected) shortcut.

    ``resample="down"`` halves the resolution (conv then 2x2 mean pool) unless ``dilation``
    is set, in which case the block keeps the resolution and widens the receptive field with
    dilated convolutions instead (the NCSN RefineNet's deeper stages).
    """

    def __init__(
        self,
        filters: int,
        num_levels: int,
        resample: str | None = None,
        dilation: int | None = None,
        activation: str = "elu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if resample not in (None, "down"):
            raise ValueError(f"resample must be None or 'down', got {resample!r}")
        self.filters = int(filters)
        self.num_levels = int(num_levels)
        self.resample = resample
        self.dilation = dilation
        self.activation = activation
        self._act = keras.activations.get(activation)

    def build(self, input_shape):
        cin = int(input_shape[-1])
        d = self.dilation or 1
        dt = self.dtype_policy
        self.norm1 = ConditionalInstanceNormPlus(self.num_levels, name="norm1", dtype=dt)
        mid = cin if self.resample == "down" else self.filters
        self.conv1 = _conv(mid, dilation=d, name="conv1", dtype=dt)
        self.norm2 = ConditionalInstanceNormPlus(self.num_levels, name="norm2", dtype=dt)
        self.conv2 = _conv(self.filters, dilation=d, name="conv2", dtype=dt)
        self.has_shortcut = cin != self.filters or self.resample is not None
        if self.has_shortcut:
            kernel = 3 if self.dilation else 1
            self.shortcut = _conv(self.filters, kernel, dilation=d, name="shortcut", dtype=dt)
        self.norm1.build(input_shape)
        self.conv1.build(input_shape)
        mid_shape = (*input_shape[:-1], mid)
        self.norm2.build(mid_shape)
        self.conv2.build(mid_shape)
        if self.has_shortcut:
            self.shortcut.build(input_shape)

    @property
    def _downsamples(self):
        return self.resample == "down" and not self.dilation

    def call(self, x, levels):
        h = self.conv1(self._act(self.norm1(x, levels)))
        h = self.conv2(self._act(self.norm2(h, levels)))
        skip = self.shortcut(x) if self.has_shortcut else x
        if self._downsamples:
            h, skip = mean_pool(h), mean_pool(skip)
        return skip + h

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "num_levels": self.num_levels,
            "resample": self.resample,
            "dilation": self.dilation,
            "activation": self.activation,
        }


@keras.saving.register_keras_serializable(package="tf_score")
class CondRCUBlock(_Indexed, keras.layers.Layer):
    """Residual conv units: ``n_blocks`` x (``n_stages`` x [norm -> act -> conv3x3]) + skip."""

    def __init__(self, num_levels, n_blocks, n_stages=2, activation="elu", **kwargs):
        super().__init__(**kwargs)
        self.num_levels, self.n_blocks, self.n_stages = int(num_levels), n_blocks, n_stages
        self.activation = activation
        self._act = keras.activations.get(activation)

    def build(self, input_shape):
        for k in range(self.n_blocks * self.n_stages):
            self._norm_conv(k, input_shape)

    def call(self, x, levels):
        k = 0
        for _ in range(self.n_blocks):
            residual = x
            for _ in range(self.n_stages):
                x = self._get("conv", k)(self._act(self._get("norm", k)(x, levels)))
                k += 1
            x = x + residual
        return x

    def get_config(self):
        return {
            **super().get_config(),
            "num_levels": self.num_levels,
            "n_blocks": self.n_blocks,
            "n_stages": self.n_stages,
            "activation": self.activation,
        }


@keras.saving.register_keras_serializable(package="tf_score")
class CondCRPBlock(_Indexed, keras.layers.Layer):
    """Chained residual pooling: act, then ``n_stages`` x [norm -> 5x5 avg pool -> conv], summed."""

    def __init__(self, num_levels, n_stages=2, activation="elu", **kwargs):
        super().__init__(**kwargs)
        self.num_levels, self.n_stages, self.activation = int(num_levels), n_stages, activation
        self._act = keras.activations.get(activation)

    def build(self, input_shape):
        for k in range(self.n_stages):
            self._norm_conv(k, input_shape)

    def call(self, x, levels):
        x = self._act(x)
        path = x
        for k in range(self.n_stages):
            path = self._get("norm", k)(path, levels)
            # zero padding counted in the average (divide by 25 everywhere), as in NCSN
            path = tf.nn.avg_pool2d(tf.pad(path, [[0, 0], [2, 2], [2, 2], [0, 0]]), 5, 1, "VALID")
            path = self._get("conv", k)(path)
            x = x + path
        return x

    def get_config(self):
        return {
            **super().get_config(),
            "num_levels": self.num_levels,
            "n_stages": self.n_stages,
            "activation": self.activation,
        }


@keras.saving.register_keras_serializable(package="tf_score")
class CondRefineBlock(_Indexed, keras.layers.Layer):
    """RefineNet block: adapt each input (RCU), fuse to one resolution (MSF), pool (CRP), RCU.

    Multi-resolution fusion: per input norm -> conv3x3 to ``features`` -> bilinear resize to
    the first input's resolution, summed.
    """

    def __init__(self, num_inputs, features, num_levels, end=False, activation="elu", **kwargs):
        super().__init__(**kwargs)
        self.num_inputs, self.features, self.num_levels = num_inputs, int(features), num_levels
        self.end, self.activation = bool(end), activation

    def build(self, input_shapes):
        dt = self.dtype_policy
        for i, shape in enumerate(input_shapes):
            self._set(
                "adapt",
                i,
                CondRCUBlock(self.num_levels, 2, 2, self.activation, dtype=dt, name=f"adapt_{i}"),
            ).build(shape)
            if self.num_inputs > 1:
                self._set(
                    "msf_norm",
                    i,
                    ConditionalInstanceNormPlus(self.num_levels, dtype=dt, name=f"msf_norm_{i}"),
                ).build(shape)
                self._set(
                    "msf_conv", i, _conv(self.features, dtype=dt, name=f"msf_conv_{i}")
                ).build(shape)
        fused = (*input_shapes[0][:-1], self.features)
        self.crp = CondCRPBlock(self.num_levels, 2, self.activation, dtype=dt, name="crp")
        self.crp.build(fused)
        self.out_rcu = CondRCUBlock(
            self.num_levels, 3 if self.end else 1, 2, self.activation, dtype=dt, name="out_rcu"
        )
        self.out_rcu.build(fused)

    def call(self, xs, levels):
        hs = [self._get("adapt", i)(x, levels) for i, x in enumerate(xs)]
        if self.num_inputs > 1:
            size = tf.shape(hs[0])[1:3]
            h = 0
            for i, hi in enumerate(hs):
                hi = self._get("msf_conv", i)(self._get("msf_norm", i)(hi, levels))
                if hi.shape[1:3] != hs[0].shape[1:3]:
                    hi = tf.cast(tf.image.resize(hi, size, method="bilinear"), hi.dtype)
                h = h + hi
        else:
            h = hs[0]
        return self.out_rcu(self.crp(h, levels), levels)

    def get_config(self):
        return {
            **super().get_config(),
            "num_inputs": self.num_inputs,
            "features": self.features,
            "num_levels": self.num_levels,
            "end": self.end,
            "activation": self.activation,
        }
