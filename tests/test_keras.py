"""tf_score.keras: ``ScoreModel`` trains by ``fit()`` exactly as ``run_train.py`` trains, passes
the same two-sample test, samples as ``api.generate`` does, and round-trips through
``save()`` / ``load_model``, BackupAndRestore, a run_train.py workdir and the export."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_score import api, config
from tf_score.config import ConfigError
from tf_score.keras import QualityMetrics, SampleGrid, ScoreModel, training_data

#: the toy EDM preset's model and schedule (flags/presets/toy_edm.cfg), 3,000 steps
TOY = dict(dataset="two_mode", network="edm_mlp", loss="edm", hidden_units=(128, 128, 128),
           embed_dim=64, activation="swish", sigma_max=80.0, sigma_min=0.01, num_levels=40,
           schedule="karras", rho=7.0, sigma_data=4.1, sigma_dist="lognormal", p_mean=0.5,
           p_std=1.7, learning_rate=2e-3, lr_schedule="cosine", lr_warmup_steps=200,
           batch_size=256, num_steps=3000, ema_rate=0.999, sampler="heun", seed=0,
           num_samples=1280, log_every=1000, checkpoint_every=3000)  # fmt: skip
#: a small toy for the round trips: constant rate, so a run cut at any step continues alike
SMALL = dict(dataset="two_mode", network="edm_mlp", loss="edm", hidden_units=(32, 32),
             embed_dim=16, sigma_max=80.0, sigma_min=0.01, num_levels=8, schedule="karras",
             sigma_data=4.1, learning_rate=2e-3, batch_size=32, num_steps=100, ema_rate=0.99,
             sampler="heun", seed=1, log_every=50, checkpoint_every=50,
             steps_per_loop=50)  # fmt: skip


def _weights(net) -> list[np.ndarray]:
    return [w.numpy() for w in net.weights]


def _assert_same(a, b, atol=0.0):
    for x, y in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The toy fitted by Keras for 3,000 steps on run_train.py's batches, written as a workdir
    and loaded by api.load."""
    cfg = config.from_flat(TOY)
    model = ScoreModel(cfg)
    model.fit(training_data(cfg), epochs=1, steps_per_epoch=cfg.train.num_steps, verbose=0)
    workdir = str(tmp_path_factory.mktemp("toy"))
    model.save_workdir(workdir)
    return model, api.load(workdir)


def test_a_fit_passes_run_train_s_two_sample_test(trained):
    """The fitted model passes the toy evaluation run_train.py --evaluate reports: Heun's
    mode weight within 3 SE of 0.8 at n = 2 x 1280, each mode's sd within 0.08 of 1, and both
    seeds pass the kernel two-sample test against exact samples at 0.01 (measured: 0.815 +-
    0.008, sd 1.04 / 1.05, p 0.63 / 0.48; api.train's weights for the same seed are the same
    to the bit: test_a_run_train_workdir_loads_into_keras_and_back)."""
    from tf_score.families import evaluate

    model, run = trained
    assert model.step == run.step == 3000
    _assert_same(model.ema_network, run.models["score"])
    row = evaluate.two_mode_fast(model.run(), ("heun",), num_seeds=2, num_permutations=100)
    row = row.metrics["samplers"]["heun"]
    assert abs(row["mode_weight"] - 0.8) < 3 * row["mode_weight_se"], row
    np.testing.assert_allclose(row["mode_sd"], 1.0, atol=0.08)
    assert min(row["two_sample_p"]) > 0.01, row


def test_generate_is_api_generate_on_any_grid(trained):
    model, run = trained
    got = model.generate(64, sampler="dpmpp_2m", num_steps=12, seed=3)
    want = api.generate(run, 64, seed=3, sampler="dpmpp_2m", sigmas=model.sigmas(12)).samples
    np.testing.assert_array_equal(got, want)
    assert len(model.sigmas(12)) == 12 and model.sigmas(12)[0] == pytest.approx(80.0)
    with pytest.raises(ConfigError, match="num_steps must be an integer in"):
        model.generate(4, num_steps=1)


