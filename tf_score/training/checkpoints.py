"""Checkpoints on disk: one inventory that every entry point acts on (a training run's resume,
``api.load`` and through it sampling and export).

``tf.train.CheckpointManager`` trusts its state file (``checkpoints/checkpoint``): if that file
or an ``.index`` is lost it starts again at step 0 over the older checkpoints, and deletes or
overwrites files it no longer knows. Here ``inventory`` lists every ``ckpt-<step>`` that the
directory or its state file names, newest first, and classifies each:

- good: ``.index`` and data read back whole (every tensor, which checks the checksums) and
  finite;
- damaged: unreadable, a data file missing, or a non-finite value;
- orphaned: a ``.data-*`` file without its ``.index`` (unreadable, but someone's weights);
- missing: named in the state file, no files on disk.

The callers act on that list. A resume (``resume_point``) takes the newest good one and warns
about each newer one it passes over; the chief moves damaged and orphaned files into
``damaged/`` and ``orphaned/`` (kept, and out of the way of a later save of the same step)
and lists the good ones in the state file with timestamps, so that ``keep_checkpoints`` holds
exactly over any number of restarts. With no good checkpoint but some files (here, or set
aside before) it refuses and changes nothing, unless ``restart_from_scratch``. A reader
(``restore_newest``) moves nothing, warns the same way, and when the checkpoint it chose is
removed while it reads it (a run training in the workdir rotates its checkpoints) it takes
the newest good one again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from absl import logging

DAMAGED_DIR = "damaged"
ORPHANED_DIR = "orphaned"
STATE_FILE = "checkpoint"
GOOD, DAMAGED, ORPHANED, MISSING = "good", "damaged", "orphaned", "missing"
#: where ``set_aside`` moves each kind of unusable checkpoint
ASIDE = {DAMAGED: DAMAGED_DIR, ORPHANED: ORPHANED_DIR}
#: how many times a reader takes the newest good checkpoint again after it vanished
READ_ATTEMPTS = 10
_FILE = re.compile(r"^(ckpt-(\d+))\.(index|data-\d{5}-of-\d{5})$")
_SUFFIX = re.compile(r"\.(index|data-\d{5}-of-\d{5})$")
_VANISHED = "missing: removed while it was being read"
#: the checkpoint's record of the settings its weights were trained with (JSON)
SETTINGS = "settings"


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was asked for; the message says what was found."""


class CheckpointVanishedError(CheckpointError):
    """The checkpoint being read was removed meanwhile (a run training there rotates them)."""


class Entry(NamedTuple):
    """One checkpoint of the inventory: its prefix, step, status and (unless good) why."""

    prefix: str
    step: int
    status: str
    why: str = ""

    @property
    def name(self) -> str:
        return os.path.basename(self.prefix)

    def describe(self) -> str:
        return f"{self.name}: {self.why}"


class Inventory(NamedTuple):
    """A checkpoint directory's entries (newest step first) and the prefixes set aside before
    in ``damaged/`` and ``orphaned/``."""

    directory: str
    entries: tuple[Entry, ...]
    set_aside: tuple[str, ...]

    @property
    def good(self) -> list[Entry]:
        return [e for e in self.entries if e.status == GOOD]

    @property
    def newest_good(self) -> Entry | None:
        return next(iter(self.good), None)

    @property
    def unusable(self) -> list[Entry]:
        """The damaged and orphaned entries: files that ``set_aside`` moves."""
        return [e for e in self.entries if e.status in ASIDE]


def _step_of(prefix: str) -> int:
    m = _FILE.match(os.path.basename(prefix) + ".index")
    return int(m.group(2)) if m else -1


def _files_by_step(ckpt_dir: str) -> dict[int, dict]:
    """{step: {"index": bool, "data": [file names]}} of the ``ckpt-<step>`` files on disk."""
    found: dict[int, dict] = {}
    for name in tf.io.gfile.listdir(ckpt_dir):
        m = _FILE.match(name.rstrip("/"))
        if m:
            files = found.setdefault(int(m.group(2)), {"index": False, "data": []})
            if m.group(3) == "index":
                files["index"] = True
            else:
                files["data"].append(m.group(0))
    return found


