"""A workdir: its config.json, the checks before a run trains or loads there, the lock, and
the training and restoring every checkpointed family shares (``registry``'s entries use them).

A workdir describes itself: ``config.json`` (the ``ExperimentConfig`` with the data's shape,
and mean for score models) and ``checkpoints/``; whoever trained it (the API or
``run_train.py``), anything can load it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable

from tf_score import atomic, data
from tf_score import config as config_lib
from tf_score.config import ExperimentConfig
from tf_score.families import classifier, score_model
from tf_score.families import evaluate as evaluations
from tf_score.families.run import Run, RunError
from tf_score.training import checkpoints, distribute, loop, posthoc_ema, workdir_lock


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


# --- config.json ------------------------------------------------------------------------------


def config_path(workdir: str) -> str:
    return os.path.join(workdir, config_lib.CONFIG_FILE)


def read_config(workdir: str, data_dir: str | None = None) -> ExperimentConfig:
    """The workdir's config (``data_dir``: where the data live now, if they moved)."""
    import tensorflow as tf

    path = config_path(workdir)
    if not tf.io.gfile.exists(path):
        raise RunError(f"{workdir} has no {config_lib.CONFIG_FILE}: train there first")
    try:
        with tf.io.gfile.GFile(path) as f:
            text = f.read()  # bytes that are not UTF-8: a UnicodeDecodeError, a ValueError
        cfg = ExperimentConfig.from_dict(json.loads(text))
    except (ValueError, TypeError, AttributeError) as e:  # JSON, ConfigError, int('x'), ...
        raise RunError(
            f"{path} cannot be read as a tf_score config ({e}); it may have been cut short or "
            "edited. To recover: delete it and run run_train.py with the run's original flags "
            "(the checkpoint is checked against them before config.json is written again)"
        ) from e
    if data_dir:
        cfg = cfg.replace(data={"data_dir": data_dir})
    return cfg


def check_resume(workdir: str, cfg: ExperimentConfig) -> ExperimentConfig | None:
    """Refuse to resume a run with other model settings (the data may have moved). A
    workdir with no checkpoint yet (e.g. a run that stopped at step 2) takes new settings;
    one with checkpoints but no ``config.json`` is checked by the restore itself. Returns the
    config of the run resumed (None: a new run)."""
    import tensorflow as tf

    if tf.io.gfile.exists(workdir) and not tf.io.gfile.isdir(workdir):
        raise RunError(f"workdir {workdir} is a file, not a directory")
    if not tf.io.gfile.exists(config_path(workdir)):
        return None
    if not checkpoints.candidates(os.path.join(workdir, "checkpoints")):
        return None
    old = read_config(workdir)
    changed = old.model_differences(cfg)
    if changed:
        raise RunError(
            f"{workdir} holds a run with different settings for: "
            + ", ".join(f"{k} (was {a!r}, now {b!r})" for k, a, b in changed)
            + ". Use a new workdir or the original settings."
        )
    return old


def write_config(workdir: str, cfg: ExperimentConfig) -> None:
    import tensorflow as tf

    tf.io.gfile.makedirs(workdir)
    atomic.write_json(config_path(workdir), cfg.to_dict())


# --- train --------------------------------------------------------------------------------------


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


def set_precision(precision: str) -> None:
    import keras
    from absl import logging

    if "bfloat16" in precision and native_bfloat16() is False:
        logging.warning(
            "precision=%s on a CPU without AVX512_BF16 or AMX: bfloat16 is emulated and "
            "slower than float32 here; use --precision=float32",
            precision,
        )
    keras.mixed_precision.set_global_policy(precision)


def prepare(cfg: ExperimentConfig, workdir: str, strategy, bundle_fn: Callable,
            fill: Callable | None = None):  # fmt: skip
    """Everything a checkpointed run checks and loads before it writes: the resume check, the
    batch split, the data and the bundle (``bundle_fn(cfg) -> (bundle, data shape)``; ``fill``:
    cfg -> cfg with the data fields the family records, e.g. the data's mean). Returns
    (bundle, config with its data shape)."""
    resumed = check_resume(workdir, cfg)
    replicas = strategy.num_replicas_in_sync if strategy else 1
    config_lib.check_batch_split(cfg.train.batch_size, replicas, cfg.train.grad_accum_steps)
    set_precision(cfg.network.precision)
    try:
        cfg = fill(cfg) if fill else cfg
        bundle, shape = bundle_fn(cfg)
    except ValueError as e:  # bad images, a shape the network cannot take, ...
        raise RunError(str(e)) from e
    shape = tuple(int(d) for d in shape)
    trained = resumed.data.data_shape if resumed else None
    if trained is not None and tuple(trained) != shape:
        raise RunError(
            f"{workdir} was trained on data of shape {tuple(trained)}; the data given now have "
            f"shape {shape}. Use the run's data (dataset, data_path, image_size) or a new workdir"
        )
    return bundle, cfg.replace(data={"data_shape": shape})


def _fid_monitor(cfg: ExperimentConfig, workdir: str, progress: bool):
    """``evaluate.fid_monitor`` (the config allows it for image score models only), every
    error (no classifier, too many samples) before training."""
    try:
        return evaluations.fid_monitor(cfg, workdir, cfg.data.data_shape, progress)
    except evaluations.EvaluationError as e:
        raise RunError(f"fid_every: {e}") from e