def test_the_export_serves_what_generate_draws(trained, tmp_path):
    model, _ = trained
    path = model.export(str(tmp_path / "export"))
    served = tf.saved_model.load(path).signatures["serving_default"](
        num_samples=tf.constant(8), seed=tf.constant([2, 0])
    )
    np.testing.assert_allclose(served["samples"].numpy(), model.generate(8, seed=2),
                               rtol=1e-5, atol=1e-4)  # fmt: skip


def test_from_preset_is_the_shipped_model():
    model = ScoreModel.from_preset("toy_edm")
    run = api.load_pretrained("toy_edm")
    assert model.step == run.step == 16000
    _assert_same(model.ema_network, run.models["score"])
    _assert_same(model.network, run.models["score"])
    got = model.generate(32, num_steps=8, seed=5)
    np.testing.assert_array_equal(
        got, api.generate(run, 32, seed=5, sigmas=model.sigmas(8)).samples
    )


def test_labels_and_guidance_reach_api_generate(tmp_path):
    """A class-conditional model (the conditional toy's settings) draws, per label and with
    classifier-free guidance, what api.generate draws from its workdir."""
    cfg = config.from_flat({**SMALL, "num_classes": 2, "label_dropout": 0.1})
    model = ScoreModel(cfg)
    _fit(model, cfg, 20)
    model.save_workdir(str(tmp_path / "w"))
    run, labels = api.load(str(tmp_path / "w")), [0, 1, 1, 0]
    got = model.generate(4, num_steps=5, labels=labels, guidance=2.0, seed=5)
    want = api.generate(run, 4, seed=5, sigmas=model.sigmas(5), labels=labels, guidance=2.0)
    np.testing.assert_array_equal(got, want.samples)
    with pytest.raises(ConfigError, match="labels"):
        model.generate(4, labels=[0, 1, 2])


def _fit(model, cfg, steps, start=0, epochs=1, **kwargs):
    data = training_data(cfg, start_step=start)
    return model.fit(data, epochs=epochs, steps_per_epoch=steps, verbose=0, **kwargs)


def test_a_run_train_workdir_loads_into_keras_and_back(tmp_path, run_cli):
    """run_train.py trains 50 steps; the Keras model takes the whole state (step, weights,
    EMA, optimizer), fits 50 more on the batches that follow and writes the workdir back:
    api.load reads exactly what api.train to 100 steps gives."""
    cfg = config.from_flat(SMALL)
    wd = str(tmp_path / "cli")
    flags = [f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
             for k, v in {**SMALL, "num_steps": 50}.items()]  # fmt: skip
    done = run_cli("run_train.py", f"--workdir={wd}", "--noprogress", *flags)
    assert done.returncode == 0, done.stderr[-2000:]
    model = ScoreModel.from_workdir(wd)
    assert model.step == 50
    _assert_same(model.ema_network, api.load(wd).models["score"])
    _fit(model, cfg, 50, start=50)
    assert model.save_workdir(wd).endswith("ckpt-100")
    api.train(cfg, str(tmp_path / "api"), progress=False)
    back, want = api.load(wd), api.load(str(tmp_path / "api"))
    assert back.step == want.step == 100
    _assert_same(back.models["score"], want.models["score"])
    with pytest.raises(api.RunError, match="ckpt-7 not found"):
        ScoreModel.from_workdir(wd, checkpoint=os.path.join(wd, "checkpoints", "ckpt-7"))


def test_save_and_load_model_continue_training_exactly(tmp_path):
    cfg = config.from_flat(SMALL)
    model = ScoreModel(cfg)
    _fit(model, cfg, 30)
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    assert isinstance(loaded, ScoreModel) and loaded.step == 30 and loaded.config == model.config
    assert int(loaded.optimizer.iterations.numpy()) == 30
    for m in (model, loaded):
        _fit(m, cfg, 20, start=30)
    for a, b in ((model.network, loaded.network), (model.ema_network, loaded.ema_network)):
        _assert_same(a, b)


class _Crash(Exception):
    pass


class _CrashAt(keras.callbacks.Callback):
    """Raises at batch ``batch`` of epoch ``epoch`` after recording the state at ``keep``."""

    def __init__(self, epoch, batch, keep):
        super().__init__()
        self.epoch, self.batch, self.keep, self.kept = epoch, batch, keep, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.model.step == self.keep:
            self.kept = (_weights(self.model.network), _weights(self.model.ema_network))
        if (self.current, batch) == (self.epoch, self.batch):
            raise _Crash()


