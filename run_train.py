"""Train a score model: flags -> config -> tf_score.train.train(bundle, config, workdir).

    python run_train.py --flagfile=flags/presets/toy_mixture.cfg --workdir=runs/toy_mixture

Re-running with the same --workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, logging

import flags.definitions as F


def _check_resume(workdir: str, cfg: dict) -> None:
    import tensorflow as tf

    path = os.path.join(workdir, "config.json")
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as f:
        old = json.load(f)
    changed = sorted(k for k in cfg if k in old and old[k] != cfg[k] and k not in F.PORTABLE_KEYS)
    if changed:
        raise app.UsageError(
            f"--workdir={workdir} holds a run with different settings for: "
            + ", ".join(f"--{k} (was {old[k]!r}, now {cfg[k]!r})" for k in changed)
            + ". Use a new --workdir or the original flags."
        )


def _plain_copies(model_fns: dict, models: dict) -> dict:
    """The models rebuilt outside any strategy scope, with ``models``' weights (an export of
    plain variables, readable by every worker without collectives)."""
    copies = {name: fn() for name, fn in model_fns.items()}
    for name, model in copies.items():
        model.set_weights(models[name].get_weights())
    return copies


def _train_classifier(workdir: str, cfg: dict, train_cfg) -> None:
    """The feature extractor of classifier FID/KID: a supervised Keras fit on one device."""
    from tf_score import classifier, data, train

    if F.STRATEGY.value != "default":
        raise app.UsageError("--model=classifier trains on one device: leave --strategy unset")
    try:
        x_train, y_train = data.load_tfds_labelled(cfg["dataset"], "train", cfg["data_dir"])
        x_test, y_test = data.load_tfds_labelled(cfg["dataset"], "test", cfg["data_dir"])
    except data.DataUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    os.makedirs(workdir, exist_ok=True)
    cfg["data_shape"] = list(x_train.shape[1:])
    train.write_json_atomic(os.path.join(workdir, "config.json"), cfg)
    print(
        f"training the {cfg['dataset']} classifier on {len(x_train)} images for about "
        f"{train_cfg.num_steps} steps of {train_cfg.batch_size} -> {workdir}",
        flush=True,
    )
    r = classifier.train_classifier(
        (x_train, y_train),
        (x_test, y_test),
        workdir,
        num_steps=train_cfg.num_steps,
        batch_size=train_cfg.batch_size,
        learning_rate=cfg["learning_rate"],
        seed=cfg["seed"],
        verbose=2 if train_cfg.progress else 0,
    )
    print(
        f"classifier: test accuracy {r.test_accuracy:.4f} on {len(x_test)} images "
        f"({r.epochs} epochs, {r.steps} steps, {r.seconds:.1f} s, {r.params:,} parameters) "
        f"-> {r.path}",
        flush=True,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = F.WORKDIR.value
    cfg = F.experiment_config()
    train_cfg = F.train_config()
    _check_resume(workdir, cfg)
    if cfg["model"] == "classifier":
        _train_classifier(workdir, cfg, train_cfg)
        return

    import keras
    import tensorflow as tf

    from tf_score import data, distribute, score_model, train

    try:
        # First: a multi-worker strategy must exist before any other TensorFlow work.
        strategy = F.strategy()
    except distribute.StrategyError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    chief = distribute.is_chief(strategy)
    keras.mixed_precision.set_global_policy(cfg["precision"])
    try:
        if cfg["model"] == "vae":
            from tf_score import vae

            bundle, data_shape = vae.bundle_from_experiment(cfg)
        else:
            bundle, data_shape = score_model.bundle_from_config(
                cfg, sample_eps=F.STEP_LR.value, sample_steps_each=F.N_STEPS_EACH.value
            )
        replicas = strategy.num_replicas_in_sync * train_cfg.grad_accum_steps
        if train_cfg.batch_size % replicas:
            raise ValueError(
                f"--batch_size={train_cfg.batch_size} must be divisible by the "
                f"{strategy.num_replicas_in_sync} replica(s) x --grad_accum_steps="
                f"{train_cfg.grad_accum_steps}"
            )
    except (data.DataUnavailableError, data.BadImagesError, ValueError) as e:
        # Data problems are reported before anything is written.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    cfg["data_shape"] = list(data_shape)
    if chief:
        tf.io.gfile.makedirs(workdir)
        train.write_json_atomic(os.path.join(workdir, "config.json"), cfg)
    objective = f"the {cfg['vae_encoder']} encoder" if cfg["model"] == "vae" else cfg["loss"]
    print(
        f"training {cfg['model']} on {cfg['dataset']} with {objective} "
        f"for {train_cfg.num_steps} steps on {strategy.num_replicas_in_sync} replica(s) "
        f"({F.STRATEGY.value}, {distribute.task_name(strategy)}) -> {workdir}",
        flush=True,
    )
    try:
        result = train.train(bundle, train_cfg, workdir, strategy)
    except train.NonFiniteLossError as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except train.WorkerLostError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(4)
    except train.TrainingInterrupted as e:
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        sys.exit(128 + int(e.signum))
    print(
        f"trained to step {result.step}: loss {result.loss:.4f} in {result.seconds:.1f} s; "
        f"checkpoint {result.checkpoint}",
        flush=True,
    )
    if F.EXPORT_DIR.value and chief:
        models = result.ema_models
        if strategy is not tf.distribute.get_strategy():
            models = _plain_copies(bundle.model_fns, models)
        path = F.export_run(cfg, models, result.step)
        print(f"exported the EMA weights for TF Serving: {path}", flush=True)


if __name__ == "__main__":
    from absl import flags

    flags.mark_flag_as_required("workdir")
    app.run(main)