def _state_steps(ckpt_dir: str) -> set[int]:
    """The steps the state file names (by base name: the workdir may have moved)."""
    try:
        state = tf.train.get_checkpoint_state(ckpt_dir)
    except (tf.errors.OpError, ValueError):  # an unparseable state file: the disk decides
        return set()
    if state is None:
        return set()
    paths = [*state.all_model_checkpoint_paths, state.model_checkpoint_path]
    return {s for s in (_step_of(p) for p in paths if p) if s >= 0}


def _listed(ckpt_dir: str) -> list[str] | None:
    """The base names the state file lists with a timestamp each, oldest first (None: no
    readable state file, or one without timestamps)."""
    try:
        state = tf.train.get_checkpoint_state(ckpt_dir)
    except (tf.errors.OpError, ValueError):
        return None
    if state is None:
        return None
    names = [os.path.basename(p) for p in state.all_model_checkpoint_paths]
    if len(state.all_model_checkpoint_timestamps) != len(names):
        return None
    return names


def _vanished(prefix: str) -> bool:
    return not (tf.io.gfile.exists(prefix + ".index") and tf.io.gfile.glob(prefix + ".data-*"))


def _classify(prefix: str, files: dict | None, verify: bool) -> Entry:
    step, name = _step_of(prefix), os.path.basename(prefix)
    if files is None:
        return Entry(prefix, step, MISSING, "missing: listed in the state file, no files on disk")
    if not files["index"]:
        data = ", ".join(sorted(files["data"]))
        return Entry(prefix, step, ORPHANED, f"orphaned: {data} has no {name}.index")
    if not files["data"]:
        return Entry(prefix, step, DAMAGED, f"data file missing: {name}.index has no {name}.data-*")
    entry = Entry(prefix, step, GOOD)
    return _checked(entry) if verify else entry


def _checked(entry: Entry) -> Entry:
    """A complete ``entry`` read back (``problem``): good, damaged, or missing if it was
    removed meanwhile."""
    why = problem(entry.prefix)
    if why is None:
        return entry
    if _vanished(entry.prefix):
        return entry._replace(status=MISSING, why=_VANISHED)
    return entry._replace(status=DAMAGED, why=why)


def _checked_to_newest_good(inv: Inventory) -> Inventory:
    """``inv`` (listed with ``verify=False``) with its complete entries read back newest first
    up to the first good one: all a reader uses, and the shortest time between its choice
    and its restore."""
    entries = list(inv.entries)
    for i, e in enumerate(entries):
        if e.status == GOOD:
            entries[i] = _checked(e)
            if entries[i].status == GOOD:
                break
    return inv._replace(entries=tuple(entries))


def _set_aside_before(ckpt_dir: str) -> tuple[str, ...]:
    out = []
    for sub in (DAMAGED_DIR, ORPHANED_DIR):
        d = os.path.join(ckpt_dir, sub)
        if tf.io.gfile.isdir(d):
            bases = {_SUFFIX.sub("", n) for n in tf.io.gfile.listdir(d) if _SUFFIX.search(n)}
            out += sorted(os.path.join(d, b) for b in bases)
    return tuple(out)


def inventory(ckpt_dir: str, verify: bool = True) -> Inventory:
    """Every checkpoint ``ckpt_dir`` holds or its state file names, newest step first, each
    classified good, damaged, orphaned or missing (``verify=False``: by its files alone, a
    complete one counts as good unread), and what was set aside there before."""
    if not tf.io.gfile.isdir(ckpt_dir):
        return Inventory(ckpt_dir, (), ())
    files = _files_by_step(ckpt_dir)
    steps = sorted(set(files) | _state_steps(ckpt_dir), reverse=True)
    entries = tuple(
        _classify(os.path.join(ckpt_dir, f"ckpt-{s}"), files.get(s), verify) for s in steps
    )
    return Inventory(ckpt_dir, entries, _set_aside_before(ckpt_dir))


def candidates(ckpt_dir: str) -> list[str]:
    """The prefixes of the checkpoints in ``ckpt_dir`` with an ``.index`` and data on disk
    (unread), newest step first."""
    return [e.prefix for e in inventory(ckpt_dir, verify=False).entries if e.status == GOOD]


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