class _StateAtStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.step = self.model.step
        self.weights = (_weights(self.model.network), _weights(self.model.ema_network))
        self.iterations = int(self.model.optimizer.iterations.numpy())


def test_backup_and_restore_resumes_a_fit_killed_mid_epoch(tmp_path):
    """Killed at batch 7 of epoch 2 (10 steps an epoch, a backup every 5 batches): a new model
    resumes at the backup (step 15) with its weights, EMA and optimizer, reruns epoch 2 as
    Keras does, and ends at step 15 + 20."""
    cfg = config.from_flat(SMALL)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), save_freq=5)
    crash = _CrashAt(epoch=1, batch=7, keep=15)
    with pytest.raises(_Crash):
        _fit(ScoreModel(cfg), cfg, 10, epochs=3, callbacks=[backup, crash])
    resumed, start = ScoreModel(cfg), _StateAtStart()
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), save_freq=5)
    data = training_data(cfg)
    history = resumed.fit(data, epochs=3, steps_per_epoch=10, verbose=0, callbacks=[backup, start])
    assert (start.step, start.iterations) == (15, 15)
    for got, want in zip(start.weights, crash.kept, strict=True):
        for x, y in zip(got, want, strict=True):
            np.testing.assert_array_equal(x, y)
    assert len(history.history["loss"]) == 2 and resumed.step == 35


def test_standard_callbacks_under_a_mirrored_strategy(tmp_path):
    """Two replicas (conftest's logical CPUs) step like one device with two micro-batches;
    ModelCheckpoint, TensorBoard, EarlyStopping and SampleGrid work on the fit. The strategy
    is the process's one for these devices (a second MirroredStrategy's collectives collide
    with the first's: ``distribute.make_strategy``)."""
    from tensorboard.backend.event_processing import event_accumulator

    from tf_score.training import distribute

    cfg = config.from_flat(SMALL)
    strategy = distribute.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = ScoreModel(cfg)
    one = ScoreModel(cfg.replace(train={"grad_accum_steps": 2}))
    tb, ckpt = str(tmp_path / "tb"), str(tmp_path / "model.keras")
    callbacks = [keras.callbacks.ModelCheckpoint(ckpt), keras.callbacks.TensorBoard(tb),
                 keras.callbacks.EarlyStopping(monitor="loss", min_delta=1e9, patience=0),
                 SampleGrid(tb, num_samples=64)]  # fmt: skip
    history = _fit(mirrored, cfg, 10, epochs=5, callbacks=callbacks)
    _fit(one, cfg, 20)
    assert len(history.history["loss"]) == 2 and mirrored.step == one.step == 20
    _assert_same(mirrored.network, one.network, atol=1e-5)
    assert keras.models.load_model(ckpt).step == 20
    scalars = event_accumulator.EventAccumulator(os.path.join(tb, "train"))
    assert "epoch_loss" in scalars.Reload().Tags()["tensors"]
    images = event_accumulator.EventAccumulator(os.path.join(tb, "samples"))
    assert images.Reload().Tags()["tensors"] == ["samples/heun"]


def test_a_nonfinite_batch_changes_nothing():
    cfg = config.from_flat(SMALL)
    model = ScoreModel(cfg)
    before = _weights(model.network) + _weights(model.ema_network)
    bad = tf.data.Dataset.from_tensors(tf.fill([32, 2], np.float32("nan")))
    history = model.fit(bad, epochs=1, verbose=0)
    assert history.history["nonfinite_steps"] == [1.0] and model.step == 0
    after = _weights(model.network) + _weights(model.ema_network)
    for x, y in zip(before, after, strict=True):
        np.testing.assert_array_equal(x, y)


