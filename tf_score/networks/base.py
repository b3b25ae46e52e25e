"""What the image score networks share: inputs, the output head and the config."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_score.networks.layers import ConditionalAffine, ConditionalInstanceNormPlus


def stage_factor(channel_mults) -> int:
    """What image height and width must be divisible by for a network that halves them
    between its ``len(channel_mults)`` stages."""
    return 2 ** (len(tuple(channel_mults)) - 1)


def check_spatial(shape, factor: int, why: str) -> None:
    """ValueError unless the image ``shape``'s height and width are divisible by ``factor``."""
    if shape[0] % factor or shape[1] % factor or min(shape[0], shape[1]) < factor:
        raise ValueError(
            f"image height and width ({tuple(shape[:2])}) must be divisible by {factor} for {why}"
        )


class ImageScoreNetwork(keras.Model):
    """Base of s(x, i) for images x [B, H, W, C] in [0, 1] and level indices i [B].

    Subclasses build their body and call ``self._head(h, levels)`` on its output: conditional
    norm -> activation -> 3x3 conv to C channels, divided by sigma_i with ``scale_by_sigma``
    (the NCSNv2 parameterisation). The output is float32 under any dtype policy.
    ``head_norm`` is "instance" (conditional instance norm++, as NCSN) or "affine" (a per-level
    affine map that keeps global intensity offsets visible to the output).
    """

    def __init__(
        self,
        image_shape,
        sigmas,
        activation="elu",
        scale_by_sigma=False,
        head_norm="instance",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.sigmas = [float(s) for s in sigmas]
        self.num_levels = len(self.sigmas)
        self.activation = activation
        self.scale_by_sigma = bool(scale_by_sigma)
        self._act = keras.activations.get(activation)
        if head_norm not in ("instance", "affine"):
            raise ValueError(f"head_norm must be 'instance' or 'affine', got {head_norm!r}")
        self.head_norm = head_norm
        norm_cls = ConditionalInstanceNormPlus if head_norm == "instance" else ConditionalAffine
        self.out_norm = norm_cls(self.num_levels, dtype=self.dtype_policy, name="out_norm")
        self.end_conv = keras.layers.Conv2D(
            self.image_shape[-1], 3, padding="same", dtype=self.dtype_policy, name="end_conv"
        )

    def build(self, input_shape=None):
        # Trace once on a dummy batch: every sub-layer builds from its real input shape.
        self.call(tf.zeros((1, *self.image_shape)), tf.zeros([1], tf.int32))
        self.built = True

    def _input(self, x):
        """Images in [0, 1] -> [-1, 1] in the compute dtype."""
        return tf.cast(2.0 * x - 1.0, self.compute_dtype)

    def _head(self, h, levels):
        s = tf.cast(self.end_conv(self._act(self.out_norm(h, levels))), tf.float32)
        if self.scale_by_sigma:
            s = s / tf.gather(tf.constant(self.sigmas, tf.float32), levels)[:, None, None, None]
        return s

    def get_config(self):
        return {
            **super().get_config(),
            "image_shape": list(self.image_shape),
            "sigmas": self.sigmas,
            "activation": self.activation,
            "scale_by_sigma": self.scale_by_sigma,
            "head_norm": self.head_norm,
        }
