"""The Python API of a run: train into a workdir, load it, generate, inpaint, export.

    from tf_score import config

    from tf_score import api

    cfg = config.from_flat(dict(dataset="two_mode", num_steps=500, sigma_max=20.0))
    api.train(cfg, "/tmp/toy")                       # writes config.json, resumes if present
    run = api.load("/tmp/toy")                       # config, EMA models, step, score
    out = api.generate(run, 1000, seed=0, sampler="heun")
    api.export(run, "/tmp/export")                   # SavedModel for TF Serving

A workdir describes itself: ``config.json`` (the ``ExperimentConfig`` with the data shape)
and ``checkpoints/``; whoever trained it (this API or ``run_train.py``), anything can load it.
Model families (score networks, VAEs, the classifier) are chosen in one registry, ``FAMILIES``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from tf_score import atomic, data, sampling
from tf_score import config as config_lib
from tf_score.config import ConfigError, ExperimentConfig, SamplerConfig
from tf_score.export import savedmodel as export_lib
from tf_score.families import classifier, score_model, vae
from tf_score.families.run import (  # noqa: F401  (Generated, NonFiniteSamplesError: the API's)
    Generated,
    NonFiniteSamplesError,
    Run,
    RunError,
    generate_from,
    sampler_config,
)
from tf_score.training import checkpoints, distribute, loop, workdir_lock
from tf_score.training.bundle import TrainConfig


def check_writable(directory: str, flag: str = "--workdir") -> None:
    """RunError unless files can be created in ``directory`` (made if missing): checked by
    writing one, since permission bits do not tell (root, ACLs, read-only mounts)."""
    import tempfile

    import tensorflow as tf

    try:
        tf.io.gfile.makedirs(directory)
        if "://" in directory:  # object stores: writability shows only on the first write
            return
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except (OSError, tf.errors.OpError) as e:
        why = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
        raise RunError(
            f"cannot write to {directory} ({why}): pass {flag}=DIR to write the results "
            "somewhere you can"
        ) from e


class Family(NamedTuple):
    """A model family: how to make its training bundle and rebuild its models from a config
    (or, for a family trained outside the loop, how to train and load it)."""

    name: str
    #: cfg -> (ModelBundle, data shape); loads the data
    bundle: Callable | None
    #: cfg (with data_shape) -> {name: factory of a built Keras model}
    model_fns: Callable | None
    #: (cfg, workdir, progress) -> result, replacing the training loop
    train: Callable | None = None
    #: workdir -> {name: model}, replacing the checkpoint restore
    load: Callable | None = None


def _score_bundle(cfg):

    return score_model.bundle(cfg)


def _score_model_fns(cfg):

    return {"score": score_model.network_fn(cfg)}


def _vae_bundle(cfg):

    return vae.bundle(cfg)


def _vae_model_fns(cfg):

    return vae.model_fns(vae.vae_config(cfg))


def _load_classifier(workdir):

    return {"classifier": classifier.load_classifier(workdir)}


FAMILIES: dict[str, Family] = {
    "score": Family("score", _score_bundle, _score_model_fns),
    "vae": Family("vae", _vae_bundle, _vae_model_fns),
    # a supervised Keras fit, saved as a .keras file
    "classifier": Family(
        "classifier", None, None, train=lambda *a: _train_classifier(*a), load=_load_classifier
    ),
}


# --- config.json ------------------------------------------------------------------------------


def config_path(workdir: str) -> str:
    return os.path.join(workdir, config_lib.CONFIG_FILE)


def read_config(workdir: str, data_dir: str | None = None) -> ExperimentConfig:
    """The workdir's config (``data_dir``: where the data live now, if they moved)."""
    import tensorflow as tf

    path = config_path(workdir)
    if not tf.io.gfile.exists(path):
        raise RunError(f"{workdir} has no {config_lib.CONFIG_FILE}: train there first")
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    try:
        cfg = ExperimentConfig.from_dict(json.loads(text))
    except (json.JSONDecodeError, ConfigError, TypeError, AttributeError) as e:
        raise RunError(
            f"{path} cannot be read as a tf_score config ({e}); it may have been cut short or "
            "edited. To recover: delete it and run run_train.py with the run's original flags "
            "(the checkpoint is checked against them before config.json is written again)"
        ) from e
    if data_dir:
        cfg = cfg.replace(data={"data_dir": data_dir})
    return cfg


