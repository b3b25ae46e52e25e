"""The configured Keras optimizer and its learning-rate schedule (every family's)."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tf_score.config import OptimizerConfig


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """``peak`` times a linear ramp over the first ``warmup_steps`` updates, then (``cosine``)
    the half-cosine from ``peak`` at the warm-up's end to 0 at update ``num_steps``.
    ``step`` is the optimizer's iteration count (0-based), restored with the checkpoint."""

    def __init__(self, peak: float, num_steps: int, warmup_steps: int = 0, cosine: bool = True):
        self.peak, self.num_steps = float(peak), int(num_steps)
        self.warmup_steps, self.cosine = int(warmup_steps), bool(cosine)

    def __call__(self, step):
        t = tf.cast(step, tf.float32)  # updates made before this one
        w = float(max(self.warmup_steps, 1))
        ramp = tf.minimum((t + 1.0) / w, 1.0) if self.warmup_steps else tf.constant(1.0)
        if not self.cosine:
            return self.peak * ramp
        span = float(max(self.num_steps - self.warmup_steps, 1))
        frac = tf.clip_by_value((t - self.warmup_steps) / span, 0.0, 1.0)
        return self.peak * ramp * 0.5 * (1.0 + tf.cos(math.pi * frac))

    def get_config(self):
        return {"peak": self.peak, "num_steps": self.num_steps,
                "warmup_steps": self.warmup_steps, "cosine": self.cosine}  # fmt: skip


def learning_rate(opt: OptimizerConfig, num_steps: int):
    """A float for a constant rate without warm-up, else the ``WarmupCosine`` schedule."""
    if opt.lr_schedule == "constant" and not opt.lr_warmup_steps:
        return opt.learning_rate
    return WarmupCosine(
        opt.learning_rate, num_steps, opt.lr_warmup_steps, cosine=opt.lr_schedule == "cosine"
    )


def make_optimizer(opt: OptimizerConfig, num_steps: int) -> keras.optimizers.Optimizer:
    """Adam (beta_1 0.9) or RMSprop with ``opt``'s rate or schedule over ``num_steps``."""
    lr = learning_rate(opt, num_steps)
    if opt.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    return keras.optimizers.Adam(lr, beta_1=0.9)
