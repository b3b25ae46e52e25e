"""The one training loop for every model (toy MLP, NCSN images, VAE).

A model is handed to the loop as a ``ModelBundle``: factories for its Keras models, one or
more ``Objective``s (a per-example loss callable, the variables it trains and an optimizer),
and a ``dataset_fn``. The loop owns everything else: the distribution strategy, the compiled
step (several steps per ``tf.function`` call), EMA copies of the weights, the NaN guard,
checkpoints (``tf.train.CheckpointManager``, resumable), TensorBoard summaries and the
progress bar. It knows nothing of which loss it runs.

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
complete one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tqdm.auto import tqdm

from tf_score import distribute
from tf_score.distribute import is_chief  # also re-exported: train.is_chief


class LossOutput(NamedTuple):
    """A loss callable's result: per-example loss [B] and, optionally, the level per example
    and named per-example metrics (written to TensorBoard as ``<objective>/<name>``; the
    objective lists their names in ``Objective.metric_names``)."""

    loss: tf.Tensor
    levels: tf.Tensor | None = None
    metrics: dict[str, tf.Tensor] | None = None


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


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings. ``batch_size`` is the global batch over all replicas."""

    num_steps: int
    batch_size: int
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    #: image summaries every this many steps (0: only at the end)
    sample_every: int = 0
    #: EMA decay of the weights; 0 makes the EMA copy equal the live weights
    ema_rate: float = 0.999
    #: ramp the decay up as min(ema_rate, (1 + t) / (10 + t)) at step t, so the average
    #: forgets the random initial weights (the undebiased 0.999 EMA still holds 13% of them
    #: after 2000 steps, enough to ruin short runs' samples)
    ema_warmup: bool = True
    #: XLA-compile each replica's loss and gradient (measure first: on CPUs it can be slower)
    jit_compile: bool = False
    #: steps run inside one compiled call (cuts Python overhead for small models)
    steps_per_loop: int = 100
    #: micro-batches per replica per step, run one after another with their gradients summed
    #: (a global batch larger than fits on the devices; R replicas x A micro-batches give the
    #: same run as 1 replica x R*A)
    grad_accum_steps: int = 1
    progress: bool = True

    def __post_init__(self):
        positive = (
            "num_steps",
            "batch_size",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "steps_per_loop",
            "grad_accum_steps",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sample_every < 0:
            raise ValueError(f"sample_every must be >= 0, got {self.sample_every}")
        if not 0.0 <= self.ema_rate < 1.0:
            raise ValueError(f"ema_rate must be in [0, 1), got {self.ema_rate}")


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
      num_levels: noise levels, for per-level loss summaries (0: none).
      image_summaries: ``(ema_models, step) -> {name: uint8 [N, H, W, C]}`` for TensorBoard.
      custom_summaries: ``(ema_models, step) -> None``, called at the same steps inside the
        summary writer's context, for anything else (histograms, text).
    """

    model_fns: dict[str, Callable[[], keras.Model]]
    objectives: list[Objective]
    dataset_fn: Callable[[int, tf.distribute.InputContext, int], tf.data.Dataset]
    num_levels: int = 0
    image_summaries: Callable[[dict, int], dict[str, np.ndarray]] | None = None
    custom_summaries: Callable[[dict, int], None] | None = None


@dataclasses.dataclass
class TrainResult:
    step: int
    loss: float
    seconds: float
    models: dict
    ema_models: dict
    checkpoint: str | None


class _StopSignals:
    """While active (main thread only): SIGINT / SIGTERM ask the loop to stop and save.

    Python runs signal handlers only between bytecodes, not while a compiled loop or a
    collective is running, so the first signal takes effect at the end of the current loop
    of steps. A second SIGINT exits the process at once (exit code 130, no save; the last
    checkpoint stays): a watcher thread sees it through ``signal.set_wakeup_fd`` even while
    the main thread is inside TensorFlow.
    """

    def __init__(self):
        self.signum = None
        self._previous = {}
        self._wakeup = None

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            logging.warning(
                "%s: stopping after the current loop of steps and saving a checkpoint "
                "(Ctrl-C again to stop now without saving)",
                signal.Signals(signum).name,
            )

    def _watch(self, fd):
        seen = 0
        try:
            while data := os.read(fd, 64):  # b"" (EOF) once __exit__ closes the write end
                seen += sum(b == signal.SIGINT for b in data)
                if seen >= 2:
                    logging.warning("second SIGINT: exiting now; the last checkpoint stays")
                    os._exit(128 + signal.SIGINT)
        finally:
            os.close(fd)

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except ValueError:
            os.close(read_fd)
            os.close(write_fd)
            return self
        self._wakeup = (write_fd, previous_fd)
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            if handler is not None:  # None: installed from C, cannot be restored
                signal.signal(sig, handler)
        if self._wakeup:
            write_fd, previous_fd = self._wakeup
            signal.set_wakeup_fd(previous_fd)
            os.close(write_fd)  # EOF ends the watcher, which closes the read end
        return False


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_json_atomic(path: str, obj) -> None:
    """Write JSON to a temporary name, then rename over ``path`` (local paths, GCS, HDFS)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(obj, indent=2))
    tf.io.gfile.rename(tmp, path, overwrite=True)