def check_resume(workdir: str, cfg: ExperimentConfig) -> None:
    """Refuse to resume a run with other model settings (the data may have moved). A
    workdir with no checkpoint yet (e.g. a run that stopped at step 2) takes new settings;
    one with checkpoints but no ``config.json`` is checked by the restore itself."""
    import tensorflow as tf

    if tf.io.gfile.exists(workdir) and not tf.io.gfile.isdir(workdir):
        raise RunError(f"workdir {workdir} is a file, not a directory")
    if not tf.io.gfile.exists(config_path(workdir)):
        return
    if not checkpoints.candidates(os.path.join(workdir, "checkpoints")):
        return
    old = read_config(workdir)
    changed = old.model_differences(cfg)
    if changed:
        raise RunError(
            f"{workdir} holds a run with different settings for: "
            + ", ".join(f"{k} (was {a!r}, now {b!r})" for k, a, b in changed)
            + ". Use a new workdir or the original settings."
        )


def _write_config(workdir: str, cfg: ExperimentConfig) -> None:
    import tensorflow as tf

    tf.io.gfile.makedirs(workdir)
    atomic.write_json(config_path(workdir), cfg.to_dict())


# --- train --------------------------------------------------------------------------------------


def loop_config(cfg: ExperimentConfig, progress: bool = True):
    """The training loop's ``TrainConfig`` of an experiment."""

    t = cfg.train
    return TrainConfig(
        num_steps=t.num_steps,
        batch_size=t.batch_size,
        seed=cfg.seed,
        log_every=t.log_every,
        checkpoint_every=t.checkpoint_every,
        keep_checkpoints=t.keep_checkpoints,
        sample_every=t.sample_every,
        ema_rate=t.ema_rate,
        ema_warmup=t.ema_warmup,
        jit_compile=t.jit,
        steps_per_loop=t.steps_per_loop,
        grad_accum_steps=t.grad_accum_steps,
        progress=progress,
    )