def set_aside(entry: Entry) -> str:
    """Move the files of an unusable ``entry`` into ``damaged/`` or ``orphaned/`` beside it
    (kept for inspection, never picked again), under a name no earlier one there has;
    returns the new prefix."""
    dest = os.path.join(os.path.dirname(entry.prefix), ASIDE[entry.status])
    tf.io.gfile.makedirs(dest)
    base, k = entry.name, 1
    while tf.io.gfile.glob(os.path.join(dest, base) + ".*"):
        k += 1
        base = f"{entry.name}_{k}"
    for path in tf.io.gfile.glob(entry.prefix + ".*"):
        suffix = os.path.basename(path)[len(entry.name) :]
        tf.io.gfile.rename(path, os.path.join(dest, base + suffix), overwrite=False)
    return os.path.join(dest, base)


def write_state(ckpt_dir: str, prefixes: list[str]) -> None:
    """List ``prefixes`` (oldest first) in the state file, with timestamps, so that the next
    ``CheckpointManager`` manages them: its saves delete the oldest beyond ``max_to_keep``
    (listed without timestamps, it would keep them for ever). No prefixes: no state file."""
    if not prefixes:
        state = os.path.join(ckpt_dir, STATE_FILE)
        if tf.io.gfile.exists(state):  # it names only files that are gone or set aside
            tf.io.gfile.remove(state)
        return
    names = [os.path.basename(p) for p in prefixes]  # relative, as the manager writes them
    if _listed(ckpt_dir) == names:  # already so, with timestamps: a rerun changes nothing
        return
    now = time.time()  # a second apart, all after the last preserved time: all deletable
    stamps = [now - len(names) + i for i in range(len(names))]
    tf.compat.v1.train.update_checkpoint_state(  # basenames are written as given: relative
        ckpt_dir, names[-1], all_model_checkpoint_paths=names,
        all_model_checkpoint_timestamps=stamps, last_preserved_timestamp=stamps[0] - 1,
    )  # fmt: skip


def _report(inv: Inventory, using: Entry | None, action: str, move: bool = False) -> None:
    """A warning for each checkpoint newer than ``using`` (the step goes back: say so, and
    what is used instead) and, with ``move``, for each older unusable one, as it is set
    aside."""
    for e in inv.entries:
        newer = using is None or e.step > using.step
        if e.status == GOOD or not (newer or (move and e.status in ASIDE)):
            continue
        where = ""
        if move and e.status in ASIDE:
            where = f"; set aside as {set_aside(e)} (kept)"
        instead = f"; {action} {using.name} (step {using.step})" if using and newer else ""
        logging.warning("checkpoint %s cannot be used: %s%s%s", e.prefix, e.why, where, instead)


def _none_usable(inv: Inventory, training: bool) -> Exception:
    """The error of a directory without a good checkpoint: what it holds, and for training,
    that nothing was changed and how to start again."""
    if not inv.entries and not inv.set_aside:
        return FileNotFoundError(f"no checkpoint found in {inv.directory!r}: train first")
    parts = [e.describe() for e in inv.entries]
    if inv.set_aside:
        shown = [os.path.relpath(p, inv.directory) for p in inv.set_aside]
        more = f" and {len(shown) - 6} more" if len(shown) > 6 else ""
        parts.append(f"set aside before: {', '.join(shown[:6])}{more}")
    message = f"no usable checkpoint in {inv.directory}: " + "; ".join(parts)
    if training:
        message += (
            ". Nothing was changed. To train again from step 0, rerun with "
            "--restart_from_scratch: the unusable files are then moved into "
            f"{os.path.join(inv.directory, DAMAGED_DIR)} and "
            f"{os.path.join(inv.directory, ORPHANED_DIR)} and kept"
        )
    return CheckpointError(message)


def resume_point(ckpt_dir: str, restart_from_scratch: bool = False, chief: bool = True):
    """Where a training run starts: the prefix of the newest good checkpoint (None: step 0),
    with a warning for each newer one passed over. The chief (``chief``) sets the damaged and
    orphaned ones aside and lists the good ones in the state file. With no good checkpoint
    but some files, here or set aside before, a ``CheckpointError`` that changes nothing,
    unless ``restart_from_scratch``: then they are set aside and the run starts at step 0."""
    inv = inventory(ckpt_dir)
    using = inv.newest_good
    anything = bool(inv.entries or inv.set_aside)
    if using is None and anything and not restart_from_scratch:
        raise _none_usable(inv, training=True)
    _report(inv, using, "resuming from", move=chief)
    if chief:
        write_state(ckpt_dir, [e.prefix for e in reversed(inv.good)])
    if restart_from_scratch and using is None and anything:
        kept = [os.path.join(ckpt_dir, d) for d in (DAMAGED_DIR, ORPHANED_DIR)]
        logging.warning(
            "restart_from_scratch: training from step 0; the unusable checkpoints are kept "
            "in %s", " and ".join(d for d in kept if tf.io.gfile.isdir(d)),
        )  # fmt: skip
    elif restart_from_scratch and using is not None:
        logging.warning(
            "restart_from_scratch: %s is good, so the run resumes from it (step %d); to start "
            "again from step 0 use a new workdir", using.prefix, using.step,
        )  # fmt: skip
    return using.prefix if using else None