def build_models(bundle: ModelBundle, strategy: tf.distribute.Strategy):
    """Create the live models, their EMA copies and the optimizers inside the strategy scope."""
    with strategy.scope():
        models = {name: fn() for name, fn in bundle.model_fns.items()}
        ema_models = {name: fn() for name, fn in bundle.model_fns.items()}
        for name, model in models.items():
            for ema_w, w in zip(ema_models[name].weights, model.weights, strict=True):
                ema_w.assign(w)
        optimizers = {}
        for obj in bundle.objectives:
            opt = obj.optimizer_fn()
            # Build slots now: a Keras 3 optimizer built lazily inside a distributed step fails.
            opt.build(obj.variables(models))
            # The loop all-reduces each gradient once itself (it needs the global gradient's
            # norm first); stop the Keras optimizer summing it over replicas a second time.
            opt._all_reduce_sum_gradients = list
            optimizers[obj.name] = opt
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    return models, ema_models, optimizers, step


def ema_decay(step, rate: float, warmup: bool = True) -> tf.Tensor:
    """EMA decay used at 1-based ``step``: ``rate``, or min(rate, (1 + t) / (10 + t)) with warm-up.

    The warm-up is the ``num_updates`` rule of ``tf.train.ExponentialMovingAverage``.
    """
    rate = tf.constant(rate, tf.float32)
    if not warmup:
        return rate
    t = tf.cast(step, tf.float32)
    return tf.minimum(rate, (1.0 + t) / (10.0 + t))


def make_checkpoint(models, ema_models, optimizers, step) -> tf.train.Checkpoint:
    items = {"step": step}
    items.update({f"model_{k}": v for k, v in models.items()})
    items.update({f"ema_{k}": v for k, v in ema_models.items()})
    items.update({f"optimizer_{k}": v for k, v in optimizers.items()})
    return tf.train.Checkpoint(**items)


def load_ema_models(model_fns: dict, checkpoint_dir: str, checkpoint: str | None = None):
    """Restore only the EMA weights (what samplers and exports use) from a training run.

    Returns (models, step). ``checkpoint`` picks a specific prefix; default: the latest.
    """
    path = checkpoint or tf.train.latest_checkpoint(checkpoint_dir)
    if path is None:
        raise FileNotFoundError(f"no checkpoint found in {checkpoint_dir!r}: train first")
    models = {name: fn() for name, fn in model_fns.items()}
    step = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(step=step, **{f"ema_{k}": v for k, v in models.items()})
    ckpt.restore(path).expect_partial().assert_existing_objects_matched()
    return models, int(step.numpy())