def native_bfloat16() -> bool | None:
    """Whether bfloat16 math runs natively here: an accelerator, or a CPU with AVX512_BF16
    or AMX (None: the CPU's flags cannot be read). Elsewhere TensorFlow emulates it, and
    convolutions run several times slower than in float32."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"):
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((ln for ln in f if ln.startswith("flags")), "").split())
    except OSError:
        return None
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def _set_precision(precision: str) -> None:
    import keras
    from absl import logging

    if "bfloat16" in precision and native_bfloat16() is False:
        logging.warning(
            "precision=%s on a CPU without AVX512_BF16 or AMX: bfloat16 is emulated and "
            "slower than float32 here; use --precision=float32",
            precision,
        )
    keras.mixed_precision.set_global_policy(precision)


def prepare(cfg: ExperimentConfig, workdir: str, strategy=None):
    """Everything ``train`` checks and loads before it writes: the resume check, the data and
    the bundle. Returns (bundle, config with its data shape and, for score models, mean)."""

    check_resume(workdir, cfg)
    replicas = (strategy.num_replicas_in_sync if strategy else 1) * cfg.train.grad_accum_steps
    if cfg.train.batch_size % replicas:
        raise ConfigError(
            f"batch_size ({cfg.train.batch_size}) must be divisible by the "
            f"{replicas // cfg.train.grad_accum_steps} replica(s) x grad_accum_steps "
            f"({cfg.train.grad_accum_steps})"
        )
    _set_precision(cfg.network.precision)
    try:
        if cfg.network.model == "score" and cfg.data.data_mean is None:
            cfg = cfg.replace(data={"data_mean": score_model.data_mean(cfg)})
        bundle, shape = FAMILIES[cfg.network.model].bundle(cfg)
    except ValueError as e:  # bad images, a shape the network cannot take, ...
        raise RunError(str(e)) from e
    return bundle, cfg.replace(data={"data_shape": tuple(int(d) for d in shape)})


def train(cfg: ExperimentConfig, workdir: str, strategy=None, progress: bool = True):
    """Train (or resume) ``cfg`` in ``workdir``: checks, loads the data, writes
    ``config.json`` (chief only), runs the training loop. Returns ``train.TrainResult``
    (``classifier.ClassifierResult`` for the classifier)."""

    family = FAMILIES[cfg.network.model]
    if family.train is not None and strategy is not None and strategy.num_replicas_in_sync > 1:
        raise ConfigError(f"model={family.name} trains on one device: use no strategy")
    check_resume(workdir, cfg)
    if family.train is not None:
        return family.train(cfg, workdir, progress)
    return _train_score_or_vae(cfg, workdir, strategy, progress)


@contextlib.contextmanager
def _workdir_held(workdir: str, chief: bool):
    """The workdir's lock for this run (chief only), taken once the data are loaded (a run
    that fails before writes nothing); an unwritable workdir is a RunError."""

    try:
        with workdir_lock.held(workdir, take=chief):
            yield
    except workdir_lock.WorkdirLockedError as e:
        raise RunError(str(e)) from e
    except PermissionError as e:
        raise RunError(f"cannot write to workdir {workdir}: {e.strerror} ({e.filename})") from e


def _train_score_or_vae(cfg: ExperimentConfig, workdir: str, strategy, progress: bool):

    bundle, cfg = prepare(cfg, workdir, strategy)

    def settings_verified(start_step: int) -> None:
        # after the restore matched these settings' variables, never before
        if distribute.is_chief(strategy):
            _write_config(workdir, cfg)

    with _workdir_held(workdir, distribute.is_chief(strategy)):
        return loop.train(
            bundle, loop_config(cfg, progress), workdir, strategy, on_restored=settings_verified
        )


def _train_classifier(cfg: ExperimentConfig, workdir: str, progress: bool):
    """The feature extractor of classifier FID/KID: a supervised Keras fit on one device."""

    check_resume(workdir, cfg)
    x_train, y_train = data.load_tfds_labelled(cfg.data.dataset, "train", cfg.data.data_dir)
    x_test, y_test = data.load_tfds_labelled(cfg.data.dataset, "test", cfg.data.data_dir)
    with _workdir_held(workdir, chief=True):
        _write_config(workdir, cfg.replace(data={"data_shape": tuple(x_train.shape[1:])}))
        return classifier.train_classifier(
            (x_train, y_train),
            (x_test, y_test),
            workdir,
            num_steps=cfg.train.num_steps,
            batch_size=cfg.train.batch_size,
            learning_rate=cfg.optimizer.learning_rate,
            seed=cfg.seed,
            verbose=2 if progress else 0,
        )


# --- load ---------------------------------------------------------------------------------------


def load(workdir: str, checkpoint: str | None = None, data_dir: str | None = None) -> Run:
    """Load a trained workdir of any family: its config and the EMA weights of the latest
    checkpoint (or ``checkpoint``, a prefix)."""

    cfg = read_config(workdir, data_dir)
    family = FAMILIES[cfg.network.model]
    if family.load is not None:
        return Run(workdir, cfg, family.load(workdir), 0)
    _set_precision(cfg.network.precision)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    try:
        path = checkpoints.pick_checkpoint(ckpt_dir, checkpoint)
        models, step = checkpoints.restore_ema_models(family.model_fns(cfg), path)
    except (FileNotFoundError, checkpoints.CheckpointError) as e:
        raise RunError(str(e)) from e
    return Run(workdir, cfg, models, step, path)


# --- generate -----------------------------------------------------------------------------------


def generate(
    run: Run, num_samples: int, seed: int = 0, sampler: str | None = None, sigmas=None,
    batch_size: int = 0, jit_compile: bool = False, snapshots: bool = False,
    progress: bool = False, **options,
) -> Generated:  # fmt: skip
    """Samples from a loaded score run with any registered sampler (default: the run's own,
    with its options; ``options`` override them, e.g. ``n_steps_each=10``) on the run's grid
    (or ``sigmas``). Images are in [0, 1] before clipping; the same seed gives the samples of
    ``run_sample.py``, the exported ``serving_default`` (served seed (seed, 0), one batch) and
    TensorBoard. ``snapshots``: the first batch after every solver step (each level of
    annealed Langevin), through the solver callback."""

    cfg = sampler_config(run.config.sampler, sampler, **options)
    frames = []
    callback = sampling.py_callback(lambda i, s, x: frames.append(x)) if snapshots else None
    out = generate_from(
        run.model, run.sigmas if sigmas is None else sigmas, run.space, num_samples, seed,
        cfg, batch_size=batch_size, jit_compile=jit_compile, callback=callback,
        progress=progress,
    )  # fmt: skip
    if not snapshots:
        return out
    x0 = _start_of_first_batch(run, cfg, min(batch_size or num_samples, num_samples), seed)
    return out._replace(snapshots=np.stack([x0, *frames]))


def _start_of_first_batch(run: Run, cfg: SamplerConfig, n: int, seed: int) -> np.ndarray:
    """The first batch's start x0, as the solver drew it (the snapshots' first frame)."""
    import tensorflow as tf

    init_seed, _ = sampling.batch_seeds(tf.constant([seed, 0], tf.int32))
    start = sampling.registry.STARTS[sampling.get(cfg.sampler).start]
    return start([n, *run.data_shape], init_seed, tf.constant(run.sigmas), run.space).numpy()


def inpaint(run: Run, x_obs, mask, seed: int = 0, sampler: str | None = None,
            jit_compile: bool = False, **options):  # fmt: skip
    """Fill ``mask == 0`` of images ``x_obs`` in [0, 1] with any registered sampler (default:
    the run's, with its options unless overridden). Returns ``SamplerOutput``."""
    import tensorflow as tf

    cfg = sampler_config(run.config.sampler, sampler, **options)
    return sampling.inpaint(
        cfg.sampler, run.model, x_obs, mask, run.sigmas, tf.constant([seed, 1], tf.int32),
        run.space, jit_compile=jit_compile, **cfg.options(),
    )  # fmt: skip


# --- export -------------------------------------------------------------------------------------


def export(
    run: Run,
    export_dir: str,
    model_name: str | None = None,
    samplers: tuple[str, ...] | None = None,
    max_samples: int = 256,
    max_evaluations: int = 1_000_000,
) -> str:
    """Write the run's EMA models as a SavedModel for TF Serving to
    ``export_dir/<model_name>/<step>/`` (``model_name`` defaults to the workdir's name);
    ``serving_default`` samples with the run's sampler and its options, ``sample_<name>``
    serves each of ``samplers`` (default: the run's) with its options as inputs; requests are
    capped (``export.savedmodel.export_score_model``). Returns the path."""
    import re

    name = model_name or os.path.basename(os.path.normpath(run.workdir))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name) or ".." in name:
        raise RunError(
            f"model name {name!r} is not a TF Serving model name (letters, digits, '_', '.', "
            "'-'; no path parts): give one with --export_model_name"
        )
    path = export_lib.version_dir(export_dir, name, max(int(run.step), 1))
    if run.family == "vae":
        return vae.export_vae(run.models, vae.vae_config(run.config), path, max_samples)
    if run.family != "score":
        raise RunError(f"a {run.family} run has no export; export score models or VAEs")
    return export_lib.export_score_model(
        run.models["score"], run.model, run.sigmas, run.space, path, sampler=run.config.sampler,
        samplers=tuple(samplers or (run.config.sampler.sampler,)), max_samples=max_samples,
        max_evaluations=max_evaluations,
    )  # fmt: skip
