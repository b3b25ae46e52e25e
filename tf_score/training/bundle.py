"""What a model hands the training loop: a ``ModelBundle`` of model factories, ``Objective``s
(a per-example loss callable, its variables, an optimizer) and an input pipeline, and the
loop's settings (``TrainConfig``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf


class LossOutput(NamedTuple):
    """A loss callable's result: per-example loss [B] and, optionally, the level per example
    and named per-example metrics (written to TensorBoard as ``<objective>/<name>``; the
    objective lists their names in ``Objective.metric_names``)."""

    loss: tf.Tensor
    levels: tf.Tensor | None = None
    metrics: dict[str, tf.Tensor] | None = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings. ``batch_size`` is the global batch over all replicas."""

    num_steps: int
    batch_size: int
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    #: image summaries every this many steps (0: only at the end)
    sample_every: int = 0
    #: EMA decay of the weights; 0 makes the EMA copy equal the live weights
    ema_rate: float = 0.999
    #: ramp the decay up as min(ema_rate, (1 + t) / (10 + t)) at step t, so the average
    #: forgets the random initial weights (the undebiased 0.999 EMA still holds 13% of them
    #: after 2000 steps, enough to ruin short runs' samples)
    ema_warmup: bool = True
    #: XLA-compile each replica's loss and gradient (measure first: on CPUs it can be slower)
    jit_compile: bool = False
    #: steps run inside one compiled call (cuts Python overhead for small models)
    steps_per_loop: int = 100
    #: micro-batches per replica per step, run one after another with their gradients summed
    #: (a global batch larger than fits on the devices; R replicas x A micro-batches give the
    #: same run as 1 replica x R*A)
    grad_accum_steps: int = 1
    progress: bool = True

    def __post_init__(self):
        positive = (
            "num_steps",
            "batch_size",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "steps_per_loop",
            "grad_accum_steps",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sample_every < 0:
            raise ValueError(f"sample_every must be >= 0, got {self.sample_every}")
        if not 0.0 <= self.ema_rate < 1.0:
            raise ValueError(f"ema_rate must be in [0, 1), got {self.ema_rate}")


@dataclasses.dataclass
class Objective:
    """One optimisation target: ``loss_fn(models, batch, seed) -> LossOutput``.

    ``variables(models)`` picks the trainable variables this objective updates. Several
    objectives (e.g. the VAE's score net and autoencoder) run one after another each step.
    """

    name: str
    loss_fn: Callable[[dict, object, tf.Tensor], LossOutput]
    variables: Callable[[dict], list]
    optimizer_fn: Callable[[], keras.optimizers.Optimizer]
    grad_clip_norm: float | None = None
    #: names of the per-example metrics ``loss_fn`` returns in ``LossOutput.metrics``
    metric_names: tuple[str, ...] = ()


@dataclasses.dataclass
class ModelBundle:
    """What a model hands the loop.

    Attributes:
      model_fns: name -> factory of a built Keras model (called twice: live and EMA copy).
      objectives: the losses to minimise, in order, each step.
      dataset_fn: ``(global_batch, input_context, start_step) -> tf.data.Dataset`` of this
        input pipeline's per-replica batches from step ``start_step`` on (see
        ``data.batch_share``): for each step, one batch per local replica, in replica order,
        the pipeline's rows of global batch k. Global batch k must depend only on (seed, k)
        (and for streamed data the input pipeline), so that a resumed run replays exactly.
      num_levels: noise levels, for per-level loss summaries (0: none).
      image_summaries: ``(ema_models, step) -> {name: uint8 [N, H, W, C]}`` for TensorBoard.
      custom_summaries: ``(ema_models, step) -> None``, called at the same steps inside the
        summary writer's context, for anything else (histograms, text).
    """

    model_fns: dict[str, Callable[[], keras.Model]]
    objectives: list[Objective]
    dataset_fn: Callable[[int, tf.distribute.InputContext, int], tf.data.Dataset]
    num_levels: int = 0
    image_summaries: Callable[[dict, int], dict[str, np.ndarray]] | None = None
    custom_summaries: Callable[[dict, int], None] | None = None