def _next_boundary(step: int, every: int) -> int:
    return (step // every + 1) * every


def train(
    bundle: ModelBundle,
    config: TrainConfig,
    workdir: str,
    strategy: tf.distribute.Strategy | None = None,
) -> TrainResult:
    """Train ``bundle`` for ``config.num_steps`` steps, resuming from ``workdir`` if possible."""
    strategy = strategy or tf.distribute.get_strategy()
    chief = is_chief(strategy)
    multi_worker = distribute.is_multi_worker(strategy)
    replicas = strategy.num_replicas_in_sync
    accum = int(config.grad_accum_steps)
    if config.batch_size % (replicas * accum):
        raise ValueError(
            f"batch_size ({config.batch_size}) must be divisible by the number of replicas "
            f"({replicas}) x grad_accum_steps ({accum})"
        )
    micro_batch = config.batch_size // (replicas * accum)
    # Seeds Keras' initialisers (and Python/NumPy/TF global RNGs), so the same seed gives
    # the same initial weights: a fresh run and a resumed one start from identical states.
    keras.utils.set_random_seed(config.seed)
    models, ema_models, optimizers, step_var = build_models(bundle, strategy)
    ckpt = make_checkpoint(models, ema_models, optimizers, step_var)
    # Every worker resumes from the chief's checkpoints (a directory they all can read).
    ckpt_dir = os.path.join(workdir, "checkpoints")
    manager = (
        tf.train.CheckpointManager(
            ckpt, ckpt_dir, max_to_keep=config.keep_checkpoints, step_counter=step_var
        )
        if chief
        else None
    )
    latest = tf.train.latest_checkpoint(ckpt_dir)
    if latest:
        ckpt.restore(latest).assert_existing_objects_matched()
    start_step = int(step_var.numpy())
    if start_step:
        logging.info("resumed from %s at step %d", latest, start_step)

    def input_fn(ctx: tf.distribute.InputContext):
        return bundle.dataset_fn(config.batch_size, ctx, start_step)

    dist_ds = strategy.distribute_datasets_from_function(input_fn)
    iterator = iter(dist_ds)
    base_seed = tf.constant([config.seed, 0x5C0E], tf.int32)
    num_levels = max(int(bundle.num_levels), 1)
    global_batch = config.batch_size

    def local_grads(i, batch, seed):
        """This replica's share of the loss of objective i and its gradient (no communication,
        so it can be XLA-compiled)."""
        obj = bundle.objectives[i]
        variables = obj.variables(models)
        with tf.GradientTape() as tape:
            out = obj.loss_fn(models, batch, seed)
            per_example = tf.cast(out.loss, tf.float32)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        grads = tape.gradient(loss, variables)
        grads = [
            tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, variables, strict=True)
        ]
        levels = out.levels if out.levels is not None else tf.zeros_like(per_example, tf.int32)
        metrics = out.metrics or {}
        missing = [n for n in obj.metric_names if n not in metrics]
        if missing:
            raise KeyError(f"objective {obj.name!r}: loss_fn returned no metrics {missing}")
        return grads, loss, per_example, levels, [metrics[n] for n in obj.metric_names]

    if config.jit_compile:
        local_grads = tf.function(local_grads, jit_compile=True)

    def shard_grads(i, batch, step, replica_id):
        """Objective i on this replica's micro-batches, one after another: summed gradients
        and loss, concatenated per-example statistics."""
        step_seed = tf.random.experimental.stateless_fold_in(base_seed, step, alg="philox")
        outs = []
        for a in range(accum):
            part = batch
            if accum > 1:
                part = tf.nest.map_structure(
                    lambda t, a=a: t[a * micro_batch : (a + 1) * micro_batch], batch
                )
                if outs:  # start micro-batch a after a - 1: one micro-batch in memory at a time
                    with tf.control_dependencies(outs[-1][0]):
                        part = tf.nest.map_structure(tf.identity, part)
            shard = tf.cast(replica_id, tf.int32) * accum + a
            seed = tf.random.experimental.stateless_fold_in(step_seed, shard, alg="philox")
            seed = tf.random.experimental.stateless_fold_in(seed, i, alg="philox")
            outs.append(local_grads(i, part, seed))
        if accum == 1:
            return outs[0]
        grads = [tf.add_n(list(g)) for g in zip(*[o[0] for o in outs], strict=True)]
        loss = tf.add_n([o[1] for o in outs])
        per_example, levels = (tf.concat([o[k] for o in outs], 0) for k in (2, 3))
        metrics = [tf.concat(list(m), 0) for m in zip(*[o[4] for o in outs], strict=True)]
        return grads, loss, per_example, levels, metrics

    def compute_grads(i, batch, step):
        """Replica fn: loss and global gradient of objective i, plus summary statistics."""
        obj = bundle.objectives[i]
        ctx = tf.distribute.get_replica_context()
        grads, loss, per_example, levels, metrics = shard_grads(
            i, batch, step, ctx.replica_id_in_sync_group
        )
        # The global gradient (summed over replicas) gives the true norm for the NaN guard,
        # clipping and summaries; the optimizers apply it as it is (see build_models).
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        norm = tf.linalg.global_norm(grads)
        ok = tf.math.is_finite(ctx.all_reduce(tf.distribute.ReduceOp.SUM, loss))
        ok = tf.logical_and(ok, tf.math.is_finite(norm))
        if obj.grad_clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, obj.grad_clip_norm, use_norm=norm)
        lsum = tf.math.unsorted_segment_sum(per_example, levels, num_levels)
        lcnt = tf.math.unsorted_segment_sum(tf.ones_like(per_example), levels, num_levels)
        # Each replica's share of the global-batch mean; the SUM over replicas is the mean.
        msum = tf.reshape(
            [tf.reduce_sum(tf.cast(m, tf.float32)) / global_batch for m in metrics],
            [len(obj.metric_names)],
        )
        return grads, loss, lsum, lcnt, norm, msum, 1.0 - tf.cast(ok, tf.float32)

    def apply_grads(i, grads):
        obj = bundle.objectives[i]
        optimizers[obj.name].apply(grads, obj.variables(models))

    n_obj = len(bundle.objectives)
    ema_pairs = [
        (e, w)
        for name in models
        for e, w in zip(ema_models[name].weights, models[name].weights, strict=True)
    ]
    sum_op = tf.distribute.ReduceOp.SUM

    @tf.function(input_signature=[tf.TensorSpec([], tf.int64)])
    def train_loop(n_steps):
        loss_acc = tf.zeros([n_obj])
        level_sum = tf.zeros([n_obj, num_levels])
        level_cnt = tf.zeros([n_obj, num_levels])
        gnorm_acc = tf.zeros([n_obj])
        metric_acc = [tf.zeros([len(obj.metric_names)]) for obj in bundle.objectives]
        done = tf.constant(0, tf.int64)
        bad_step = tf.constant(-1, tf.int64)
        for _ in tf.range(n_steps):
            step = step_var + 1  # 1-based step being taken
            batch = next(iterator)
            stats = []
            bad = tf.constant(0.0)
            for i in range(n_obj):  # objectives run in order; each sees the previous update
                grads, *rest = strategy.run(compute_grads, args=(i, batch, step))
                rest = [strategy.reduce(sum_op, t, axis=None) for t in rest]
                bad += rest[-1]
                stats.append(rest[:-1])

                def apply(i=i, grads=grads):
                    strategy.run(apply_grads, args=(i, grads))
                    return tf.constant(True)

                # The branch is taken in cross-replica context, not inside the replica fn,
                # where the optimizer's all-reduce could not cross it. A non-finite update
                # is never applied, so the weights stay the last good ones.
                tf.cond(bad > 0, lambda: tf.constant(False), apply)
            if bad > 0:
                bad_step = step
                break
            decay = ema_decay(step, config.ema_rate, config.ema_warmup)
            for e, w in ema_pairs:
                e.assign(decay * e + (1.0 - decay) * w)
            step_var.assign(step)
            loss_acc += tf.stack([st[0] for st in stats])
            level_sum += tf.stack([st[1] for st in stats])
            level_cnt += tf.stack([st[2] for st in stats])
            gnorm_acc += tf.stack([st[3] for st in stats]) / replicas
            metric_acc = [acc + st[4] for acc, st in zip(metric_acc, stats, strict=True)]
            done += 1
        denom = tf.cast(tf.maximum(done, 1), tf.float32)
        return {
            "loss": loss_acc / denom,
            "level_loss": level_sum / tf.maximum(level_cnt, 1.0),
            "grad_norm": gnorm_acc / denom,
            "metrics": [acc / denom for acc in metric_acc],
            "steps": done,
            "bad_step": bad_step,
        }

    writer = (
        tf.summary.create_file_writer(os.path.join(workdir, "tb"))
        if chief
        else tf.summary.create_noop_writer()
    )

    def write_images(step):
        if bundle.custom_summaries is not None:
            with writer.as_default(step=step):
                bundle.custom_summaries(ema_models, step)
        if bundle.image_summaries is None:
            return
        images = bundle.image_summaries(ema_models, step)
        with writer.as_default(step=step):
            for tag, img in images.items():
                img = np.asarray(img)
                tf.summary.image(tag, img if img.ndim == 4 else img[None], max_outputs=8)

    def write_scalars(step, out, done, dt):
        losses = out["loss"].numpy()
        last_loss = float(losses.sum())
        with writer.as_default(step=step):
            tf.summary.scalar("loss", last_loss)
            tf.summary.scalar("steps_per_sec", done / max(dt, 1e-9))
            tf.summary.scalar("examples_per_sec", done * global_batch / max(dt, 1e-9))
            for i, obj in enumerate(bundle.objectives):
                prefix = obj.name
                tf.summary.scalar(f"{prefix}/loss", losses[i])
                tf.summary.scalar(f"{prefix}/grad_norm", out["grad_norm"][i])
                lr = optimizers[obj.name].learning_rate
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
            logging.DEBUG if not bar.disable else logging.INFO,
            "step %d loss %.5g (%.1f steps/s)",
            step,
            last_loss,
            done / max(dt, 1e-9),
        )

    def save(step):
        """Every worker saves (saving may need collectives); only the chief's is kept."""
        if chief:
            path = manager.save(checkpoint_number=step)
            logging.info("saved checkpoint %s", path)
            return path
        with distribute.write_dir(ckpt_dir, strategy) as tmp:
            ckpt.write(os.path.join(tmp, f"ckpt-{step}"))
        return None

    @tf.function
    def any_worker(flag):
        """True on every worker if any worker passed True (so all stop at the same step)."""
        value = strategy.run(lambda: tf.cast(flag, tf.int32))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) > 0

    def collective(fn, *args):
        """Run a function with collectives; a lost peer becomes WorkerLostError."""
        try:
            return fn(*args)
        except (
            tf.errors.UnavailableError,
            tf.errors.DeadlineExceededError,
            tf.errors.AbortedError,
            tf.errors.CancelledError,
        ) as e:
            if not multi_worker:
                raise
            raise WorkerLostError(step, latest_path(), e) from e

    def latest_path():
        return manager.latest_checkpoint if chief else tf.train.latest_checkpoint(ckpt_dir)

    step = start_step
    steady_steps, steady_seconds = 0, 0.0
    last_loss = float("nan")
    t_start = time.time()
    bar = tqdm(
        total=config.num_steps,
        initial=start_step,
        unit="step",
        dynamic_ncols=True,
        disable=not (config.progress and chief),
        mininterval=1.0,
    )
    with _StopSignals() as stop:
        try:
            while step < config.num_steps:
                nxt = min(
                    config.num_steps,
                    step + config.steps_per_loop,
                    _next_boundary(step, config.log_every),
                    _next_boundary(step, config.checkpoint_every),
                    _next_boundary(step, config.sample_every)
                    if config.sample_every
                    else config.num_steps,
                )
                t0 = time.time()
                out = collective(train_loop, tf.constant(nxt - step, tf.int64))
                done = int(out["steps"])
                dt = time.time() - t0
                if step > start_step:  # the first call also traces and compiles
                    steady_steps += done
                    steady_seconds += dt
                if int(out["bad_step"]) >= 0:
                    raise NonFiniteLossError(int(out["bad_step"]), latest_path())
                step += done
                bar.update(done)
                losses = out["loss"].numpy()
                last_loss = float(losses.sum())
                bar.set_postfix(loss=f"{last_loss:.4g}")
                if step % config.log_every == 0 or step == config.num_steps:
                    write_scalars(step, out, done, dt)
                if config.sample_every and step % config.sample_every == 0 and chief:
                    write_images(step)
                stopping = stop.signum is not None
                if multi_worker:
                    stopping = bool(collective(any_worker, tf.constant(stopping)))
                if stopping or step % config.checkpoint_every == 0 or step == config.num_steps:
                    save(step)
                if stopping:
                    raise TrainingInterrupted(step, latest_path(), stop.signum or signal.SIGTERM)
        finally:
            bar.close()
    seconds = time.time() - t_start
    if chief and (not config.sample_every or config.num_steps % config.sample_every):
        write_images(step)
    writer.flush()
    if chief:
        summary = {
            "step": step,
            "final_loss": last_loss,
            "train_seconds": seconds,
            "start_step": start_step,
            "replicas": replicas,
            "grad_accum_steps": accum,
            "global_batch": global_batch,
            # throughput after the first compiled call (tracing and compilation excluded)
            "examples_per_sec": steady_steps * global_batch / steady_seconds
            if steady_seconds
            else None,
            "peak_rss_mb": _peak_rss_mb(),
        }
        write_json_atomic(os.path.join(workdir, "train_summary.json"), summary)
    return TrainResult(step, last_loss, seconds, models, ema_models, latest_path())
