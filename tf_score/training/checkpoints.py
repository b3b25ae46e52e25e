"""Finding a good checkpoint on disk: what a resume or a load picks when the newest is damaged.

``tf.train.CheckpointManager`` trusts its state file (``checkpoints/checkpoint``): if that file
or the newest ``.index`` is lost, ``latest_checkpoint`` says there is nothing and a resumed
run would start again at step 0 over the older checkpoints; if the newest ``.data`` is
truncated or overwritten, restoring it raises a low-level error. Here the candidates are
every ``ckpt-<step>.index`` on disk (with the state file's list), newest step first, and each
is checked before use: readable (every tensor read, which checks the checksums), complete
and finite. A damaged one is reported and, when training, set aside in ``damaged/``.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from absl import logging

DAMAGED_DIR = "damaged"
_PREFIX = re.compile(r"^ckpt-(\d+)\.index$")


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was asked for; the message says what was found."""


def _step_of(prefix: str) -> int:
    m = _PREFIX.match(os.path.basename(prefix) + ".index")
    return int(m.group(1)) if m else -1


def candidates(ckpt_dir: str) -> list[str]:
    """Every checkpoint prefix in ``ckpt_dir``: the ``ckpt-<step>.index`` files on disk and
    the state file's entries that still have an index, newest step first."""
    if not tf.io.gfile.isdir(ckpt_dir):
        return []
    found = {
        os.path.join(ckpt_dir, name[: -len(".index")])
        for name in tf.io.gfile.listdir(ckpt_dir)
        if _PREFIX.match(name)
    }
    try:
        state = tf.train.get_checkpoint_state(ckpt_dir)
    except (tf.errors.OpError, ValueError):  # an unparseable state file: the disk decides
        state = None
    if state is not None:
        for p in state.all_model_checkpoint_paths:
            p = p if os.path.isabs(p) else os.path.join(ckpt_dir, p)
            if tf.io.gfile.exists(p + ".index"):
                found.add(p)
    return sorted(found, key=lambda p: (_step_of(p), p), reverse=True)


def problem(prefix: str) -> str | None:
    """Why checkpoint ``prefix`` cannot be used (None: it can): a file that cannot be read
    (truncated, a checksum mismatch, a missing data shard) or a non-finite floating-point
    value. (Whether it holds this model's variables is the restore's check.)"""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name, dtype in reader.get_variable_to_dtype_map().items():
            value = reader.get_tensor(name)
            if dtype.is_floating and not np.all(np.isfinite(value)):
                return f"non-finite values in {name}"
    except (tf.errors.OpError, ValueError, IndexError, OSError) as e:
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    return None


def set_aside(prefix: str) -> str:
    """Move the files of ``prefix`` into ``damaged/`` beside it (kept for inspection, never
    picked again); returns the new prefix."""
    ckpt_dir, base = os.path.split(prefix)
    dest = os.path.join(ckpt_dir, DAMAGED_DIR)
    tf.io.gfile.makedirs(dest)
    for path in tf.io.gfile.glob(prefix + ".*"):
        tf.io.gfile.rename(path, os.path.join(dest, os.path.basename(path)), overwrite=True)
    return os.path.join(dest, base)


class Pick(NamedTuple):
    """The checkpoint to use (None: there is none) and the damaged ones passed over."""

    path: str | None
    damaged: list[tuple[str, str]]


def newest_good(ckpt_dir: str, set_aside_damaged: bool = False) -> Pick:
    """The newest checkpoint in ``ckpt_dir`` that ``problem`` finds nothing wrong with. Each
    damaged newer one is logged and, with ``set_aside_damaged`` (training, the chief), moved
    to ``damaged/``. Raises ``CheckpointError`` if there are checkpoints but none is good: a
    run must not start again from step 0 over them."""
    damaged = []
    for prefix in candidates(ckpt_dir):
        why = problem(prefix)
        if why is None:
            return Pick(prefix, damaged)
        logging.warning("checkpoint %s is damaged (%s); trying an older one", prefix, why)
        if set_aside_damaged:
            moved = set_aside(prefix)
            logging.warning("set aside as %s", moved)
        damaged.append((prefix, why))
    if damaged:
        raise CheckpointError(
            f"no usable checkpoint in {ckpt_dir}: "
            + "; ".join(f"{os.path.basename(p)}: {why}" for p, why in damaged)
        )
    return Pick(None, damaged)


def repair_state(ckpt_dir: str, keep: list[str]) -> None:
    """Rewrite the state file to list ``keep`` (oldest first), so that a
    ``CheckpointManager`` made next manages (and later deletes) the checkpoints on disk."""
    from tensorflow.python.checkpoint import checkpoint_management

    if not keep:
        return
    names = [os.path.basename(p) for p in keep]  # relative, as the manager writes them
    checkpoint_management.update_checkpoint_state_internal(
        ckpt_dir, names[-1], all_model_checkpoint_paths=names, save_relative_paths=True
    )


def make_checkpoint(models, ema_models, optimizers, step) -> tf.train.Checkpoint:
    items = {"step": step}
    items.update({f"model_{k}": v for k, v in models.items()})
    items.update({f"ema_{k}": v for k, v in ema_models.items()})
    items.update({f"optimizer_{k}": v for k, v in optimizers.items()})
    return tf.train.Checkpoint(**items)


def pick_checkpoint(checkpoint_dir: str, checkpoint: str | None = None) -> str:
    """``checkpoint`` (a prefix) if it reads back whole, else the newest good one in
    ``checkpoint_dir`` (a damaged newer one is reported, not moved: the workdir may be
    another user's). ``FileNotFoundError`` if there is none, ``CheckpointError`` if the one
    asked for, or every one, is damaged."""
    if checkpoint:
        if not tf.io.gfile.glob(checkpoint + ".*"):
            raise CheckpointError(f"checkpoint {checkpoint} not found (no {checkpoint}.index)")
        why = problem(checkpoint)
        if why:
            raise CheckpointError(f"checkpoint {checkpoint} is damaged: {why}")
        return checkpoint
    path = newest_good(checkpoint_dir).path
    if path is None:
        raise FileNotFoundError(f"no checkpoint found in {checkpoint_dir!r}: train first")
    return path


def load_ema_models(model_fns: dict, checkpoint_dir: str, checkpoint: str | None = None):
    """Restore only the EMA weights (what samplers and exports use) from a training run.

    Returns (models, step). ``checkpoint`` picks a specific prefix; default: the newest good
    one (``pick_checkpoint``).
    """
    return restore_ema_models(model_fns, pick_checkpoint(checkpoint_dir, checkpoint))


def restore_ema_models(model_fns: dict, path: str):
    """(models, step) of checkpoint ``path``'s EMA weights."""
    models = {name: fn() for name, fn in model_fns.items()}
    step = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(step=step, **{f"ema_{k}": v for k, v in models.items()})
    _restore(ckpt, path, partial=True)
    return models, int(step.numpy())


def _restore(ckpt: tf.train.Checkpoint, path: str, partial: bool = False) -> None:
    """Restore ``path`` into ``ckpt``; a checkpoint of another model is a clear error."""
    try:
        status = ckpt.restore(path)
        (status.expect_partial() if partial else status).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
        raise CheckpointError(
            f"checkpoint {path} does not hold this model's variables (a run with other "
            f"settings?): {str(e).splitlines()[0][:300]}"
        ) from e
