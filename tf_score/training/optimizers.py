"""The configured Keras optimizer and its learning-rate schedule (every family's).

``FusedAdam`` is Keras' Adam with one fused kernel per variable (TensorFlow's
``ResourceApplyAdam``, which has CPU, GPU and XLA kernels) instead of Keras' dozen ops per
variable: the same update, the same slot variables and checkpoints.
"""

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


@keras.saving.register_keras_serializable("tf_score")
class FusedAdam(keras.optimizers.Adam):
    """Adam whose update is ``ResourceApplyAdam``, one kernel per variable, with the bias
    corrections computed once per step instead of once per variable.

    The kernel computes Keras' formula: m += (g - m)(1 - beta_1), v += (g^2 - v)(1 - beta_2),
    w -= lr sqrt(1 - beta_2^t) / (1 - beta_1^t) m / (sqrt(v) + epsilon). AMSGrad and sparse
    gradients take Keras' own path.
    """

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        if self.amsgrad:
            return super()._distributed_tf_update_step(distribution, grads_and_vars, learning_rate)
        t = tf.cast(self.iterations + 1, tf.float32)
        scalars = {  # float32 once per step; cast per dtype below
            "lr": tf.cast(learning_rate, tf.float32),
            "beta1_power": tf.pow(tf.constant(self.beta_1, tf.float32), t),
            "beta2_power": tf.pow(tf.constant(self.beta_2, tf.float32), t),
        }
        casts = {}

        def update(var, grad):
            if isinstance(grad, tf.IndexedSlices):
                return self.update_step(grad, var, learning_rate)
            if var.dtype not in casts:
                casts[var.dtype] = {k: tf.cast(v, var.dtype) for k, v in scalars.items()}
            c = casts[var.dtype]
            i = self._get_variable_index(var)
            return tf.raw_ops.ResourceApplyAdam(
                var=var.handle, m=self._momentums[i].value.handle,
                v=self._velocities[i].value.handle,
                beta1_power=c["beta1_power"], beta2_power=c["beta2_power"], lr=c["lr"],
                beta1=tf.constant(self.beta_1, var.dtype),
                beta2=tf.constant(self.beta_2, var.dtype),
                epsilon=tf.constant(self.epsilon, var.dtype),
                grad=tf.cast(grad, var.dtype),
            )  # fmt: skip

        for grad, var in grads_and_vars:
            distribution.extended.update(var, update, args=(grad,), group=False)


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
    return FusedAdam(lr, beta_1=0.9)
