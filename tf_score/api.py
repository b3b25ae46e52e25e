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
import dataclasses
import json
import os
from collections.abc import Callable
from typing import NamedTuple

from tf_score import atomic, data
from tf_score import config as config_lib
from tf_score.config import ConfigError, ExperimentConfig, ExportConfig
from tf_score.export import savedmodel as export_lib
from tf_score.families import classifier, outputs, score_model, vae
from tf_score.families import evaluate as evaluations  # api.evaluate is the call
from tf_score.families.run import (  # noqa: F401  (the API's calls and types, defined there)
    Generated,
    NonFiniteSamplesError,
    Run,
    RunError,
    generate,
    generate_from,
    inpaint,
    sampler_config,
)
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
    #: cfg -> the settings its checkpoints record (``ModelBundle.checkpoint_settings``)
    checkpoint_settings: Callable | None = None


def _score_bundle(cfg):

    return score_model.bundle(cfg)


def _score_model_fns(cfg):

    return {"score": score_model.network_fn(cfg)}


def _vae_bundle(cfg):

    return vae.bundle(cfg)


def _vae_model_fns(cfg):

    return vae.model_fns(cfg)


def _load_classifier(workdir):

    return {"classifier": classifier.load_classifier(workdir)}


FAMILIES: dict[str, Family] = {
    "score": Family(
        "score",
        _score_bundle,
        _score_model_fns,
        checkpoint_settings=score_model.checkpoint_settings,
    ),
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


def _write_config(workdir: str, cfg: ExperimentConfig) -> None:
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

    resumed = check_resume(workdir, cfg)
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
    shape = tuple(int(d) for d in shape)
    trained = resumed.data.data_shape if resumed else None
    if trained is not None and tuple(trained) != shape:
        raise RunError(
            f"{workdir} was trained on data of shape {tuple(trained)}; the data given now have "
            f"shape {shape}. Use the run's data (dataset, data_path, image_size) or a new workdir"
        )
    return bundle, cfg.replace(data={"data_shape": shape})


def train(cfg: ExperimentConfig, workdir: str, strategy=None, progress: bool = True,
          restart_from_scratch: bool = False):  # fmt: skip
    """Train (or resume) ``cfg`` in ``workdir``: checks, loads the data, writes
    ``config.json`` (chief only), runs the training loop. Returns ``train.TrainResult``
    (``classifier.ClassifierResult`` for the classifier). A workdir whose checkpoints are all
    unusable (damaged, orphaned, set aside) is refused unless ``restart_from_scratch``: then
    they are kept aside and training starts at step 0."""

    family = FAMILIES[cfg.network.model]
    if family.train is not None and strategy is not None and strategy.num_replicas_in_sync > 1:
        raise ConfigError(f"model={family.name} trains on one device: use no strategy")
    if family.train is not None and restart_from_scratch:
        raise ConfigError(f"restart_from_scratch is for checkpointed runs, not model={family.name}")
    check_resume(workdir, cfg)
    if family.train is not None:
        return family.train(cfg, workdir, progress)
    return _train_score_or_vae(cfg, workdir, strategy, progress, restart_from_scratch)


def _fid_monitor(cfg: ExperimentConfig, workdir: str, progress: bool):
    """``evaluations.fid_monitor`` (the config allows it for image score models only), every
    error (no classifier, too many samples) before training."""
    try:
        return evaluations.fid_monitor(cfg, workdir, cfg.data.data_shape, progress)
    except evaluations.EvaluationError as e:
        raise RunError(f"fid_every: {e}") from e


@contextlib.contextmanager
def _workdir_held(workdir: str, chief: bool):
    """The workdir's lock for this run (chief only), taken once the data are loaded (a run
    that fails before writes nothing); an unwritable workdir is a RunError."""

    try:
        with workdir_lock.held(workdir, take=chief):
            yield
    except (workdir_lock.WorkdirLockedError, workdir_lock.WorkdirUnwritableError) as e:
        raise RunError(str(e)) from e


def _train_score_or_vae(cfg: ExperimentConfig, workdir: str, strategy, progress: bool,
                        restart_from_scratch: bool = False):  # fmt: skip

    bundle, cfg = prepare(cfg, workdir, strategy)
    if cfg.evaluation.fid_every:
        bundle = dataclasses.replace(bundle, monitors=(_fid_monitor(cfg, workdir, progress),))

    def settings_verified(start_step: int) -> None:
        # after the restore matched these settings' variables, never before
        if distribute.is_chief(strategy):
            _write_config(workdir, cfg)

    with _workdir_held(workdir, distribute.is_chief(strategy)):
        return loop.train(
            bundle,
            cfg.train,
            workdir,
            strategy,
            on_restored=settings_verified,
            seed=cfg.seed,
            progress=progress,
            restart_from_scratch=restart_from_scratch,
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


def _check_trained_fields(workdir: str, cfg: ExperimentConfig) -> None:
    """RunError naming a field training fills in that the workdir's config.json lacks: the
    data's shape (every family) and, for score models, the data's mean (the deterministic
    solvers start at mean + sigma_1 z; another centre gives other samples)."""
    needed = ("data_shape", "data_mean") if cfg.network.model == "score" else ("data_shape",)
    missing = [name for name in needed if getattr(cfg.data, name) is None]
    if missing:
        raise RunError(
            f"{config_path(workdir)} lacks {', '.join(missing)}, which training records and "
            "sampling depends on; it was edited or cut short. To recover: run run_train.py "
            "with the run's original flags on this workdir (it rewrites config.json)"
        )


def load(workdir: str, checkpoint: str | None = None, data_dir: str | None = None,
         posthoc_sigma_rel: float = 0.0) -> Run:  # fmt: skip
    """Load a trained workdir of any family: its config and the EMA weights of the newest
    good checkpoint (or ``checkpoint``, a prefix), taken again if a run training there
    removes it while it is read (``checkpoints.restore_newest``). ``posthoc_sigma_rel``: the
    post-hoc EMA of that width instead, reconstructed from the run's snapshots at the newest
    one's step (a run trained with ``posthoc_ema``; ``training.posthoc_ema``)."""

    cfg = read_config(workdir, data_dir)
    family = FAMILIES[cfg.network.model]
    _check_trained_fields(workdir, cfg)
    if family.load is not None:
        return Run(workdir, cfg, family.load(workdir), 0)
    _set_precision(cfg.network.precision)
    if posthoc_sigma_rel:
        try:
            models, step = posthoc_ema.reconstruct_models(
                family.model_fns(cfg), workdir, posthoc_sigma_rel
            )
        except ValueError as e:
            raise RunError(f"posthoc_sigma_rel={posthoc_sigma_rel}: {e}") from e
        return Run(workdir, cfg, models, step, os.path.join(workdir, posthoc_ema.SNAPSHOT_DIR))
    ckpt_dir = os.path.join(workdir, "checkpoints")
    try:
        settings = family.checkpoint_settings(cfg) if family.checkpoint_settings else None
        models, step, path = checkpoints.restore_newest(  # config.json and the weights agree
            family.model_fns(cfg), ckpt_dir, checkpoint, settings
        )
    except (FileNotFoundError, checkpoints.CheckpointError) as e:
        raise RunError(str(e)) from e
    return Run(workdir, cfg, models, step, path)


# --- generate -----------------------------------------------------------------------------------


# --- export -------------------------------------------------------------------------------------


def export(
    run: Run,
    export_dir: str,
    model_name: str | None = None,
    samplers: tuple[str, ...] | None = None,
    max_samples: int = ExportConfig.export_max_samples,
    max_evaluations: int = ExportConfig.export_max_evaluations,
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
    check_writable(export_dir, "--export_dir")
    path = export_lib.version_dir(export_dir, name, max(int(run.step), 1))
    if run.family == "vae":
        return vae.export_vae(run.models, run.config, path, max_samples,
                              max_evaluations=max_evaluations)  # fmt: skip
    if run.family != "score":
        raise RunError(f"a {run.family} run has no export; export score models or VAEs")
    return export_lib.export_score_model(
        run.models["score"], run.model, run.sigmas, run.space, path, sampler=run.config.sampler,
        samplers=tuple(samplers or (run.config.sampler.sampler,)), max_samples=max_samples,
        max_evaluations=max_evaluations,
    )  # fmt: skip


# --- sample and evaluate into a directory (what run_sample.py does) ------------------------------


def sample(
    run: Run, out_dir: str, seed: int = 0, jit: bool = False, snapshots: bool = False,
    inpainting: bool = False, progress: bool = False, metrics_file: str | None = None,
):  # fmt: skip
    """Samples of any family, with their figures, written into ``out_dir`` (settings: the
    run's ``sampler`` and ``evaluation`` sections): a toy's samples.npz / .png; an image
    model's samples (and snapshots, and FID / KID with ``evaluation.metrics``) or, with
    ``inpainting``, inpainted test images (the right half); a VAE's prior samples and
    reconstructions. Returns what ``families.outputs`` computed."""
    if run.family == "vae":
        return outputs.vae_outputs(run, out_dir, seed, likelihood=False, progress=progress)
    if run.config.is_image and inpainting:
        return outputs.inpaint_test_images(run, out_dir, seed, jit)
    if run.config.is_image:
        return outputs.image_samples(run, out_dir, seed, jit, snapshots, progress, metrics_file)
    return outputs.toy_samples(run, out_dir, seed, jit)


def toy_overview(workdirs: list[str], path: str) -> str:
    """One PNG of the 2-D toy workdirs' evaluations (``evaluate`` wrote their panels), a row
    each: data, plain and annealed Langevin of an NCSN toy, the solvers of an EDM toy."""
    cfgs = [read_config(w) for w in workdirs]
    bad = [w for w, c in zip(workdirs, cfgs, strict=True) if not c.data.is_toy]
    if bad:
        raise ConfigError(f"the overview is of 2-D toy runs, not {', '.join(bad)}")
    extent = max(data.get_toy(c.data.dataset).extent for c in cfgs)
    try:
        return outputs.toy_overview(list(workdirs), path, extent)
    except evaluations.EvaluationError as e:
        raise RunError(str(e)) from e


def evaluate(run: Run, out_dir: str, seed: int = 0, jit: bool = False,
             progress: bool = False) -> dict:  # fmt: skip
    """The run's evaluation, written into ``out_dir`` (metrics.json or bits_per_dim.json and
    figures): the two-mode comparison of a toy, the AIS / IWAE likelihood of a VAE, or an
    image score model's bits/dim (``evaluation.bits_per_dim`` test images)."""
    if run.family == "vae":
        return outputs.vae_outputs(run, out_dir, seed, likelihood=True, progress=progress)
    if run.config.is_image:
        if not run.config.evaluation.bits_per_dim:
            raise ConfigError("an image score model is evaluated by --bits_per_dim=N or "
                              "--metrics=fid,kid (with sampling)")  # fmt: skip
        return outputs.bits_per_dim(run, out_dir, seed, progress)
    return outputs.toy_evaluation(run, out_dir, seed, jit)