def test_held_out_loss_of_live_and_ema_weights():
    cfg = config.from_flat(SMALL)
    model = ScoreModel(cfg)
    data = training_data(cfg).take(4)
    first = model.evaluate(data, verbose=0, return_dict=True)
    assert first == model.evaluate(data, verbose=0, return_dict=True)  # the same seeds
    assert first["loss"] == pytest.approx(first["ema_loss"])  # the EMA starts as the weights
    _fit(model, cfg, 30)
    later = model.evaluate(data, verbose=0, return_dict=True)
    assert later["loss"] < first["loss"] and later["ema_loss"] != later["loss"]


def test_bad_input_is_named():
    cfg = config.from_flat(SMALL)
    model = ScoreModel(cfg)
    with pytest.raises(ValueError, match=r"compile\(optimizer=...\): the optimizer is the "):
        model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="x is uint8; give data units in floating point"):
        model.fit(tf.data.Dataset.from_tensors(tf.zeros([32, 2], tf.uint8)), verbose=0)
    with pytest.raises(ValueError, match="batches of 16 rows; this model trains on batch_size=32"):
        model.fit(tf.data.Dataset.from_tensors(tf.zeros([16, 2])), verbose=0)
    with pytest.raises(ConfigError, match="ScoreModel trains model=score, not model=vae"):
        ScoreModel(config.from_flat(dict(model="vae", dataset="mnist", network="mlp")))
    with pytest.raises(ConfigError, match=r"every must be an integer in \[1, "):
        SampleGrid("tb", every=0)


def test_quality_metrics_beside_the_floor(tmp_path):
    """FID and KID with their floors in the epoch's logs and in TensorBoard, on a tiny MNIST
    U-Net with a random-weight classifier (the plumbing is the point, not the values)."""
    from conftest import MNIST_DATA_DIR

    from tf_score.families import classifier

    net = classifier.DigitClassifier()
    net.build()
    os.makedirs(tmp_path / "clf")
    net.save(str(tmp_path / "clf" / "classifier.keras"))
    cfg = config.from_flat(dict(
        dataset="mnist", data_dir=MNIST_DATA_DIR, download=False, network="edm_unet", loss="edm",
        ngf=4, channel_mults=(1,), num_res_blocks=1, sigma_max=17.0, sigma_min=0.002,
        num_levels=3, schedule="karras", sampler="euler", batch_size=8, data_shape=(28, 28, 1),
    ))  # fmt: skip
    model = ScoreModel(cfg)
    with pytest.raises(ConfigError, match=r"QualityMetrics: .*need a trained classifier"):
        model.fit(training_data(cfg), steps_per_epoch=1, verbose=0, callbacks=[QualityMetrics()])
    tb = str(tmp_path / "tb")
    quality = QualityMetrics(str(tmp_path / "clf"), num_samples=20, log_dir=tb)
    history = model.fit(training_data(cfg), epochs=1, steps_per_epoch=2, verbose=0,
                        callbacks=[quality])  # fmt: skip
    logs = {k: v[0] for k, v in history.history.items()}
    assert logs["fid"] > 0 and logs["fid_floor"] > 0 and "kid" in logs and "kid_floor" in logs
    assert logs["fid_ratio"] == pytest.approx(logs["fid"] / logs["fid_floor"], 1e-5)
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(os.path.join(tb, "quality")).Reload()
    assert {"fid/fid", "fid/floor", "kid/kid"} <= set(acc.Tags()["tensors"])


def test_the_xla_step_and_steps_per_execution_train_alike(tmp_path):
    """With train.jit the whole step is one XLA program in fit() as in api.train (the same
    weights); compile(steps_per_execution=10) puts 10 steps in one call, the same steps."""
    cfg = config.from_flat({**SMALL, "jit": True, "num_steps": 30, "checkpoint_every": 30,
                            "steps_per_loop": 30})  # fmt: skip
    fitted = ScoreModel(cfg)
    _fit(fitted, cfg, 30)
    api.train(cfg, str(tmp_path / "w"), progress=False)
    _assert_same(fitted.ema_network, api.load(str(tmp_path / "w")).models["score"])
    plain = config.from_flat(SMALL)
    one, ten = ScoreModel(plain), ScoreModel(plain)
    ten.compile(steps_per_execution=10)
    for model in (one, ten):
        _fit(model, plain, 30)
    assert ten.step == one.step == 30
    _assert_same(ten.ema_network, one.ema_network)
