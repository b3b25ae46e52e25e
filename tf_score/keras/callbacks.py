"""Keras callbacks of a ``ScoreModel``'s training: ``SampleGrid`` (TensorBoard images of what
the EMA network draws) and ``QualityMetrics`` (FID and KID beside the real-vs-real floor, in
the epoch's logs, so ``EarlyStopping`` and ``ModelCheckpoint`` can watch them).

    model.fit(data, epochs=10, steps_per_epoch=1000, callbacks=[
        QualityMetrics(classifier="runs/mnist_classifier", num_samples=500, log_dir="tb"),
        SampleGrid("tb"), keras.callbacks.TensorBoard("tb")])
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from tf_score.config import ConfigError, check_count
from tf_score.families import evaluate as evaluations
from tf_score.families import score_model
from tf_score.training import loop


def _log_name(tag: str) -> str:
    """A TensorBoard tag as a Keras log name: fid/fid -> fid, fid/floor -> fid_floor."""
    group, name = tag.split("/")
    return group if name == group else f"{group}_{name}"


class SampleGrid(keras.callbacks.Callback):
    """Every ``every`` epochs, ``num_samples`` samples of the EMA network as a TensorBoard
    image in ``log_dir/samples`` at the training step: the grid (one row per class for a
    class-conditional model) or the toy's scatter plot that ``run_train.py`` writes, drawn
    with the config's sampler and seed (``score_model.sample_summaries``)."""

    def __init__(self, log_dir: str, num_samples: int = 16, every: int = 1):
        super().__init__()
        self.log_dir, self.num_samples, self.every = (
            log_dir,
            num_samples,
            check_count(every, "every", 1),
        )
        self._draw = self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        cfg = self.model.config
        if self._draw is None:
            self._draw = score_model.sample_summaries(cfg, cfg.data.data_shape, self.num_samples)
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "samples"))
        step = self.model.step
        loop.write_images(self._writer, self._draw({"score": self.model.ema_network}, step), step)


class QualityMetrics(keras.callbacks.Callback):
    """Every ``every`` epochs, FID and KID of ``num_samples`` samples of the EMA network (the
    config's sampler, seed ``config.seed``) against the training images' features, beside the
    floors of as many held-out images (``evaluate.fid_monitor``): ``fid``, ``fid_floor``,
    ``fid_ratio``, ``kid``, ``kid_floor`` in the epoch's logs, and TensorBoard scalars in
    ``log_dir/quality`` at the training step if ``log_dir`` is given. ``classifier``: the
    digit classifier's workdir (``flags/presets/mnist_classifier.cfg``); with
    ``feature_extractor="inception"`` none is needed. Everything is loaded when training
    begins, so a missing classifier fails before the first step."""

    def __init__(self, classifier: str | None = None, num_samples: int = 500, every: int = 1,
                 log_dir: str | None = None, feature_extractor: str = "classifier"):  # fmt: skip
        super().__init__()
        self.every, self.log_dir = check_count(every, "every", 1), log_dir
        self._settings = dict(classifier=classifier, fid_samples=num_samples, fid_every=1,
                              feature_extractor=feature_extractor)  # fmt: skip
        self._monitor = self._writer = None

    def on_train_begin(self, logs=None):
        cfg = self.model.config
        if not cfg.is_image:
            raise ConfigError(f"QualityMetrics measures image models, not dataset="
                              f"{cfg.data.dataset}")  # fmt: skip
        cfg = cfg.replace(evaluation=self._settings)
        try:
            self._monitor = evaluations.fid_monitor(cfg, "", cfg.data.data_shape)
        except evaluations.EvaluationError as e:
            raise ConfigError(f"QualityMetrics: {e}") from e
        if self.log_dir:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "quality"))

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        step = self.model.step
        values = self._monitor.fn({"score": self.model.ema_network}, step)
        if logs is not None:
            logs.update({_log_name(tag): float(v) for tag, v in values.items()})
        if self._writer is not None:
            with self._writer.as_default(step=step):
                for tag, value in values.items():
                    tf.summary.scalar(tag, value)
            self._writer.flush()
