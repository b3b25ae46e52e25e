"""A conditional ResNet score network for images, sized by flags.

Encoder: per stage ``num_blocks`` conditional residual blocks at ``ngf * mult`` channels,
down-sampling (2x2 mean pool) between stages; decoder mirrors it with nearest up-sampling
and additive skips from the encoder at the same resolution. Conditional instance norm++ and
ELU as in NCSN; images in [0, 1] are mapped to [-1, 1].

``head_norm="affine"`` replaces the instance norm of the output head by a per-level affine
map, which leaves a global brightness offset visible to the output (instance norm removes it).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_score.networks.base import ImageScoreNetwork, check_spatial, stage_factor
from tf_score.networks.layers import ConditionalResidualBlock


@keras.saving.register_keras_serializable(package="tf_score")
class ConditionalResNet(ImageScoreNetwork):
    def __init__(
        self,
        image_shape,
        sigmas,
        ngf: int = 32,
        channel_mults=(1, 2, 2),
        num_blocks: int = 2,
        activation: str = "elu",
        scale_by_sigma: bool = False,
        head_norm: str = "instance",
        **kwargs,
    ):
        super().__init__(image_shape, sigmas, activation, scale_by_sigma, head_norm, **kwargs)
        self.ngf = int(ngf)
        self.channel_mults = tuple(int(m) for m in channel_mults)
        self.num_blocks = int(num_blocks)
        check_spatial(self.image_shape, stage_factor(self.channel_mults),
                      f"{len(self.channel_mults)} stages (channel_mults)")  # fmt: skip
        L, dt = self.num_levels, self.dtype_policy
        self.begin_conv = keras.layers.Conv2D(
            self.ngf, 3, padding="same", dtype=dt, name="begin_conv"
        )
        for s, mult in enumerate(self.channel_mults):
            for b in range(self.num_blocks):
                setattr(
                    self,
                    f"down_{s}_{b}",
                    ConditionalResidualBlock(
                        self.ngf * mult, L, activation=activation, dtype=dt, name=f"down_{s}_{b}"
                    ),
                )
                setattr(
                    self,
                    f"up_{s}_{b}",
                    ConditionalResidualBlock(
                        self.ngf * mult, L, activation=activation, dtype=dt, name=f"up_{s}_{b}"
                    ),
                )
            if s > 0:
                setattr(
                    self,
                    f"upconv_{s}",
                    keras.layers.Conv2D(
                        self.ngf * self.channel_mults[s - 1],
                        3,
                        padding="same",
                        dtype=dt,
                        name=f"upconv_{s}",
                    ),
                )

    def call(self, x, levels):
        levels = tf.cast(levels, tf.int32)
        h = self.begin_conv(self._input(x))
        skips = []
        n_stages = len(self.channel_mults)
        for s in range(n_stages):
            if s > 0:
                h = tf.nn.avg_pool2d(h, 2, 2, "VALID")
            for b in range(self.num_blocks):
                h = getattr(self, f"down_{s}_{b}")(h, levels)
            skips.append(h)
        for s in reversed(range(n_stages)):
            h = h + skips[s] if s < n_stages - 1 else h
            for b in range(self.num_blocks):
                h = getattr(self, f"up_{s}_{b}")(h, levels)
            if s > 0:
                # 2x nearest up-sampling by repetition: the same values as a nearest resize,
                # and its gradient compiles under XLA (ResizeNearestNeighborGrad does not).
                h = tf.repeat(tf.repeat(h, 2, axis=1), 2, axis=2)
                h = getattr(self, f"upconv_{s}")(h)
        return self._head(h, levels)

    def get_config(self):
        return {
            **super().get_config(),
            "ngf": self.ngf,
            "channel_mults": list(self.channel_mults),
            "num_blocks": self.num_blocks,
        }
