"""The one training loop for every model (toy MLP, NCSN images, VAE).

A model is handed to the loop as a ``ModelBundle``: factories for its Keras models, one or
more ``Objective``s (a per-example loss callable, the variables it trains and an optimizer),
and a ``dataset_fn``. The loop owns everything else: the distribution strategy, the compiled
step (several steps per ``tf.function`` call), EMA copies of the weights, the NaN guard,
checkpoints (``tf.train.CheckpointManager``, resumable), TensorBoard summaries and the
progress bar. It knows nothing of which loss it runs.

The step (models, EMA, optimizers, gradients, updates, the compiled loop of steps and a
held-out loss) is ``step.TrainStep``; ``train()`` here is the loop around it:
checkpoints, the input pipeline, summaries, signals and the workers' agreement.

Randomness is stateless: the seed of step k is ``fold_in(seed, k)``, then folded with the
*shard* (replica r's micro-batch a is shard ``r * grad_accum_steps + a``) and the objective,
and global batch k of the data is a function of k, split in order between the shards. So a
run resumed at step k replays exactly what an uninterrupted run would have done, and a run
on R replicas is reproduced on one device with ``grad_accum_steps=R`` (same global batch,
same shards, same seeds).

Interrupts: SIGINT (Ctrl-C) and SIGTERM (pre-emption) stop the run at the end of the current
compiled loop (all workers agree on the step), save a checkpoint and raise
``TrainingInterrupted``; a second Ctrl-C stops at once, leaving the last checkpoint.
Checkpoints are written by ``tf.train.CheckpointManager``, which records a checkpoint only
after its files are complete, so a process killed at any moment resumes from the last
complete one. A resume takes the newest checkpoint on disk that reads back whole and finite
(``checkpoints.resume_point``), even if the state file is lost; damaged and orphaned files
are set aside (kept), and the state file is rewritten so that retention stays exact.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import json
import os
import signal
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from absl import logging
from tqdm.auto import tqdm

from tf_score import atomic
from tf_score.config import TrainConfig
from tf_score.training import distribute, posthoc_ema, signals
from tf_score.training.bundle import ModelBundle
from tf_score.training.checkpoints import (
    CheckpointError,
    make_checkpoint,
    restore,
    resume_point,
)
from tf_score.training.distribute import is_chief
from tf_score.training.step import TrainStep


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped the run after ``step``, with a checkpoint saved there."""

    def __init__(self, step: int, checkpoint: str | None, signum: int):
        self.step = step
        self.checkpoint = checkpoint
        self.signum = signum
        super().__init__(
            f"{signal.Signals(signum).name} at step {step}: saved checkpoint "
            f"{checkpoint or 'none'}; run the same command again to resume"
        )


class WorkerLostError(RuntimeError):
    """A multi-worker run lost a worker (killed, pre-empted, unreachable). Collectives cannot
    recover in-process: restart every worker with the same command to resume from
    ``checkpoint`` (the pattern of Keras' BackupAndRestore)."""

    def __init__(self, step: int, checkpoint: str | None, cause: Exception):
        self.step = step
        self.checkpoint = checkpoint
        first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        if isinstance(cause, tf.errors.DeadlineExceededError):
            first_line = "a collective had no answer within --collective_timeout"
        super().__init__(
            f"lost contact with another worker after step {step} ({type(cause).__name__}: "
            f"{first_line}). Restart all workers with the same command to resume from "
            f"{checkpoint or 'the start'}"
        )


class NonFiniteLossError(RuntimeError):
    """Raised when a loss or gradient became NaN/Inf; the update of that step was not applied."""

    def __init__(self, step: int, checkpoint: str | None):
        self.step = step
        self.checkpoint = checkpoint
        super().__init__(
            f"non-finite loss or gradient at step {step}: the run stopped before applying it. "
            f"Weights are those after step {step - 1}; last good checkpoint: {checkpoint or 'none'}"
        )


@dataclasses.dataclass
class TrainResult:
    step: int
    loss: float
    seconds: float
    models: dict
    ema_models: dict
    checkpoint: str | None

    def summary(self) -> str:
        """One line of what training gave."""
        return (
            f"trained to step {self.step}: loss {self.loss:.4f} in {self.seconds:.1f} s; "
            f"checkpoint {self.checkpoint}"
        )


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- the loop around the step ----------------------------------------------------------------


