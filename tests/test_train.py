"""The training loop: resume replays exactly, the NaN guard, summaries, learning."""

import dataclasses
import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from tf_score import config, data
from tf_score.config import TrainConfig
from tf_score.families import score_model
from tf_score.noise import geometric_sigmas
from tf_score.training import checkpoints, loop, optimizers
from tf_score.training.bundle import LossOutput, Monitor
from tf_score.training.step import build_models, ema_decay

SIGMAS = geometric_sigmas(20.0, 1.0, 10)


def _bundle(seed=0, lr=1e-3):
    cfg = config.from_flat(
        dict(hidden_units=(32, 32), learning_rate=lr, seed=seed, n_steps_each=2, denoise=False)
    )
    return score_model.toy_bundle(cfg)


def _config(num_steps, **kw):
    base = dict(
        num_steps=num_steps,
        batch_size=64,
        log_every=20,
        checkpoint_every=40,
        steps_per_loop=15,
        ema_rate=0.9,
    )
    return TrainConfig(**{**base, **kw})


def _weights(models):
    return [w.numpy() for m in models.values() for w in m.weights]


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    full = loop.train(_bundle(), _config(120), str(tmp_path / "full"))
    part = str(tmp_path / "part")
    first = loop.train(_bundle(), _config(80), part)
    assert first.step == 80
    resumed = loop.train(_bundle(), _config(120), part)
    assert resumed.step == 120
    for a, b in zip(_weights(full.models), _weights(resumed.models), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(_weights(full.ema_models), _weights(resumed.ema_models), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert resumed.loss == pytest.approx(full.loss, rel=1e-4)


def test_xla_step_resumed_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    """With --jit on one device the whole step is one XLA program whose random numbers are
    still a function of (seed, step) alone: 80 steps, then a resume to 120, give exactly
    the weights, EMA and loss of 120 steps in one go."""
    full = loop.train(_bundle(), _config(120, jit=True), str(tmp_path / "full"))
    part = str(tmp_path / "part")
    assert loop.train(_bundle(), _config(80, jit=True), part).step == 80
    resumed = loop.train(_bundle(), _config(120, jit=True), part)
    assert resumed.step == 120
    for models in ("models", "ema_models"):
        pairs = zip(
            _weights(getattr(full, models)), _weights(getattr(resumed, models)), strict=True
        )
        for a, b in pairs:
            np.testing.assert_array_equal(a, b)
    assert resumed.loss == full.loss


def test_load_ema_models_restores_the_ema_weights(tmp_path):
    b = _bundle()
    result = loop.train(b, _config(40), str(tmp_path))
    models, step = checkpoints.load_ema_models(b.model_fns, str(tmp_path / "checkpoints"))
    assert step == 40
    for a, c in zip(_weights(result.ema_models), _weights(models), strict=True):
        np.testing.assert_array_equal(a, c)
    # EMA differs from the live weights after training.
    assert any(
        not np.allclose(a, c)
        for a, c in zip(_weights(result.models), _weights(result.ema_models), strict=True)
    )


def test_ema_decay_warms_up_then_holds_the_rate():
    assert float(ema_decay(1, 0.999)) == pytest.approx(2 / 11)
    assert float(ema_decay(90, 0.999)) == pytest.approx(91 / 100)
    assert float(ema_decay(10**6, 0.999)) == pytest.approx(0.999)
    assert float(ema_decay(1, 0.999, warmup=False)) == pytest.approx(0.999)


def test_first_ema_update_mostly_forgets_the_initial_weights(tmp_path):
    import keras

    b = _bundle()
    keras.utils.set_random_seed(0)  # what train() does before building, so w0 is its init
    initial, *_ = build_models(b, tf.distribute.get_strategy())
    w0 = _weights(initial)
    result = loop.train(b, _config(1, steps_per_loop=1, ema_rate=0.999), str(tmp_path))
    d = 2 / 11  # warm-up decay at step 1, not 0.999
    for e, a, w in zip(_weights(result.ema_models), w0, _weights(result.models), strict=True):
        np.testing.assert_allclose(e, d * a + (1 - d) * w, rtol=1e-5, atol=1e-7)
    assert any(not np.allclose(a, w) for a, w in zip(w0, _weights(result.models), strict=True))


def test_nan_guard_stops_with_the_step_and_keeps_the_last_good_state(tmp_path):
    bad_at = 57  # 1-based step whose batch is poisoned
    good = _bundle()
    poisoned = _bundle()

    def dataset_fn(batch, ctx, start):
        ds = good.dataset_fn(batch, ctx, start)
        steps = tf.data.Dataset.counter(start=start + 1)
        return tf.data.Dataset.zip(ds, steps).map(lambda x, k: tf.where(k == bad_at, x * np.nan, x))

    poisoned.dataset_fn = dataset_fn
    workdir = str(tmp_path / "nan")
    with pytest.raises(loop.NonFiniteLossError, match=f"step {bad_at}") as err:
        loop.train(poisoned, _config(100), workdir)
    assert err.value.step == bad_at
    assert err.value.checkpoint.endswith("ckpt-40")
    # Resuming reloads the last good checkpoint (step 40), not a NaN state.
    models, step = checkpoints.load_ema_models(good.model_fns, os.path.join(workdir, "checkpoints"))
    assert step == 40
    assert all(np.all(np.isfinite(w)) for w in _weights(models))


def test_summaries_are_written(tmp_path):
    loop.train(_bundle(), _config(40, sample_every=40), str(tmp_path))
    events = glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
    assert events
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    for tag in [
        "loss",
        "steps_per_sec",
        "score/loss",
        "score/grad_norm",
        "score/learning_rate",
        "score/loss_per_level/00",
        "score/loss_per_level/09",
        "samples/annealed_langevin",
    ]:
        assert tag in tags, (tag, sorted(tags))
    losses = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("loss")]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_training_lowers_the_loss(tmp_path):
    result = loop.train(_bundle(lr=3e-3), _config(300, log_every=300), str(tmp_path))
    first = loop.train(_bundle(lr=3e-3), _config(10, log_every=10), str(tmp_path / "short"))
    assert result.loss < 0.7 * first.loss, (first.loss, result.loss)


def test_bad_config_is_rejected():
    with pytest.raises(
        ValueError, match="num_steps must be an integer >= 1 and <= 2147483647, got 0"
    ):
        TrainConfig(num_steps=0, batch_size=4)
    with pytest.raises(ValueError, match=r"ema_rate must be < 1.0, got 1.0"):
        TrainConfig(num_steps=1, batch_size=4, ema_rate=1.0)


def test_xla_compiled_step_computes_the_same_updates(tmp_path):
    """--jit compiles each replica's loss and gradient with XLA. XLA draws other random
    numbers from the same stateless seed, so this uses a deterministic loss (regression on
    the exact score at one level): the weights after 30 steps agree with the uncompiled run
    to float32 round-off (XLA fuses and reorders sums: rtol 1e-4)."""
    toy = data.get_toy("two_mode")
    exact = toy.conditional_score_fn(SIGMAS)

    def regression(models, x, seed):
        levels = tf.fill([tf.shape(x)[0]], 3)
        err = models["score"](x, levels) - exact(x, levels)
        return LossOutput(tf.reduce_sum(tf.square(err), axis=1))

    def bundle():
        b = _bundle()
        b.objectives = [dataclasses.replace(b.objectives[0], loss_fn=regression)]
        return b

    plain = loop.train(bundle(), _config(30), str(tmp_path / "plain"))
    xla = loop.train(bundle(), _config(30, jit=True), str(tmp_path / "xla"))
    assert xla.step == 30
    assert xla.loss == pytest.approx(plain.loss, rel=1e-4)
    for a, b in zip(_weights(plain.models), _weights(xla.models), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _applier(opt, variables):
    return lambda grads: opt.apply(grads, variables)


def test_fused_adam_takes_keras_adams_steps():
    """``FusedAdam`` (one ResourceApplyAdam per variable) against Keras' Adam from the same
    weights, gradients and warm-up-cosine rate: 25 steps on two variables, the same weights
    and moments within float32 round-off (the kernel orders the arithmetic its own way: a
    few ulps of weights near 1 per step, so atol 2e-6 after 25 steps), and both moved."""
    rng = np.random.default_rng(0)
    init = [rng.normal(size=(7, 3)).astype("float32"), rng.normal(size=(3,)).astype("float32")]
    grads = [[rng.normal(size=w.shape).astype("float32") for w in init] for _ in range(25)]
    out = []
    for cls in (optimizers.FusedAdam, keras.optimizers.Adam):
        ws = [keras.Variable(w) for w in init]
        opt = cls(optimizers.WarmupCosine(1e-2, 25, warmup_steps=5), beta_1=0.9)
        opt.build(ws)
        apply = tf.function(_applier(opt, ws))
        for g in grads:
            apply([tf.constant(x) for x in g])
        out.append([w.numpy() for w in ws] + [m.numpy() for m in opt.variables[1:]])
    for fused, plain in zip(*out, strict=True):
        np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=2e-6)
    assert all(np.abs(w - w0).max() > 1e-3 for w, w0 in zip(out[0][:2], init, strict=True))


def test_warmup_cosine_ramps_then_decays_to_zero_at_the_last_step():
    """The schedule's closed form: (t + 1) / warmup of the peak during the warm-up, then
    peak (1 + cos(pi f)) / 2 with f the fraction of the remaining steps; restored from its
    config."""
    sched = optimizers.WarmupCosine(2e-3, num_steps=1100, warmup_steps=100)
    lr = lambda t: float(sched(tf.constant(t, tf.int64)))
    assert lr(0) == pytest.approx(2e-5) and lr(49) == pytest.approx(1e-3)
    assert lr(99) == pytest.approx(2e-3) and lr(100) == pytest.approx(2e-3)
    assert lr(600) == pytest.approx(1e-3, rel=1e-5) and lr(350) == pytest.approx(
        1e-3 * (1 + np.cos(np.pi / 4)), rel=1e-5
    )
    assert lr(1100) == pytest.approx(0.0, abs=1e-9) and lr(5000) == pytest.approx(0.0, abs=1e-9)
    again = optimizers.WarmupCosine.from_config(sched.get_config())
    assert float(again(tf.constant(350))) == pytest.approx(lr(350))
    flat = optimizers.WarmupCosine(1e-3, 1000, warmup_steps=10, cosine=False)
    assert float(flat(tf.constant(4))) == pytest.approx(5e-4, rel=1e-6)
    assert float(flat(999)) == pytest.approx(1e-3, rel=1e-6)
    opt = config.OptimizerConfig()
    assert optimizers.learning_rate(opt, 10) == 1e-3  # constant: a plain float


def test_the_cosine_rate_reaches_zero_at_the_end_and_resumes_on_schedule(tmp_path):
    """The optimizer's rate follows the schedule of the configured run length through a
    resume (its step is the optimizer's restored iteration count)."""
    cfg = config.from_flat(
        dict(hidden_units=(16,), n_steps_each=2, denoise=False, lr_schedule="cosine",
             lr_warmup_steps=10, num_steps=80)
    )  # fmt: skip
    bundle = score_model.toy_bundle(cfg)
    loop.train(bundle, _config(40, log_every=40), str(tmp_path))
    loop.train(bundle, _config(80, log_every=40), str(tmp_path))
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    logged = acc.Tensors("score/learning_rate")
    rates = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in logged}
    sched = optimizers.WarmupCosine(1e-3, 80, 10)
    assert rates[40] == pytest.approx(float(sched(40)), rel=1e-5)  # logged after step 40's update
    assert rates[80] == pytest.approx(0.0, abs=1e-9)


