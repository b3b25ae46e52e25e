"""One training step as a unit: the models it trains, their gradients and their updates.

``TrainStep`` is built from a ``ModelBundle``, a ``TrainConfig`` and a strategy. It owns the
live models, their EMA copies, one optimizer per objective and the step counter, and runs a
step on one global batch, objective after objective:

1. ``shard_grads``: on each replica, its micro-batches one after another, each with its
   shard's seed; ``local_grads``: the loss of the objective on one shard and its gradient
   (no communication, so it can be XLA-compiled);
2. ``compute_grads``: the all-reduce over replicas, the NaN guard, clipping, per-level
   statistics;
3. ``apply_grads``: the update, skipped (in cross-replica context) if any replica saw a
   non-finite loss or gradient;
4. then, after every objective, ``update_ema`` and the step counter (``one_step`` is 1-4;
   with ``jit`` on one replica it is one XLA program, otherwise ``local_grads`` is).

``make_train_loop(iterator)`` compiles many steps into one ``tf.function`` call; ``loss``
evaluates the objectives on a batch without changing anything (a held-out loss). The seeds
are those described in ``training.loop``, which owns everything around the step:
checkpoints, the input pipeline, summaries, signals, workers.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_score.config import TrainConfig, check_batch_split
from tf_score.training import posthoc_ema
from tf_score.training.bundle import ModelBundle

_SUM = tf.distribute.ReduceOp.SUM


def copies(bundle: ModelBundle, models: dict) -> dict:
    """New models of ``bundle`` holding ``models``' weights (call inside the strategy scope)."""
    out = {name: fn() for name, fn in bundle.model_fns.items()}
    for name, model in models.items():
        for copy_w, w in zip(out[name].weights, model.weights, strict=True):
            copy_w.assign(w)
    return out


def build_models(bundle: ModelBundle, strategy: tf.distribute.Strategy, step_var=None):
    """Create the live models, their EMA copies, the optimizers and (unless ``step_var`` is
    given: an int64 scalar variable made in this scope) the step counter inside the strategy
    scope."""
    with strategy.scope():
        models = {name: fn() for name, fn in bundle.model_fns.items()}
        ema_models = copies(bundle, models)
        optimizers = {}
        for obj in bundle.objectives:
            opt = obj.optimizer_fn()
            # Build slots now: a Keras 3 optimizer built lazily inside a distributed step fails.
            opt.build(obj.variables(models))
            # The loop all-reduces each gradient once itself (it needs the global gradient's
            # norm first); stop the Keras optimizer summing it over replicas a second time.
            # Keras 3 has no public switch for this: a private attribute, whose effect
            # tests/test_train_step.py::test_two_replicas_step_like_one_device_with_two_micro_
            # batches pins (two replicas update exactly as one device).
            opt._all_reduce_sum_gradients = list
            optimizers[obj.name] = opt
        if step_var is None:
            step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    return models, ema_models, optimizers, step_var


def ema_decay(step, rate: float, warmup: bool = True) -> tf.Tensor:
    """EMA decay used at 1-based ``step``: ``rate``, or min(rate, (1 + t) / (10 + t)) with warm-up.

    The warm-up is the ``num_updates`` rule of ``tf.train.ExponentialMovingAverage``.
    """
    rate = tf.constant(rate, tf.float32)
    if not warmup:
        return rate
    t = tf.cast(step, tf.float32)
    return tf.minimum(rate, (1.0 + t) / (10.0 + t))


def _is_distributed(batch) -> bool:
    return any(isinstance(t, tf.distribute.DistributedValues) for t in tf.nest.flatten(batch))