class _Checkpoints:
    """``workdir/checkpoints``: every worker restores the chief's latest checkpoint; every
    worker saves, but only the chief's files are kept."""

    def __init__(self, step: TrainStep, config: TrainConfig, workdir: str, strategy, restart: bool):
        self.chief = is_chief(strategy)
        self._strategy, self._step, self._workdir = strategy, step, workdir
        self.target = make_checkpoint(
            step.models, step.ema_models, step.optimizers, step.step_var,
            settings=step.bundle.checkpoint_settings,  # a resume with others is refused
            profiles=step.profiles,
        )  # fmt: skip
        self.ckpt = self.target.ckpt
        # Every worker resumes from the chief's checkpoints (a directory they all can read).
        self.dir = os.path.join(workdir, "checkpoints")
        # The newest good checkpoint on disk, whatever the state file says; the chief sets
        # damaged and orphaned files aside (a save of the same step would overwrite them) and
        # lists the good ones, with timestamps, in the state file its manager reads, so that
        # max_to_keep counts them. No good one but some files: refused unless ``restart``.
        self.resume_from = resume_point(self.dir, restart, chief=self.chief)
        self.manager = (
            tf.train.CheckpointManager(
                self.ckpt, self.dir, max_to_keep=config.keep_checkpoints, step_counter=step.step_var
            )
            if self.chief
            else None
        )

    def restore(self) -> str | None:
        """Restore the newest good checkpoint, if there is one; its path."""
        if self.resume_from:
            restore(self.target, self.resume_from)
        return self.resume_from

    def save(self, step: int) -> str | None:
        """Every worker saves (saving may need collectives); only the chief's is kept. A full
        disk is a ``DiskFullError`` naming the checkpoint kept."""
        if self.chief:
            with _disk_full_is_one_line(step, self.dir, self.manager.latest_checkpoint):
                return self._save_chief(step)
        with distribute.write_dir(self.dir, self._strategy) as tmp:
            self.ckpt.write(os.path.join(tmp, f"ckpt-{step}"))
        return None

    def _save_chief(self, step: int) -> str:
        path = self.manager.save(checkpoint_number=step)
        logging.info("saved checkpoint %s", path)
        if self._step.profiles:  # kept, unlike the checkpoints: the reconstruction's basis
            posthoc_ema.save_snapshot(
                self._workdir, step, self._step.sigma_rels, self._step.profiles
            )
        return path

    def latest(self) -> str | None:
        if self.chief:
            return self.manager.latest_checkpoint
        return tf.train.latest_checkpoint(self.dir)


class DiskFullError(CheckpointError):
    """A checkpoint could not be written for lack of space; the last good one is kept."""


@contextlib.contextmanager
def _disk_full_is_one_line(step: int, ckpt_dir: str, kept: str | None):
    """A full disk while saving step ``step``: ``DiskFullError`` in one line, naming the
    checkpoint kept (a partial write is found damaged and set aside when the run resumes)."""
    try:
        yield
    except (tf.errors.ResourceExhaustedError, OSError) as e:
        if isinstance(e, OSError):
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        else:  # TensorFlow's file system reports the OS error in its message
            full = "No space left on device" in str(e) or "Disk quota exceeded" in str(e)
        if not full:
            raise  # another failure: its own message
        raise DiskFullError(
            f"no space left to write the checkpoint of step {step} in {ckpt_dir}; "
            f"{'the last good one, ' + kept + ', is kept' if kept else 'no checkpoint was kept'}"
            ": free some space and run the same command again to resume"
        ) from None


