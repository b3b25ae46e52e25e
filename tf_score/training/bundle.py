"""What a model hands the training loop: a ``ModelBundle`` of model factories, ``Objective``s
(a per-example loss callable, its variables, an optimizer) and an input pipeline (the loop's
settings are the experiment's ``train`` section, ``config.TrainConfig``)."""

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


@dataclasses.dataclass(frozen=True)
class Monitor:
    """A measurement of the EMA models every ``every`` steps (and at the end), written as
    TensorBoard scalars: ``fn(ema_models, step) -> {tag: float}`` (e.g. FID during training)."""

    every: int
    fn: Callable[[dict, int], dict[str, float]]


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
        None: the caller feeds the batches (``training.loop`` needs one).
      num_levels: noise levels, for per-level loss summaries (0: none).
      image_summaries: ``(ema_models, step) -> {name: uint8 [N, H, W, C]}`` for TensorBoard.
      custom_summaries: ``(ema_models, step) -> None``, called at the same steps inside the
        summary writer's context, for anything else (histograms, text).
      monitors: ``Monitor`` s, each run at its own steps (chief only).
      checkpoint_settings: {name: value} of settings the weights only fit (a score model's
        noise grid): recorded in every checkpoint, and a resume with other values is refused.
    """

    model_fns: dict[str, Callable[[], keras.Model]]
    objectives: list[Objective]
    dataset_fn: Callable[[int, tf.distribute.InputContext, int], tf.data.Dataset] | None
    num_levels: int = 0
    image_summaries: Callable[[dict, int], dict[str, np.ndarray]] | None = None
    custom_summaries: Callable[[dict, int], None] | None = None
    monitors: tuple[Monitor, ...] = ()
    checkpoint_settings: dict | None = None