class TrainStep:
    """The step of ``bundle``'s objectives on global batches of ``config.batch_size`` rows.

    Building it checks that the global batch splits into replicas x ``grad_accum_steps``
    micro-batches, seeds Keras (and Python/NumPy/TF's global RNGs) with ``seed``, and
    builds (``build_models``) the ``models``, ``ema_models``, ``optimizers`` (by objective
    name) and the ``step_var`` counter (the last step taken; ``step_var``: one made by the
    caller, e.g. a Keras model's own weight) under ``strategy``.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        config: TrainConfig,
        strategy: tf.distribute.Strategy | None = None,
        seed: int = 0,
        step_var=None,
    ):
        strategy = strategy or tf.distribute.get_strategy()
        self.bundle, self.config, self.strategy = bundle, config, strategy
        self.replicas = strategy.num_replicas_in_sync
        self.accum = int(config.grad_accum_steps)
        check_batch_split(config.batch_size, self.replicas, self.accum)
        self.global_batch = config.batch_size
        self.micro_batch = config.batch_size // (self.replicas * self.accum)
        # Seeds Keras' initialisers (and Python/NumPy/TF global RNGs), so the same seed gives
        # the same initial weights: a fresh run and a resumed one start from identical states.
        keras.utils.set_random_seed(seed)
        self.models, self.ema_models, self.optimizers, self.step_var = build_models(
            bundle, strategy, step_var
        )
        self.num_levels = max(int(bundle.num_levels), 1)
        self._base_seed = tf.constant([seed, 0x5C0E], tf.int32)
        self._ema_pairs = [
            (e, w)
            for name in self.models
            for e, w in zip(self.ema_models[name].weights, self.models[name].weights, strict=True)
        ]
        # post-hoc EMA: one copy of the models per power-function profile (``posthoc_ema``)
        self.sigma_rels = tuple(config.posthoc_ema)
        with strategy.scope():
            self.profiles = [copies(bundle, self.models) for _ in self.sigma_rels]
        self._profile_pairs = [
            (posthoc_ema.sigma_rel_to_gamma(sigma_rel), [
                (p, w) for name in self.models
                for p, w in zip(profile[name].weights, self.models[name].weights, strict=True)
            ])
            for sigma_rel, profile in zip(self.sigma_rels, self.profiles, strict=True)
        ]  # fmt: skip
        self._local_grads, self._local_loss = self.local_grads, self.local_loss
        self._one_step = self.one_step
        if config.jit:
            self._local_loss = tf.function(self.local_loss, jit_compile=True)
            if self.replicas == 1:  # the whole step is one XLA program
                self._one_step = tf.function(self.one_step, jit_compile=True)
            else:  # the all-reduce crosses replicas: compile each replica's part
                self._local_grads = tf.function(self.local_grads, jit_compile=True)

    # --- one replica ------------------------------------------------------------------------

    def local_loss(self, i: int, batch, seed, ema: bool = False):
        """Objective i on one shard: its ``LossOutput``, the per-example loss [B] (float32)
        and this shard's share of the global-batch mean (``compute_average_loss``)."""
        obj = self.bundle.objectives[i]
        out = obj.loss_fn(self.ema_models if ema else self.models, batch, seed)
        per_example = tf.cast(out.loss, tf.float32)
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch)
        return out, per_example, loss

    def local_grads(self, i: int, batch, seed):
        """This replica's share of the loss of objective i and its gradient (no communication,
        so it can be XLA-compiled)."""
        obj = self.bundle.objectives[i]
        variables = obj.variables(self.models)
        with tf.GradientTape() as tape:
            out, per_example, loss = self.local_loss(i, batch, seed)
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

    def _micro_batch(self, batch, a: int, after=None):
        """Micro-batch a of this replica's batch; with ``after``, read once those are done."""
        if self.accum == 1:
            return batch
        n = self.micro_batch
        part = tf.nest.map_structure(lambda t: t[a * n : (a + 1) * n], batch)
        if after is not None:
            # start micro-batch a after a - 1: one micro-batch in memory at a time
            with tf.control_dependencies(after):
                part = tf.nest.map_structure(tf.identity, part)
        return part

    def _shard_seed(self, step_seed, replica_id, a: int, i: int):
        """The seed of objective i on shard ``replica_id * grad_accum_steps + a``."""
        shard = tf.cast(replica_id, tf.int32) * self.accum + a
        seed = tf.random.experimental.stateless_fold_in(step_seed, shard, alg="philox")
        return tf.random.experimental.stateless_fold_in(seed, i, alg="philox")

    def shard_grads(self, i: int, batch, step, replica_id):
        """Objective i on this replica's micro-batches, one after another: summed gradients
        and loss, concatenated per-example statistics."""
        step_seed = tf.random.experimental.stateless_fold_in(self._base_seed, step, alg="philox")
        outs = []
        for a in range(self.accum):
            part = self._micro_batch(batch, a, after=outs[-1][0] if outs else None)
            outs.append(self._local_grads(i, part, self._shard_seed(step_seed, replica_id, a, i)))
        if self.accum == 1:
            return outs[0]
        grads = [tf.add_n(list(g)) for g in zip(*[o[0] for o in outs], strict=True)]
        loss = tf.add_n([o[1] for o in outs])
        per_example, levels = (tf.concat([o[k] for o in outs], 0) for k in (2, 3))
        metrics = [tf.concat(list(m), 0) for m in zip(*[o[4] for o in outs], strict=True)]
        return grads, loss, per_example, levels, metrics

    def compute_grads(self, i: int, batch, step):
        """Replica fn: loss and global gradient of objective i, plus summary statistics."""
        obj = self.bundle.objectives[i]
        ctx = tf.distribute.get_replica_context()
        grads, loss, per_example, levels, metrics = self.shard_grads(
            i, batch, step, ctx.replica_id_in_sync_group
        )
        # The global gradient (summed over replicas) gives the true norm for the NaN guard,
        # clipping and summaries; the optimizers apply it as it is (see build_models).
        grads = ctx.all_reduce(_SUM, grads)
        norm = tf.linalg.global_norm(grads)
        ok = tf.math.is_finite(ctx.all_reduce(_SUM, loss))
        ok = tf.logical_and(ok, tf.math.is_finite(norm))
        if obj.grad_clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, obj.grad_clip_norm, use_norm=norm)
        lsum = tf.math.unsorted_segment_sum(per_example, levels, self.num_levels)
        lcnt = tf.math.unsorted_segment_sum(tf.ones_like(per_example), levels, self.num_levels)
        # Each replica's share of the global-batch mean; the SUM over replicas is the mean.
        msum = tf.reshape(
            [tf.reduce_sum(tf.cast(m, tf.float32)) / self.global_batch for m in metrics],
            [len(obj.metric_names)],
        )
        return grads, loss, lsum, lcnt, norm, msum, 1.0 - tf.cast(ok, tf.float32)

    def apply_grads(self, i: int, grads):
        """Replica fn: the optimizer of objective i applies the (global) gradient."""
        obj = self.bundle.objectives[i]
        self.optimizers[obj.name].apply(grads, obj.variables(self.models))

    # --- cross-replica ----------------------------------------------------------------------

    def run_objectives(self, batch, step):
        """Every objective on the step's batch, in order, each applied unless a replica saw a
        non-finite value so far: per objective its statistics (summed over replicas: loss,
        level sums, level counts, grad norm, metrics), and > 0 if the step was bad."""
        stats = []
        bad = tf.constant(0.0)
        for i in range(len(self.bundle.objectives)):  # in order; each sees the previous update
            grads, *rest = self.strategy.run(self.compute_grads, args=(i, batch, step))
            rest = [self.strategy.reduce(_SUM, t, axis=None) for t in rest]
            bad += rest[-1]
            stats.append(rest[:-1])

            def apply(i=i, grads=grads):
                self.strategy.run(self.apply_grads, args=(i, grads))
                return tf.constant(True)

            # The branch is taken in cross-replica context, not inside the replica fn,
            # where the optimizer's all-reduce could not cross it. A non-finite update
            # is never applied, so the weights stay the last good ones.
            tf.cond(bad > 0, lambda: tf.constant(False), apply)
        return stats, bad

    def update_ema(self, step):
        """Move the EMA weights towards the live ones with the decay of 1-based ``step``, and
        each post-hoc EMA profile with its ``power_beta``: e -= (1 - decay)(e - w), the same
        average as decay e + (1 - decay) w in one update per weight."""
        decay = ema_decay(step, self.config.ema_rate, self.config.ema_warmup)
        for e, w in self._ema_pairs:
            e.assign_sub((1.0 - decay) * (e - w))
        for gamma, pairs in self._profile_pairs:
            beta = posthoc_ema.power_beta(step, gamma)
            for p, w in pairs:
                p.assign_sub((1.0 - beta) * (p - w))

    def one_step(self, batch, step):
        """The step numbered ``step`` (1-based) on ``batch``: ``run_objectives``, then, if
        every value was finite, ``update_ema`` and the step counter. With ``config.jit`` on
        one replica, this whole function is one XLA program."""
        stats, bad = self.run_objectives(batch, step)

        def finish():
            self.update_ema(step)
            self.step_var.assign(step)
            return tf.constant(True)

        tf.cond(bad > 0, lambda: tf.constant(False), finish)
        return stats, bad

    def next_step(self, batch):
        """``one_step`` numbered ``step_var + 1`` on ``batch`` (one XLA program with
        ``config.jit`` on one replica), in cross-replica context: (stats, bad)."""
        return self._one_step(batch, self.step_var + 1)

    def make_train_loop(self, iterator):
        """The compiled loop over batches of ``iterator`` (of the strategy's distributed
        dataset): ``train_loop(n_steps)`` (an int64 scalar tensor) takes up to ``n_steps``
        steps and stops early at a non-finite one, leaving it unapplied. It returns the means
        over the steps done of ``loss`` [objectives], ``level_loss`` [objectives, levels],
        ``grad_norm`` [objectives] and ``metrics`` (per objective, [metric_names]), with
        ``steps`` (done) and ``bad_step`` (the 1-based non-finite step, or -1)."""

        @tf.function(input_signature=[tf.TensorSpec([], tf.int64)])
        def train_loop(n_steps):
            return self._run_steps(iterator, n_steps)

        return train_loop

    def _run_steps(self, iterator, n_steps):
        objectives = self.bundle.objectives
        n_obj = len(objectives)
        loss_acc = tf.zeros([n_obj])
        level_sum = tf.zeros([n_obj, self.num_levels])
        level_cnt = tf.zeros([n_obj, self.num_levels])
        gnorm_acc = tf.zeros([n_obj])
        metric_acc = [tf.zeros([len(obj.metric_names)]) for obj in objectives]
        done = tf.constant(0, tf.int64)
        bad_step = tf.constant(-1, tf.int64)
        for _ in tf.range(n_steps):
            batch = next(iterator)
            stats, bad = self.next_step(batch)
            if bad > 0:
                bad_step = self.step_var + 1  # not taken: the counter is the last good step
                break
            loss_acc += tf.stack([st[0] for st in stats])
            level_sum += tf.stack([st[1] for st in stats])
            level_cnt += tf.stack([st[2] for st in stats])
            gnorm_acc += tf.stack([st[3] for st in stats]) / self.replicas
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

    # --- held-out loss ----------------------------------------------------------------------

    def loss(self, batch, step, ema: bool = False) -> dict[str, tf.Tensor]:
        """Held-out loss: each objective's mean loss on ``batch`` with the seeds of 1-based
        step ``step``, changing nothing the step owns (weights, EMA, optimizer state, step).

        ``batch`` is a global batch shaped like the training ones: ``config.batch_size``
        rows, as a plain structure of tensors (the same on every worker; split in order
        between replicas and micro-batches as in training) or as an element of the strategy's
        distributed dataset. Unlike training, where objective i sees the updates of 0..i-1 of
        the same step, every objective sees the same weights: for objective 0 this is the
        training loss step ``step`` reports, before its update. ``ema``: evaluate the EMA
        weights instead of the live ones. ``loss_fn`` runs as in training, so a model's own
        training-mode state (BatchNorm statistics, Keras dropout seeds) would still change.
        """
        if not _is_distributed(batch):
            rows = tf.nest.flatten(batch)[0].shape[0]
            if rows is not None and rows != self.global_batch:
                raise ValueError(
                    f"held-out batch has {rows} rows; the loss is defined on a global batch of "
                    f"batch_size={self.global_batch} rows (split as in training)"
                )
            batch = self._split(batch)
        return self._held_out(batch, tf.convert_to_tensor(step, tf.int64), ema)

    def _split(self, batch):
        """A plain global batch as per-replica values: replica r gets the r-th share of rows."""
        if self.replicas == 1:
            return batch
        n = self.global_batch // self.replicas

        def value_fn(ctx):
            r = ctx.replica_id_in_sync_group
            return tf.nest.map_structure(lambda t: t[r * n : (r + 1) * n], batch)

        return self.strategy.experimental_distribute_values_from_function(value_fn)

    @tf.function
    def _held_out(self, batch, step, ema):
        losses = self.strategy.run(self.replica_loss, args=(batch, step, ema))
        losses = self.strategy.reduce(_SUM, losses, axis=None)
        return {obj.name: losses[i] for i, obj in enumerate(self.bundle.objectives)}

    def replica_loss(self, batch, step, ema=False):
        """Replica fn: this replica's share of each objective's held-out loss [objectives] on
        its shard of the global batch, with the seeds of 1-based ``step`` (``loss``)."""
        replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
        step_seed = tf.random.experimental.stateless_fold_in(self._base_seed, step, alg="philox")
        losses = []
        for i in range(len(self.bundle.objectives)):
            parts = []
            for a in range(self.accum):
                part = self._micro_batch(batch, a, after=parts[-1:] or None)
                seed = self._shard_seed(step_seed, replica_id, a, i)
                parts.append(self._local_loss(i, part, seed, ema=ema)[2])
            losses.append(tf.add_n(parts))
        return tf.stack(losses)