class _Workers:
    """The loop's own collectives: agreeing when to stop, a lost peer as ``WorkerLostError``."""

    def __init__(self, strategy: tf.distribute.Strategy, checkpoints: _Checkpoints,
                 collective_timeout: float, progress: Callable[[], int]):  # fmt: skip
        self.multi_worker = distribute.is_multi_worker(strategy)
        self._checkpoints = checkpoints
        self._watchdog = None
        if self.multi_worker and collective_timeout:
            self._watchdog = distribute.CollectiveWatchdog(collective_timeout, progress)

        @tf.function
        def any_worker(flag):
            value = strategy.run(lambda: tf.cast(flag, tf.int32))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) > 0

        self._any_worker = any_worker

    def collective(self, step: int, fn, *args, first: bool = False):
        """Run a function with collectives; a lost peer becomes WorkerLostError (after ``step``).
        ``first``: the call that traces and compiles (``CollectiveWatchdog.watching``)."""
        watching = self._watchdog.watching(first) if self._watchdog else contextlib.nullcontext()
        try:
            with watching:
                return fn(*args)
        except (
            tf.errors.UnavailableError,
            tf.errors.DeadlineExceededError,
            tf.errors.AbortedError,
            tf.errors.CancelledError,
        ) as e:
            if not self.multi_worker:
                raise
            raise WorkerLostError(step, self._checkpoints.latest(), e) from e

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.close()

    def any(self, step: int, flag: bool) -> bool:
        """True on every worker if any worker passed True (so all stop at the same step)."""
        if not self.multi_worker:
            return flag
        return bool(self.collective(step, self._any_worker, tf.constant(flag)))


def write_images(writer, images: dict, step: int) -> None:
    """TensorBoard images {tag: uint8 [H, W, C] or [N, H, W, C]} at ``step`` (8 at most)."""
    with writer.as_default(step=step):
        for tag, img in images.items():
            img = np.asarray(img)
            tf.summary.image(tag, img if img.ndim == 4 else img[None], max_outputs=8)
    writer.flush()


class _Summaries:
    """TensorBoard summaries in ``workdir/tb`` (a no-op writer off the chief)."""

    def __init__(self, bundle: ModelBundle, step: TrainStep, workdir: str, chief: bool):
        self.bundle = bundle
        self._step = step
        self.writer = (
            tf.summary.create_file_writer(os.path.join(workdir, "tb"))
            if chief
            else tf.summary.create_noop_writer()
        )

    def images(self, step: int) -> None:
        """The bundle's custom and image summaries of the EMA models."""
        bundle, ema_models = self.bundle, self._step.ema_models
        if bundle.custom_summaries is not None:
            with self.writer.as_default(step=step):
                bundle.custom_summaries(ema_models, step)
        if bundle.image_summaries is None:
            return
        write_images(self.writer, bundle.image_summaries(ema_models, step), step)

    def monitors(self, step: int, final: bool) -> None:
        """The bundle's monitors due at ``step`` (all of them at the run's end)."""
        for m in self.bundle.monitors:
            if step % m.every and not final:
                continue
            values = m.fn(self._step.ema_models, step)
            with self.writer.as_default(step=step):
                for tag, value in values.items():
                    tf.summary.scalar(tag, value)
            self.writer.flush()
            logging.info("step %d %s", step, " ".join(f"{k} {v:.4g}" for k, v in values.items()))

    def scalars(self, step: int, out: dict, done: int, dt: float, bar_shown: bool) -> None:
        """A compiled loop's statistics (``TrainStep.make_train_loop``), ``done`` steps in
        ``dt`` seconds; also logged unless the progress bar shows them."""
        bundle = self.bundle
        losses = out["loss"].numpy()
        last_loss = float(losses.sum())
        with self.writer.as_default(step=step):
            tf.summary.scalar("loss", last_loss)
            tf.summary.scalar("steps_per_sec", done / max(dt, 1e-9))
            tf.summary.scalar("examples_per_sec", done * self._step.global_batch / max(dt, 1e-9))
            for i, obj in enumerate(bundle.objectives):
                prefix = obj.name
                tf.summary.scalar(f"{prefix}/loss", losses[i])
                tf.summary.scalar(f"{prefix}/grad_norm", out["grad_norm"][i])
                lr = self._step.optimizers[obj.name].learning_rate
                tf.summary.scalar(f"{prefix}/learning_rate", float(np.asarray(lr)))
                for name, value in zip(obj.metric_names, out["metrics"][i], strict=True):
                    tf.summary.scalar(f"{prefix}/{name}", value)
                if bundle.num_levels > 1:
                    for lvl in range(bundle.num_levels):
                        tf.summary.scalar(
                            f"{prefix}/loss_per_level/{lvl:02d}", out["level_loss"][i, lvl]
                        )
        # The progress bar already shows this; log lines are for runs without it.
        logging.log(
            logging.DEBUG if bar_shown else logging.INFO,
            "step %d loss %.5g (%.1f steps/s)",
            step,
            last_loss,
            done / max(dt, 1e-9),
        )


