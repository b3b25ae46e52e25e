"""Noise-conditional MLP score network for low-dimensional (2-D) data."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tf_score")
class ConditionalDense(keras.layers.Layer):
    """Dense layer modulated by the noise level: h = gamma[i] * (x W + b).

    ``gamma`` is a learned per-level, per-unit scale (the NCSN toy model's conditional linear
    layer), so one set of weights serves every noise level.
    """

    def __init__(self, units: int, num_levels: int, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.num_levels = int(num_levels)
        self.dense = keras.layers.Dense(self.units, dtype=self.dtype_policy, name="dense")

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.gamma = self.add_weight(
            name="gamma",
            shape=(self.num_levels, self.units),
            initializer=keras.initializers.RandomUniform(0.0, 1.0),
        )

    def call(self, x, levels):
        gamma = tf.cast(tf.gather(self.gamma, levels), self.compute_dtype)
        return gamma * self.dense(x)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "num_levels": self.num_levels}


@keras.saving.register_keras_serializable(package="tf_score")
class NoiseConditionalMLP(keras.Model):
    """s(x, i): MLP with level-modulated hidden layers, e.g. 2-128-128-2 softplus (NCSN toy).

    Conditioning on the level i = index into ``sigmas``:
      * every hidden layer is scaled per level (``ConditionalDense``), as in the NCSN toy;
      * with ``log_sigma_input`` the input also carries log(sigma_i). This ties neighbouring
        levels together, so the smallest level extrapolates into the low-density gap between
        modes from what the larger levels saw there (measured on the two-mode toy: the plain
        Langevin basin split stays near the exact score's);
      * with ``scale_by_sigma`` the output is f(x, i) / sigma_i (the NCSNv2 parameterisation).
    """

    def __init__(
        self,
        sigmas,
        data_dim: int = 2,
        hidden_units=(128, 128),
        activation: str = "softplus",
        log_sigma_input: bool = True,
        scale_by_sigma: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.sigmas = [float(s) for s in sigmas]
        self.num_levels = len(self.sigmas)
        self.data_dim = int(data_dim)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self.log_sigma_input = bool(log_sigma_input)
        self.scale_by_sigma = bool(scale_by_sigma)
        self._act = keras.activations.get(activation)
        # Layers are attributes, not a list: tf.train.Checkpoint does not see into the lists
        # Keras 3 keeps, so list-held variables would silently be left out of checkpoints.
        for i, u in enumerate(self.hidden_units):
            setattr(
                self,
                f"hidden_{i}",
                ConditionalDense(u, self.num_levels, dtype=self.dtype_policy, name=f"hidden_{i}"),
            )
        self.out = keras.layers.Dense(self.data_dim, dtype=self.dtype_policy, name="out")

    @property
    def hidden(self) -> list[ConditionalDense]:
        return [getattr(self, f"hidden_{i}") for i in range(len(self.hidden_units))]

    def build(self, input_shape=None):
        shape = (None, self.data_dim + int(self.log_sigma_input))
        for layer in self.hidden:
            layer.build(shape)
            shape = (None, layer.units)
        self.out.build(shape)
        super().build(input_shape)

    def call(self, x, levels):
        levels = tf.cast(levels, tf.int32)
        sigma = tf.gather(tf.constant(self.sigmas, tf.float32), levels)[:, tf.newaxis]
        h = tf.cast(x, tf.float32)
        if self.log_sigma_input:
            h = tf.concat([h, tf.math.log(sigma)], axis=-1)
        h = tf.cast(h, self.compute_dtype)
        for layer in self.hidden:
            h = self._act(layer(h, levels))
        s = tf.cast(self.out(h), tf.float32)
        return s / sigma if self.scale_by_sigma else s

    def get_config(self):
        return {
            **super().get_config(),
            "sigmas": self.sigmas,
            "data_dim": self.data_dim,
            "hidden_units": list(self.hidden_units),
            "activation": self.activation,
            "log_sigma_input": self.log_sigma_input,
            "scale_by_sigma": self.scale_by_sigma,
        }