@dataclasses.dataclass(frozen=True)
class Restorable:
    """A ``tf.train.Checkpoint`` (``ckpt``: what is saved) with the settings its weights belong
    to: ``restore`` compares them with the checkpoint's record (``check_settings``) and
    restores through ``view``, the checkpoint without its record, so a checkpoint written
    before there were records restores as before and the record is never overwritten."""

    ckpt: tf.train.Checkpoint
    settings: dict | None = None
    view: tf.train.Checkpoint | None = None


def make_checkpoint(models, ema_models, optimizers, step, settings=None,
                    profiles=()) -> Restorable:  # fmt: skip
    """What a training run saves and restores; with ``settings`` ({name: value}, e.g. the
    noise grid the weights are trained on) also a record of them, which ``restore``
    compares with the checkpoint's own before restoring (``check_settings``). ``profiles``:
    the post-hoc EMA copies of the models ({name: model} each), so a resume continues them."""
    items = {"step": step}
    items.update({f"model_{k}": v for k, v in models.items()})
    items.update({f"ema_{k}": v for k, v in ema_models.items()})
    items.update({f"optimizer_{k}": v for k, v in optimizers.items()})
    items.update({f"posthoc{i}_{k}": v for i, p in enumerate(profiles) for k, v in p.items()})
    if not settings:
        return Restorable(tf.train.Checkpoint(**items))
    record = tf.Variable(json.dumps(settings, sort_keys=True), trainable=False, name=SETTINGS)
    ckpt = tf.train.Checkpoint(**items, **{SETTINGS: record})
    return Restorable(ckpt, settings, tf.train.Checkpoint(**items))


def recorded_settings(path: str) -> dict | None:
    """The settings checkpoint ``path`` records (None: written before checkpoints did)."""
    try:
        reader = tf.train.load_checkpoint(path)
    except tf.errors.NotFoundError:  # removed meanwhile: the restore reports it
        return None
    key = f"{SETTINGS}/.ATTRIBUTES/VARIABLE_VALUE"
    return json.loads(reader.get_tensor(key)) if reader.has_tensor(key) else None


def check_settings(path: str, settings: dict | None) -> None:
    """``CheckpointError`` naming each setting that checkpoint ``path`` records with another
    value than ``settings`` has (both values); one without a record passes."""
    recorded = recorded_settings(path) if settings else None
    differ = [(k, recorded[k], v) for k, v in (settings or {}).items()
              if recorded is not None and k in recorded and recorded[k] != v]  # fmt: skip
    if differ:
        raise CheckpointError(
            f"checkpoint {path} was trained with "
            + ", ".join(f"{k}={a!r} (not {b!r})" for k, a, b in differ)
            + ": its weights belong to those settings. Resume or sample it with them (or "
            "train in a new workdir)"
        )


def checked_prefix(checkpoint: str) -> str:
    """``checkpoint`` (a prefix asked for by name) if it reads back whole; else a
    ``CheckpointError`` saying it is not found or why it is damaged."""
    if not tf.io.gfile.glob(checkpoint + ".*"):
        raise CheckpointError(f"checkpoint {checkpoint} not found (no {checkpoint}.index)")
    why = problem(checkpoint)
    if why:
        raise CheckpointError(f"checkpoint {checkpoint} is damaged: {why}")
    return checkpoint


class Loaded(NamedTuple):
    """EMA models restored from a checkpoint, its step and prefix."""

    models: dict
    step: int
    path: str


