"""CondRefineNetDilated: the NCSN score network (Song & Ermon 2019), in Keras.

A conditional RefineNet: four stages of conditional residual blocks (the last two keep the
resolution and use dilations 2 and 4), then four RefineNet blocks that fuse the stages from
coarse to fine; conditional instance norm++ and ELU throughout; images in [0, 1] are mapped
to [-1, 1] first. About 7.64M parameters at ngf = 64 on 28x28x1 with 10 levels.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_score.networks.base import ImageScoreNetwork, check_spatial
from tf_score.networks.layers import (
    ConditionalResidualBlock,
    CondRefineBlock,
)


@keras.saving.register_keras_serializable(package="tf_score")
class CondRefineNetDilated(ImageScoreNetwork):
    """s(x, i) for images x [B, H, W, C] in [0, 1] and level indices i [B].

    Args:
      image_shape: (H, W, C); H and W divisible by 2.
      sigmas: the noise schedule; its length is the number of levels.
      ngf: base width (64 for MNIST in NCSN, 128 for CIFAR-10 / CelebA).
      scale_by_sigma: output f(x, i) / sigma_i (NCSNv2) instead of f(x, i).
    """

    #: image height and width must be divisible by this (one stride-2 stage)
    SPATIAL_FACTOR = 2

    def __init__(
        self,
        image_shape,
        sigmas,
        ngf: int = 64,
        activation: str = "elu",
        scale_by_sigma: bool = False,
        **kwargs,
    ):
        super().__init__(image_shape, sigmas, activation, scale_by_sigma, **kwargs)
        self.ngf = int(ngf)
        check_spatial(self.image_shape, self.SPATIAL_FACTOR, "its dilated stages")
        L, n, dt = self.num_levels, self.ngf, self.dtype_policy
        block = lambda f, name, **kw: ConditionalResidualBlock(
            f, L, activation=activation, dtype=dt, name=name, **kw
        )
        self.begin_conv = keras.layers.Conv2D(n, 3, padding="same", dtype=dt, name="begin_conv")
        self.res1a, self.res1b = block(n, "res1a"), block(n, "res1b")
        self.res2a, self.res2b = block(2 * n, "res2a", resample="down"), block(2 * n, "res2b")
        self.res3a = block(2 * n, "res3a", resample="down", dilation=2)
        self.res3b = block(2 * n, "res3b", dilation=2)
        self.res4a = block(2 * n, "res4a", resample="down", dilation=4)
        self.res4b = block(2 * n, "res4b", dilation=4)
        refine = lambda k, f, name, **kw: CondRefineBlock(
            k, f, L, activation=activation, dtype=dt, name=name, **kw
        )
        self.refine1 = refine(1, 2 * n, "refine1")
        self.refine2 = refine(2, 2 * n, "refine2")
        self.refine3 = refine(2, n, "refine3")
        self.refine4 = refine(2, n, "refine4", end=True)

    def call(self, x, levels):
        levels = tf.cast(levels, tf.int32)
        h = self.begin_conv(self._input(x))
        l1 = self.res1b(self.res1a(h, levels), levels)
        l2 = self.res2b(self.res2a(l1, levels), levels)
        l3 = self.res3b(self.res3a(l2, levels), levels)
        l4 = self.res4b(self.res4a(l3, levels), levels)
        r = self.refine1([l4], levels)
        r = self.refine2([l3, r], levels)
        r = self.refine3([l2, r], levels)
        r = self.refine4([l1, r], levels)
        return self._head(r, levels)

    def get_config(self):
        return {
            **super().get_config(),
            "ngf": self.ngf,
        }
