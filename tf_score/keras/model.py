"""``ScoreModel``: a score model of the library as a ``keras.Model``.

``fit()`` runs the library's step (``training.step.TrainStep``: the configured loss, the
all-reduce, the NaN guard, the update and the EMA, with the same seeds as ``run_train.py``);
``generate()`` samples the EMA network as ``api.generate`` does; ``save()`` /
``keras.models.load_model`` round-trip it; ``export()`` writes ``api.export``'s SavedModel; a
workdir of ``run_train.py`` loads into it (``from_workdir``) and back (``save_workdir``).

    model = ScoreModel(config.from_flat(dict(dataset="two_mode", network="edm_mlp",
                                             loss="edm", num_steps=2000)))
    model.fit(training_data(model.config), epochs=4, steps_per_epoch=500)
    x = model.generate(1000, sampler="heun", num_steps=18, seed=0)
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from tf_score import api
from tf_score.config import ConfigError, ExperimentConfig, check_count
from tf_score.families import score_model
from tf_score.families import workdir as workdirs
from tf_score.training import checkpoints
from tf_score.training.step import TrainStep

_SUM = tf.distribute.ReduceOp.SUM


def _experiment(config) -> ExperimentConfig:
    """``config`` (an ``ExperimentConfig`` or its dict) checked as a score model's, with the
    data fields training records filled in (``registry`` and ``workdir.prepare``)."""
    from tf_score.families import registry  # the family's own fill: the data's mean

    cfg = config if isinstance(config, ExperimentConfig) else ExperimentConfig.from_dict(config)
    if cfg.network.model != "score":
        raise ConfigError(f"ScoreModel trains model=score, not model={cfg.network.model}")
    api.check(cfg)
    if cfg.data.data_shape is None:
        if not cfg.data.is_toy:
            raise ConfigError(f"config: data_shape of dataset={cfg.data.dataset} is not "
                              "recorded; give it (e.g. 28,28,1) or use api.train")  # fmt: skip
        cfg = cfg.replace(data={"data_shape": (2,)})
    return registry.with_data_mean(cfg)


def training_data(config, start_step: int = 0) -> tf.data.Dataset:
    """The batches ``run_train.py`` trains ``config`` on, from global batch ``start_step``
    on, as one ``tf.data.Dataset`` of global batches for ``fit()``: a toy's fresh draws (x,
    or (x, labels) for a class-conditional model), dequantised images in [0, 1]."""
    cfg = _experiment(config)
    bundle, _ = score_model.bundle(cfg)
    return bundle.dataset_fn(cfg.train.batch_size, tf.distribute.InputContext(), start_step)


@keras.saving.register_keras_serializable("tf_score")
class ScoreModel(keras.Model):
    """A score model of ``config`` (``ExperimentConfig`` or its dict; model=score) whose
    ``network``, ``ema_network`` and the post-hoc EMA copies ``posthoc_networks`` are the
    library's (``training.step.build_models``), built and compiled with the config's optimizer
    when made (under the ``tf.distribute`` strategy in scope). Call it as the EMA denoiser:
    ``model((x, sigma))`` or ``model((x, sigma, labels))`` is D(x; sigma)."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        cfg = _experiment(config)
        workdirs.set_precision(cfg.network.precision)
        self.config = cfg
        # the library's step counter (seeds and EMA warm-up), saved with the weights
        self.step_counter = self.add_weight(shape=(), dtype="int64", initializer="zeros",
                                            trainable=False, name="step")  # fmt: skip
        bundle = score_model.model_bundle(cfg, cfg.data.data_shape)
        self._trainer = TrainStep(bundle, cfg.train, tf.distribute.get_strategy(), cfg.seed,
                                  step_var=self.step_counter.value)  # fmt: skip
        self.network = self._trainer.models["score"]
        self.ema_network = self._trainer.ema_models["score"]
        self.posthoc_networks = [p["score"] for p in self._trainer.profiles]
        self._trackers = {name: keras.metrics.Mean(name=name)
                          for name in ("loss", "grad_norm", "ema_loss")}  # fmt: skip
        self._trackers["nonfinite_steps"] = keras.metrics.Sum(name="nonfinite_steps")
        self._held_out_batches = keras.metrics.Sum(name="held_out_batches")
        self._run = None
        self.built = True
        self.compile()

    # --- Keras: compile, the steps, the metrics ---------------------------------------------

    def compile(self, optimizer=None, loss=None, metrics=None, **kwargs):
        """Keras' compile with the config's optimizer and loss (its ``optimizer`` and
        ``loss`` sections): ``optimizer`` and ``loss`` must be None. The library compiles
        its own step (``train.jit``); Keras' ``jit_compile`` is off."""
        whose = {
            "optimizer": "the config's optimizer section",
            "loss": "the config's loss section",
            "metrics": "the model's own (loss, grad_norm, nonfinite_steps)",
        }
        for name, value in (("optimizer", optimizer), ("loss", loss), ("metrics", metrics)):
            if value is not None:
                raise ValueError(f"ScoreModel.compile({name}=...): the {name} is {whose[name]};"
                                 " give compile() none (change the config instead)")  # fmt: skip
        kwargs["jit_compile"] = False  # the library's XLA is config.train.jit
        super().compile(optimizer=self._trainer.optimizers["score"], **kwargs)

    def fit(self, x=None, y=None, **kwargs):
        """Keras' fit; a ``tf.data.Dataset`` is taken in its own order (``training_data`` is
        the order ``run_train.py`` trains in), so ``shuffle`` defaults to False for one."""
        if isinstance(x, tf.data.Dataset):
            kwargs.setdefault("shuffle", False)
        return super().fit(x, y, **kwargs)

    def get_compile_config(self):
        return {}  # everything compile() takes is the config's

    def compile_from_config(self, config):
        self.compile()

    @property
    def metrics(self):
        return [*self._trackers.values(), self._held_out_batches]

    def _batch(self, data):
        """A dataset element as the loss takes it: x, or (x, int32 labels) for a
        class-conditional model; every replica's share of one global batch."""
        conditional = self.config.data.num_classes > 0
        parts = tuple(data) if isinstance(data, tuple | list) else (data,)
        if conditional and len(parts) < 2:
            raise ValueError("fit(): a class-conditional model trains on (x, labels) batches")
        x = tf.convert_to_tensor(parts[0])
        if not x.dtype.is_floating:
            raise ValueError(f"fit(): x is {x.dtype.name}; give data units in floating point "
                             "(images in [0, 1], as training_data gives)")  # fmt: skip
        x = tf.cast(x, tf.float32)
        want = self._trainer.global_batch // self._trainer.replicas
        if x.shape[0] is not None and x.shape[0] != want:
            raise ValueError(
                f"fit(): batches of {x.shape[0] * self._trainer.replicas} rows; this model "
                f"trains on batch_size={self._trainer.global_batch} (config train section): "
                "batch the data set by it, with drop_remainder=True"
            )
        if conditional:
            return x, tf.cast(tf.reshape(parts[1], [-1]), tf.int32)
        return x

    def _step_across_replicas(self, strategy, batch):
        stats, bad = self._trainer.next_step(batch)
        return stats[0][0], stats[0][3] / self._trainer.replicas, bad

    def train_step(self, data):
        """One step of the library (``TrainStep.one_step``, taken across replicas): a step with
        a non-finite loss or gradient changes nothing and counts in ``nonfinite_steps``."""
        batch = self._batch(data)
        ctx = tf.distribute.get_replica_context()
        loss, grad_norm, bad = ctx.merge_call(self._step_across_replicas, args=(batch,))
        self._trackers["loss"].update_state(loss)
        self._trackers["grad_norm"].update_state(grad_norm)
        self._trackers["nonfinite_steps"].update_state(bad)
        return {k: self._trackers[k].result() for k in ("loss", "grad_norm", "nonfinite_steps")}

    def test_step(self, data):
        """The held-out loss of the live and the EMA weights (``TrainStep.loss``), batch k of
        an evaluation seeded as training step k + 1."""
        batch = self._batch(data)
        ctx = tf.distribute.get_replica_context()
        self._held_out_batches.update_state(1.0)
        step = tf.cast(self._held_out_batches.total, tf.int64)
        for name, ema in (("loss", False), ("ema_loss", True)):
            share = self._trainer.replica_loss(batch, step, ema=ema)[0]
            self._trackers[name].update_state(ctx.all_reduce(_SUM, share))
        return {k: self._trackers[k].result() for k in ("loss", "ema_loss")}

    def call(self, inputs, training=False):
        """D(x; sigma) of the EMA network: ``inputs`` is (x, sigma) or (x, sigma, labels)."""
        x, sigma, *labels = inputs
        model = self.run().model
        if labels:
            model = model.conditioned(tf.cast(labels[0], tf.int32))
        return model.denoise(x, sigma)

    # --- the library's views -----------------------------------------------------------------

    @property
    def step(self) -> int:
        """The last training step taken (the library's counter)."""
        return int(self.step_counter.numpy())

    def run(self) -> api.Run:
        """The EMA network as a loaded ``api.Run`` (the same object each call, so the solvers
        are traced once), for any call of ``api``."""
        if self._run is None:
            self._run = api.Run("", self.config, {"score": self.ema_network}, 0)
        self._run.step = self.step
        return self._run

    def sigmas(self, num_steps: int | None = None) -> np.ndarray:
        """The sampling grid: the config's, or for a continuous network (which answers the
        family's "grid" request) the same schedule on ``num_steps`` levels."""
        if num_steps is None:
            return self.config.noise.sigmas()
        api.of(self.config).refuse(self.config, "grid", "num_steps")
        num_steps = check_count(num_steps, "num_steps", 2)
        return self.config.replace(noise={"num_levels": num_steps}).noise.sigmas()

    def generate(self, num_samples: int, sampler: str | None = None,
                 num_steps: int | None = None, guidance: float = 1.0, labels=None,
                 seed: int = 0, batch_size: int = 0, **options) -> np.ndarray:  # fmt: skip
        """``num_samples`` samples of the EMA network: ``api.generate`` of ``run()`` with
        ``sampler`` (default: the config's) and its ``options`` on ``sigmas(num_steps)``,
        conditioned on ``labels`` and guided by ``guidance`` (classifier-free)."""
        out = api.generate(self.run(), num_samples, seed=seed, sampler=sampler,
                           sigmas=self.sigmas(num_steps), batch_size=batch_size,
                           labels=labels, guidance=guidance, **options)  # fmt: skip
        return out.samples

    def export(self, filepath, format="tf_saved_model", verbose=None, samplers=None,
               max_samples: int | None = None, max_evaluations: int | None = None):  # fmt: skip
        """The SavedModel ``api.export`` writes (sampling signatures for TF Serving), into
        ``filepath``; ``samplers``: the solvers served (default: the config's)."""
        if format != "tf_saved_model":
            raise ValueError(f"export(format={format!r}): ScoreModel exports tf_saved_model")
        ex = self.config.export
        api.check_writable(os.path.dirname(os.path.abspath(filepath)), "filepath")
        return api.of(self.config).export(
            self.run(), str(filepath), samplers,
            ex.export_max_samples if max_samples is None else max_samples,
            ex.export_max_evaluations if max_evaluations is None else max_evaluations,
        )  # fmt: skip

    # --- workdirs, presets and Keras' config ------------------------------------------------

    def _checkpoint(self) -> checkpoints.Restorable:
        t = self._trainer
        return checkpoints.make_checkpoint(
            t.models, t.ema_models, t.optimizers, t.step_var,
            settings=score_model.checkpoint_settings(self.config), profiles=t.profiles,
        )  # fmt: skip

    @classmethod
    def from_workdir(cls, workdir: str, checkpoint: str | None = None, **kwargs) -> ScoreModel:
        """A model with the whole training state of ``workdir``'s newest good checkpoint (or
        ``checkpoint``): weights, EMA, optimizer and step, to sample or train on."""
        model = cls(api.read_config(workdir), **kwargs)
        try:
            found = checkpoints.newest_good(os.path.join(workdir, "checkpoints"), checkpoint)
            checkpoints.restore(model._checkpoint(), found)
        except (FileNotFoundError, checkpoints.CheckpointError) as e:
            raise api.RunError(str(e)) from e
        return model

    def save_workdir(self, workdir: str) -> str:
        """Write the training state as a checkpoint of ``workdir`` (and its config.json), which
        ``api.load``, ``run_sample.py`` and ``run_train.py`` (resuming) read. Returns its path."""
        api.check_writable(workdir, "workdir")
        workdirs.write_config(workdir, self.config)
        manager = tf.train.CheckpointManager(
            self._checkpoint().ckpt, os.path.join(workdir, "checkpoints"),
            max_to_keep=self.config.train.keep_checkpoints,
        )  # fmt: skip
        return manager.save(checkpoint_number=self.step)

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> ScoreModel:
        """A trained model shipped with tf_score (``api.pretrained_names()``) with its EMA
        weights, checksum verified (``api.load_pretrained``); the live weights start there."""
        run = api.load_pretrained(name)
        model = cls(run.config, **kwargs)
        for net in (model.network, model.ema_network, *model.posthoc_networks):
            for w, value in zip(net.weights, run.models["score"].weights, strict=True):
                w.assign(value)
        model.step_counter.assign(run.step)
        return model

    def get_config(self):
        return {"name": self.name, "config": self.config.to_dict()}