@contextlib.contextmanager
def held(workdir: str, chief: bool):
    """The workdir's lock for this run (chief only), taken once the data are loaded (a run
    that fails before writes nothing); an unwritable workdir is a RunError."""
    try:
        with workdir_lock.held(workdir, take=chief):
            yield
    except (workdir_lock.WorkdirLockedError, workdir_lock.WorkdirUnwritableError) as e:
        raise RunError(str(e)) from e


def train_in_loop(cfg: ExperimentConfig, workdir: str, strategy, progress: bool,
                  restart_from_scratch: bool, bundle_fn: Callable,
                  fill: Callable | None = None):  # fmt: skip
    """Train (or resume) a checkpointed family in the one loop (``training.loop``):
    ``prepare``, then config.json written once the restore matched its settings (chief
    only), under the workdir's lock. Returns ``loop.TrainResult``."""
    bundle, cfg = prepare(cfg, workdir, strategy, bundle_fn, fill)
    if cfg.evaluation.fid_every:
        bundle = dataclasses.replace(bundle, monitors=(_fid_monitor(cfg, workdir, progress),))

    def settings_verified(start_step: int) -> None:
        # after the restore matched these settings' variables, never before
        if distribute.is_chief(strategy):
            write_config(workdir, cfg)

    with held(workdir, distribute.is_chief(strategy)):
        return loop.train(
            bundle, cfg.train, workdir, strategy, on_restored=settings_verified, seed=cfg.seed,
            progress=progress, restart_from_scratch=restart_from_scratch,
            collective_timeout=cfg.distribute.collective_timeout,
        )  # fmt: skip


def train_classifier(cfg: ExperimentConfig, workdir: str, strategy, progress: bool,
                     restart_from_scratch: bool):  # fmt: skip
    """The feature extractor of classifier FID/KID (network=conv), or a noise-conditional
    classifier for classifier guidance (network=noisy_conv, on the score model's training
    sigmas of ``cfg.noise``): a supervised Keras fit on one device."""
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        raise config_lib.ConfigError("model=classifier trains on one device: use no strategy")
    if restart_from_scratch:
        raise config_lib.ConfigError(
            "restart_from_scratch is for checkpointed runs, not model=classifier"
        )
    check_resume(workdir, cfg)
    x_train, y_train = data.load_tfds_labelled(cfg.data.dataset, "train", cfg.data.data_dir)
    x_test, y_test = data.load_tfds_labelled(cfg.data.dataset, "test", cfg.data.data_dir)
    noisy = cfg.network.network == "noisy_conv"
    sigma_fn = score_model.training_sigmas(cfg) if noisy else None
    with held(workdir, chief=True):
        write_config(workdir, cfg.replace(data={"data_shape": tuple(x_train.shape[1:])}))
        return classifier.train_classifier(
            (x_train, y_train), (x_test, y_test), workdir, num_steps=cfg.train.num_steps,
            batch_size=cfg.train.batch_size, learning_rate=cfg.optimizer.learning_rate,
            seed=cfg.seed, verbose=2 if progress else 0, sigma_fn=sigma_fn,
        )  # fmt: skip


# --- load ---------------------------------------------------------------------------------------


def check_trained_fields(workdir: str, cfg: ExperimentConfig, fields: tuple[str, ...]) -> None:
    """RunError naming a field of the data section that training fills in (``fields``: the
    family's, e.g. the data's shape and, for score models, mean: the deterministic solvers
    start at mean + sigma_1 z) and the workdir's config.json lacks."""
    missing = [name for name in fields if getattr(cfg.data, name) is None]
    if missing:
        raise RunError(
            f"{config_path(workdir)} lacks {', '.join(missing)}, which training records and "
            "sampling depends on; it was edited or cut short. To recover: run run_train.py "
            "with the run's original flags on this workdir (it rewrites config.json)"
        )


def restore(workdir: str, cfg: ExperimentConfig, model_fns: dict, checkpoint: str | None,
            posthoc_sigma_rel: float, settings: dict | None = None) -> Run:  # fmt: skip
    """The ``Run`` of a checkpointed workdir: the EMA weights of the newest good checkpoint
    (or ``checkpoint``, a prefix), taken again if a run training there removes it while it is
    read (``checkpoints.restore_newest``); with ``posthoc_sigma_rel``, the post-hoc EMA of that
    width instead, reconstructed from the run's snapshots (``training.posthoc_ema``). The
    checkpoint's recorded ``settings`` must agree with config.json's."""
    set_precision(cfg.network.precision)
    if posthoc_sigma_rel:
        try:
            models, step = posthoc_ema.reconstruct_models(model_fns, workdir, posthoc_sigma_rel)
        except ValueError as e:
            raise RunError(f"posthoc_sigma_rel={posthoc_sigma_rel}: {e}") from e
        return Run(workdir, cfg, models, step, os.path.join(workdir, posthoc_ema.SNAPSHOT_DIR))
    try:
        models, step, path = checkpoints.restore_newest(
            model_fns, os.path.join(workdir, "checkpoints"), checkpoint, settings
        )
    except (FileNotFoundError, checkpoints.CheckpointError) as e:
        raise RunError(str(e)) from e
    return Run(workdir, cfg, models, step, path)