def test_monitors_run_at_their_steps_and_at_the_end_as_scalars(tmp_path):
    """A ``Monitor`` every 25 steps of a 60-step run sees the EMA models at steps 25, 50 and
    60 (compiled loops stop there), and its values are TensorBoard scalars at those steps."""
    seen = []

    def fn(ema_models, step):
        seen.append((step, sorted(ema_models)))
        return {"probe/value": float(step) / 10}

    bundle = dataclasses.replace(_bundle(), monitors=(Monitor(25, fn),))
    loop.train(bundle, _config(60), str(tmp_path))
    assert seen == [(25, ["score"]), (50, ["score"]), (60, ["score"])]
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    values = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("probe/value")}
    assert values == {25: 2.5, 50: 5.0, 60: 6.0}


def test_the_progress_bar_loss_is_robust_to_one_heavy_batch():
    """The bar shows the median of the last SMOOTHING_LOOPS loop means: a 70.94 spike among
    steady 1.6s (the EDM toy's step 33,900) does not show, a lasting change does."""
    p = loop._Progress(start_step=0, step=0)
    for loss in [1.6] * 6 + [70.94] + [1.6] * 4:
        p.record(loss)
    assert p.last_loss == 1.6 and p.smoothed_loss == 1.6
    for _ in range(loop.SMOOTHING_LOOPS // 2 + 1):
        p.record(0.5)
    assert p.smoothed_loss == 0.5