def restore_newest(model_fns: dict, checkpoint_dir: str, checkpoint: str | None = None,
                   settings: dict | None = None):  # fmt: skip
    """The EMA weights (``Loaded``) of ``checkpoint`` (``checked_prefix``) or else of the newest
    good checkpoint of the inventory, whose recorded ``settings`` must agree (``restore``).
    If the chosen one is removed while it is read (a run training in the workdir rotates its
    checkpoints), the newest good one is chosen again."""
    if checkpoint:
        path = checked_prefix(checkpoint)
        return Loaded(*restore_ema_models(model_fns, path, settings), path)
    for _ in range(READ_ATTEMPTS):
        models, step, target = _ema_checkpoint(model_fns, settings)  # before the choice
        inv = _checked_to_newest_good(inventory(checkpoint_dir, verify=False))
        using = inv.newest_good
        if using is None:
            if any(e.why == _VANISHED for e in inv.entries):
                continue  # all removed while being read: look again
            raise _none_usable(inv, training=False)
        _report(inv, using, "loading")
        try:
            restore(target, using.prefix, partial=True)
            return Loaded(models, int(step.numpy()), using.prefix)
        except CheckpointVanishedError:
            logging.warning(
                "checkpoint %s was removed while it was being read (a run training there "
                "rotates its checkpoints); taking the newest good one again", using.prefix,
            )  # fmt: skip
    raise CheckpointError(
        f"the checkpoints in {checkpoint_dir} were removed while being read {READ_ATTEMPTS} "
        "times in a row (a run training there saves very often?): try again, or pass "
        "--checkpoint"
    )


def newest_good(checkpoint_dir: str, checkpoint: str | None = None) -> str:
    """The prefix of ``checkpoint`` (``checked_prefix``) or else of the newest good checkpoint
    in ``checkpoint_dir``; a ``CheckpointError`` saying why when there is none."""
    if checkpoint:
        return checked_prefix(checkpoint)
    inv = _checked_to_newest_good(inventory(checkpoint_dir, verify=False))
    if inv.newest_good is None:
        raise _none_usable(inv, training=False)
    _report(inv, inv.newest_good, "loading")
    return inv.newest_good.prefix


def load_ema_models(model_fns: dict, checkpoint_dir: str, checkpoint: str | None = None):
    """Restore only the EMA weights (what samplers and exports use) from a training run.

    Returns (models, step). ``checkpoint`` picks a specific prefix; default: the newest good
    one (``restore_newest``).
    """
    return tuple(restore_newest(model_fns, checkpoint_dir, checkpoint)[:2])


def _ema_checkpoint(model_fns: dict, settings: dict | None = None):
    """(models, step, a ``Restorable`` of their EMA weights) to restore into; with
    ``settings``, ``restore`` compares them with the checkpoint's record first."""
    models = {name: fn() for name, fn in model_fns.items()}
    step = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(step=step, **{f"ema_{k}": v for k, v in models.items()})
    return models, step, Restorable(ckpt, settings)


def restore_ema_models(model_fns: dict, path: str, settings: dict | None = None):
    """(models, step) of checkpoint ``path``'s EMA weights (whose recorded ``settings`` must
    agree)."""
    models, step, target = _ema_checkpoint(model_fns, settings)
    restore(target, path, partial=True)
    return models, int(step.numpy())


def restore(target: Restorable, path: str, partial: bool = False) -> None:
    """Restore ``path`` into ``target``; a checkpoint of another model is a clear error, one
    removed meanwhile a ``CheckpointVanishedError``; one recording other settings than the
    target's a ``CheckpointError`` (``check_settings``)."""
    settings, ckpt = target.settings, target.ckpt
    view = target.view or ckpt
    status = None
    try:
        check_settings(path, settings)
        status = view.restore(path)
        (status.expect_partial() if partial else status).assert_existing_objects_matched()
        if view is not ckpt:
            status.expect_partial()  # the record in the checkpoint, compared above
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        if status is not None:  # reported here, not again by TF when the status is deleted
            status.expect_partial()
        if _vanished(path):
            raise CheckpointVanishedError(f"checkpoint {path} was removed while being read") from e
        if isinstance(e, tf.errors.OpError) and not isinstance(e, tf.errors.InvalidArgumentError):
            raise
        raise CheckpointError(
            f"checkpoint {path} does not hold this model's variables (a run with other "
            f"settings?): {str(e).splitlines()[0][:300]}"
        ) from e
