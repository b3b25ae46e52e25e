"""The training step on its own (``train_step.TrainStep``, no loop, no files): its update is the
optimizer's on the gradient of the objective's loss with the documented seeds, the held-out
loss changes nothing, the NaN guard, micro-batches.

A tiny self-contained bundle: an MLP reconstructing 3-D Gaussian inputs, the input perturbed by
noise drawn from the step's seed (``noise=0``: a deterministic per-example loss). Tolerances
are float32 round-off between the compiled step and the eager GradientTape recomputation.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_score.config import TrainConfig
from tf_score.training import distribute
from tf_score.training import step as train_step
from tf_score.training.bundle import LossOutput, ModelBundle, Objective

DIM = 3
SEED = 5


def _global_batch(k, rows=8):
    """Global batch of 1-based step k: a function of k only."""
    return tf.random.stateless_normal([rows, DIM], tf.stack([tf.constant(7, tf.int64), k]))


def _dataset_fn(poison_step=None):
    def dataset_fn(global_batch, ctx, start_step):
        local = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        per_replica = global_batch // ctx.num_replicas_in_sync
        first = ctx.input_pipeline_id * local

        def shares(k):  # this pipeline's per-replica batches of step k, in replica order
            x = _global_batch(k, global_batch)
            if poison_step is not None:  # one NaN in one example
                bad = tf.tensor_scatter_nd_update(x, [[0, 0]], [np.nan])
                x = tf.where(k == poison_step, bad, x)
            parts = tf.reshape(x, [-1, per_replica, DIM])[first : first + local]
            return tf.data.Dataset.from_tensor_slices(parts)

        return tf.data.Dataset.range(start_step + 1, 2**62).flat_map(shares)

    return dataset_fn


def _mlp():
    return keras.Sequential(
        [keras.Input((DIM,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(DIM)]
    )


def _objective(name, target_scale, noise, optimizer_fn):
    def loss_fn(models, x, seed):
        eps = tf.random.stateless_normal(tf.shape(x), seed)
        err = models[name](x + noise * eps) - target_scale * x
        return LossOutput(tf.reduce_sum(tf.square(err), axis=1))

    return Objective(name, loss_fn, lambda models: models[name].trainable_variables, optimizer_fn)


def _bundle(noise=0.3, optimizer="sgd", two_objectives=False, poison_step=None):
    def optimizer_fn():
        if optimizer == "sgd":
            return keras.optimizers.SGD(0.1)
        return keras.optimizers.Adam(0.01)

    objectives = [_objective("a", 1.0, noise, optimizer_fn)]
    if two_objectives:
        objectives.append(_objective("b", 0.5, noise, optimizer_fn))
    return ModelBundle(
        model_fns={obj.name: _mlp for obj in objectives},
        objectives=objectives,
        dataset_fn=_dataset_fn(poison_step),
    )


def _config(**kw):
    return TrainConfig(**{"num_steps": 10, "batch_size": 8, "ema_rate": 0.9, **kw})


def _step(bundle, config, strategy=None):
    return train_step.TrainStep(bundle, config, strategy, seed=SEED)


def _seed(step, shard=0, objective=0):
    """The documented seed of (1-based step, shard, objective), spelled out by hand."""
    fold = tf.random.experimental.stateless_fold_in
    seed = fold(tf.constant([SEED, 0x5C0E], tf.int32), tf.constant(step, tf.int64), alg="philox")
    return fold(fold(seed, shard, alg="philox"), objective, alg="philox")


def _loop(step, strategy=None):
    strategy = strategy or tf.distribute.get_strategy()
    bundle, batch = step.bundle, step.global_batch
    ds = strategy.distribute_datasets_from_function(lambda ctx: bundle.dataset_fn(batch, ctx, 0))
    return step.make_train_loop(iter(ds))


def _weights(models):
    return [w.numpy() for m in models.values() for w in m.weights]


def _state(step):
    """Every variable the step owns: weights, EMA weights, optimizer state, the step."""
    models = [*step.models.values(), *step.ema_models.values()]
    variables = [v for m in models for v in m.variables]
    variables += [v for opt in step.optimizers.values() for v in opt.variables]
    return [v.numpy().copy() for v in [*variables, step.step_var]]


def _mean_loss(obj, models, x, seed):
    return tf.reduce_mean(obj.loss_fn(models, x, seed).loss)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_step_is_the_optimizer_update_of_the_tape_gradient(optimizer):
    step = _step(_bundle(optimizer=optimizer), _config())
    obj, model = step.bundle.objectives[0], step.models["a"]
    x = _global_batch(tf.constant(1, tf.int64))
    w0 = [v.numpy() for v in model.trainable_variables]

    def tape_grads(seed):
        with tf.GradientTape() as tape:
            loss = _mean_loss(obj, step.models, x, seed)
        return loss, [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]

    def update(grads):
        if optimizer == "sgd":
            return [w - 0.1 * g for w, g in zip(w0, grads, strict=True)]
        # Keras' Adam, first step: m = 0.1 g, v = 0.001 g^2, bias-corrected
        alpha = 0.01 * np.sqrt(1 - 0.999) / (1 - 0.9)
        return [
            w - alpha * (0.1 * g) / (np.sqrt(0.001 * g**2) + 1e-7)
            for w, g in zip(w0, grads, strict=True)
        ]

    loss, grads = tape_grads(_seed(1))
    _, other_grads = tape_grads(_seed(1, shard=1))  # what a wrong seed would give
    out = _loop(step)(tf.constant(1, tf.int64))

    w1 = [v.numpy() for v in model.trainable_variables]
    for got, want, w in zip(w1, update(grads), w0, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(got, w, rtol=0, atol=1e-4)  # the step did move the weights
    if optimizer == "sgd":  # the check above tells the seed of step 1, shard 0, objective 0
        assert not all(
            np.allclose(got, want, rtol=1e-5, atol=1e-6)
            for got, want in zip(w1, update(other_grads), strict=True)
        )
    assert int(out["steps"]) == 1 and int(out["bad_step"]) == -1
    assert float(out["loss"][0]) == pytest.approx(float(loss), rel=1e-6)
    assert float(out["grad_norm"][0]) == pytest.approx(
        float(tf.linalg.global_norm([tf.constant(g) for g in grads])), rel=1e-5
    )
    assert int(step.step_var.numpy()) == 1 and int(step.optimizers["a"].iterations) == 1
    d = 2 / 11  # EMA warm-up decay at step 1
    for e, a, b in zip(_weights(step.ema_models), w0, w1, strict=True):
        np.testing.assert_allclose(e, d * a + (1 - d) * b, rtol=1e-5, atol=1e-7)


def test_held_out_loss_changes_nothing_and_is_each_objectives_mean_loss():
    step = _step(_bundle(two_objectives=True), _config())
    loop = _loop(step)
    loop(tf.constant(2, tf.int64))  # EMA and live weights differ from here on
    x = _global_batch(tf.constant(3, tf.int64))
    before = _state(step)
    live = step.loss(x, 3)
    ema = step.loss(x, 3, ema=True)
    for a, b in zip(before, _state(step), strict=True):
        np.testing.assert_array_equal(a, b)
    assert set(live) == {"a", "b"}
    for i, obj in enumerate(step.bundle.objectives):
        for got, models in [(live, step.models), (ema, step.ema_models)]:
            want = _mean_loss(obj, models, x, _seed(3, objective=i))
            assert float(got[obj.name]) == pytest.approx(float(want), rel=1e-6)
        assert float(live[obj.name]) != pytest.approx(float(ema[obj.name]), rel=1e-4)
    # Step 3's training loss of objective 0 is its held-out loss before the update.
    out = loop(tf.constant(1, tf.int64))
    assert float(out["loss"][0]) == pytest.approx(float(live["a"]), rel=1e-6)
    with pytest.raises(ValueError, match="held-out batch has 4 rows"):
        step.loss(x[:4], 3)


def test_nan_guard_leaves_weights_ema_and_optimizer_unchanged_and_reports_the_step():
    step = _step(_bundle(optimizer="adam", poison_step=3), _config())
    loop = _loop(step)
    initial = _state(step)
    out = loop(tf.constant(2, tf.int64))
    assert int(out["steps"]) == 2 and int(out["bad_step"]) == -1
    good = _state(step)
    assert any(not np.array_equal(a, b) for a, b in zip(initial, good, strict=True))
    out = loop(tf.constant(3, tf.int64))  # steps 3 (poisoned), 4, 5
    assert int(out["bad_step"]) == 3 and int(out["steps"]) == 0
    for a, b in zip(good, _state(step), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(step.step_var.numpy()) == 2
    assert all(np.all(np.isfinite(w)) for w in _weights(step.models))


def test_two_micro_batches_update_like_one_full_batch_without_noise():
    """grad_accum_steps=2 sums the two halves' shares of the global-batch mean: with a
    deterministic per-example loss (noise=0) the update equals the full batch's, to float32
    summation order (rtol 1e-6), over 3 Adam steps."""
    runs = {}
    for accum in (1, 2):
        step = _step(_bundle(noise=0.0, optimizer="adam"), _config(grad_accum_steps=accum))
        out = _loop(step)(tf.constant(3, tf.int64))
        runs[accum] = (_weights(step.models), float(out["loss"][0]))
    for a, b in zip(runs[1][0], runs[2][0], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert runs[1][1] == pytest.approx(runs[2][1], rel=1e-6)


def test_micro_batches_draw_their_own_shards_noise():
    """With noise, micro-batch a is shard a: rows [4a, 4a + 4) use the seed of shard a, so two
    micro-batches are not the full batch (one shard) but the 2-replica run (see test_distribute)."""
    x = _global_batch(tf.constant(1, tf.int64))
    full = _step(_bundle(), _config())
    halves = _step(_bundle(), _config(grad_accum_steps=2))
    obj = halves.bundle.objectives[0]
    per_shard = [
        obj.loss_fn(halves.models, x[4 * a : 4 * a + 4], _seed(1, shard=a)).loss for a in (0, 1)
    ]
    want = float(tf.reduce_mean(tf.concat(per_shard, 0)))
    assert float(halves.loss(x, 1)["a"]) == pytest.approx(want, rel=1e-6)
    assert float(_loop(halves)(tf.constant(1, tf.int64))["loss"][0]) == pytest.approx(
        want, rel=1e-6
    )
    # same initial weights (same seed), other noise
    assert float(full.loss(x, 1)["a"]) != pytest.approx(want, rel=1e-3)


def test_two_replicas_step_like_one_device_with_two_micro_batches():
    assert len(tf.config.list_logical_devices("CPU")) == 2, "conftest configures 2 logical CPUs"
    mirrored = distribute.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    one = _step(_bundle(), _config(grad_accum_steps=2))
    two = _step(_bundle(), _config(), mirrored)
    x = _global_batch(tf.constant(4, tf.int64))
    # a plain global batch is split between the replicas as the loop splits its batches
    assert float(two.loss(x, 4)["a"]) == pytest.approx(float(one.loss(x, 4)["a"]), rel=1e-6)
    out_one = _loop(one)(tf.constant(2, tf.int64))
    out_two = _loop(two, mirrored)(tf.constant(2, tf.int64))
    assert float(out_two["loss"][0]) == pytest.approx(float(out_one["loss"][0]), rel=1e-6)
    for a, b in zip(_weights(one.models), _weights(two.models), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