#: compiled loops whose median loss the progress bar shows
SMOOTHING_LOOPS = 11


@dataclasses.dataclass
class _Progress:
    """How far the loop got: the step, the last loss, throughput after the first call."""

    start_step: int
    step: int
    last_loss: float = float("nan")
    steady_steps: int = 0
    steady_seconds: float = 0.0
    #: the mean losses of the last compiled loops, for the progress bar's smoothed loss
    recent_losses: collections.deque = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=SMOOTHING_LOOPS)
    )

    def record(self, loss: float) -> None:
        self.last_loss = loss
        self.recent_losses.append(loss)

    @property
    def smoothed_loss(self) -> float:
        """The median of the recent loops' mean losses: one heavy batch does not show."""
        return float(np.median(self.recent_losses)) if self.recent_losses else float("nan")


def _next_boundary(step: int, every: int) -> int:
    return (step // every + 1) * every


def _loop_end(step: int, config: TrainConfig, monitors=()) -> int:
    """Where the compiled loop starting after ``step`` stops: after at most ``steps_per_loop``
    steps, at the next log, checkpoint, sample or monitor step, at the end."""
    return min(
        config.num_steps,
        step + config.steps_per_loop,
        _next_boundary(step, config.log_every),
        _next_boundary(step, config.checkpoint_every),
        _next_boundary(step, config.sample_every) if config.sample_every else config.num_steps,
        *(_next_boundary(step, m.every) for m in monitors),
    )


def _run_loops(config, train_loop, progress, bar, stop, summaries, checkpoints, workers):
    """Call the compiled loop until ``config.num_steps``; summaries and checkpoints at the
    steps they are due; stop (saved) on a signal, a non-finite step or a lost worker."""
    while progress.step < config.num_steps:
        step = progress.step
        end = _loop_end(step, config, summaries.bundle.monitors)
        t0 = time.time()
        out = workers.collective(step, train_loop, tf.constant(end - step, tf.int64),
                                 first=step == progress.start_step)  # fmt: skip
        done = int(out["steps"])
        dt = time.time() - t0
        if step > progress.start_step:  # the first call also traces and compiles
            progress.steady_steps += done
            progress.steady_seconds += dt
        if int(out["bad_step"]) >= 0:
            raise NonFiniteLossError(int(out["bad_step"]), checkpoints.latest())
        progress.step = step = step + done
        bar.update(done)
        progress.record(float(out["loss"].numpy().sum()))
        bar.set_postfix(loss=f"{progress.smoothed_loss:.4g}")
        if step % config.log_every == 0 or step == config.num_steps:
            summaries.scalars(step, out, done, dt, bar_shown=not bar.disable)
        if config.sample_every and step % config.sample_every == 0 and checkpoints.chief:
            summaries.images(step)
        if checkpoints.chief and step < config.num_steps:
            summaries.monitors(step, final=False)
        stopping = workers.any(step, stop.signum is not None)
        if stopping or step % config.checkpoint_every == 0 or step == config.num_steps:
            checkpoints.save(step)
        if stopping:
            raise TrainingInterrupted(step, checkpoints.latest(), stop.signum or signal.SIGTERM)


def _train_summary(progress: _Progress, seconds: float, step: TrainStep) -> dict:
    """What ``train_summary.json`` records."""
    return {
        "step": progress.step,
        "final_loss": progress.last_loss,
        "train_seconds": seconds,
        "start_step": progress.start_step,
        "replicas": step.replicas,
        "grad_accum_steps": step.accum,
        "global_batch": step.global_batch,
        # throughput after the first compiled call (tracing and compilation excluded)
        "examples_per_sec": progress.steady_steps * step.global_batch / progress.steady_seconds
        if progress.steady_seconds
        else None,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _recorded_loss(workdir: str) -> float:
    """The final loss ``train_summary.json`` recorded (NaN when there is none)."""
    try:
        with tf.io.gfile.GFile(os.path.join(workdir, "train_summary.json")) as f:
            return float(json.load(f)["final_loss"])
    except (tf.errors.NotFoundError, ValueError, KeyError, TypeError):
        return float("nan")


def train(
    bundle: ModelBundle,
    config: TrainConfig,
    workdir: str,
    strategy: tf.distribute.Strategy | None = None,
    on_restored: Callable[[int], None] | None = None,
    seed: int = 0,
    progress: bool = False,
    restart_from_scratch: bool = False,
    collective_timeout: float = 0.0,
) -> TrainResult:
    """Train ``bundle`` for ``config.num_steps`` steps (``config``: an experiment's ``train``
    section), seeded by ``seed``, resuming from ``workdir`` if possible (the newest good
    checkpoint); ``progress`` shows a bar. ``on_restored(start_step)`` runs once the
    checkpoint, if any, has been restored into these models (a run writes its settings there).
    A workdir whose checkpoints are all unusable is refused (``CheckpointError``) unless
    ``restart_from_scratch`` (they are kept aside; ``checkpoints.resume_point``).
    ``collective_timeout`` (multi-worker; 0: none): seconds without a step, waiting for a
    peer, before the run stops with ``WorkerLostError`` (``distribute.CollectiveWatchdog``)."""
    strategy, show_bar = strategy or tf.distribute.get_strategy(), progress
    step_fn = TrainStep(bundle, config, strategy, seed)  # checks the batch split, seeds, builds
    checkpoints = _Checkpoints(step_fn, config, workdir, strategy, restart_from_scratch)
    chief = checkpoints.chief
    latest = checkpoints.restore()
    start_step = int(step_fn.step_var.numpy())
    if start_step:
        logging.info("resumed from %s at step %d", latest, start_step)
    if chief and step_fn.profiles and posthoc_ema.set_aside_later(workdir, start_step):
        logging.warning("post-hoc EMA snapshots after step %d moved to %s/superseded/",
                        start_step, posthoc_ema.SNAPSHOT_DIR)  # fmt: skip
    if on_restored is not None:
        on_restored(start_step)
    if start_step >= config.num_steps:  # a finished run: nothing to train, nothing to write
        logging.info("%s is trained to step %d already", workdir, start_step)
        return TrainResult(start_step, _recorded_loss(workdir), 0.0, step_fn.models,
                           step_fn.ema_models, latest)  # fmt: skip

    def input_fn(ctx: tf.distribute.InputContext):
        return bundle.dataset_fn(config.batch_size, ctx, start_step)

    iterator = iter(strategy.distribute_datasets_from_function(input_fn))
    train_loop = step_fn.make_train_loop(iterator)
    summaries = _Summaries(bundle, step_fn, workdir, chief)
    workers = _Workers(strategy, checkpoints, collective_timeout, step_fn.step_var.numpy)
    progress = _Progress(start_step=start_step, step=start_step)
    t_start = time.time()
    bar = tqdm(
        total=config.num_steps,
        initial=start_step,
        unit="step",
        dynamic_ncols=True,
        disable=not (show_bar and chief),
        mininterval=1.0,
    )
    with signals.StopSignals() as stop:
        try:
            _run_loops(config, train_loop, progress, bar, stop, summaries, checkpoints, workers)
        finally:
            bar.close()
            workers.close()
    seconds = time.time() - t_start
    if chief and (not config.sample_every or config.num_steps % config.sample_every):
        summaries.images(progress.step)
    if chief and progress.step == config.num_steps:
        summaries.monitors(progress.step, final=True)
    summaries.writer.flush()
    if chief:
        summary = _train_summary(progress, seconds, step_fn)
        atomic.write_json(os.path.join(workdir, "train_summary.json"), summary)
    return TrainResult(
        progress.step,
        progress.last_loss,
        seconds,
        step_fn.models,
        step_fn.ema_models,
        checkpoints.latest(),
    )
