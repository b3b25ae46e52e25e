"""tf.distribute: the global batch is split the same way on any topology, R replicas train
exactly like one device with R micro-batches, strategies fail clearly when they cannot be set
up. (Processes, signals and multi-worker clusters: test_faults.py.)"""

import json
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import MNIST_DATA_DIR
from test_train import _bundle as _toy_bundle
from test_train import _config as _train_config
from test_train import _weights
from test_vae import _vae_config

from tf_score import config, data
from tf_score.families import score_model, vae
from tf_score.training import checkpoints, distribute, loop


def _mirrored():
    assert len(tf.config.list_logical_devices("CPU")) == 2, "conftest configures 2 logical CPUs"
    return distribute.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])


def _config(num_steps, **kw):
    """test_train's loop settings, with a checkpoint at step 30 (the resume point here)."""
    return _train_config(num_steps, **{"checkpoint_every": 30, **kw})


def _step_batches(dataset_fn, global_batch, pipelines, replicas, start_step, steps):
    """Per step, the concatenation of every replica's batch, in replica order."""
    per_pipeline = replicas // pipelines
    streams = [
        iter(
            dataset_fn(global_batch, tf.distribute.InputContext(pipelines, p, replicas), start_step)
        )
        for p in range(pipelines)
    ]
    out = []
    for _ in range(steps):
        parts = [next(it).numpy() for it in streams for _ in range(per_pipeline)]
        assert all(len(p) == global_batch // replicas for p in parts)
        out.append(np.concatenate(parts))
    return out


@pytest.mark.parametrize("pipelines, replicas", [(1, 2), (2, 2), (2, 4), (4, 8)])
def test_every_topology_sees_the_same_global_batches(pipelines, replicas):
    """Global batch k is the same examples (and dequantisation noise) for any number of
    replicas and input pipelines (workers), also when resuming at a step."""
    toy_fn = _toy_bundle().dataset_fn
    rng = np.random.default_rng(0)
    images = tf.data.Dataset.from_tensor_slices(rng.integers(0, 256, [100, 4, 4, 1], np.uint8))
    image_fn = data.image_dataset_fn(images, [3, 4])
    for fn, start, steps in [(toy_fn, 0, 3), (image_fn, 0, 14), (image_fn, 11, 3)]:
        one = _step_batches(fn, 16, 1, 1, start, steps)
        many = _step_batches(fn, 16, pipelines, replicas, start, steps)
        for a, b in zip(one, many, strict=True):
            np.testing.assert_array_equal(a, b)
    # 100 images, batch 16: 6 steps per epoch visit 96 distinct images, then a new
    # permutation starts (compare the pixels under the dequantisation noise)
    pixels = [np.floor(b * 256).reshape(16, -1) for b in _step_batches(image_fn, 16, 1, 1, 0, 7)]
    assert len({row.tobytes() for b in pixels[:6] for row in b}) == 96
    assert not np.array_equal(pixels[0], pixels[6])
    # A streamed data set (too big for memory) splits its one pipeline between replicas too.
    stream_fn = data.image_dataset_fn(images, [3, 4], cache=False)
    for a, b in zip(
        _step_batches(stream_fn, 16, 1, 1, 2, 3),
        _step_batches(stream_fn, 16, 1, 4, 2, 3),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_two_replicas_train_exactly_like_one_device_with_two_micro_batches(tmp_path):
    """A 2-replica MirroredStrategy run (interrupted and resumed) equals one device with
    grad_accum_steps=2 for the same global batch and seed: same data rows and noise seeds
    per shard, and the global-batch gradient applied once. Tolerance rtol 1e-5 (float
    summation order only)."""
    one = loop.train(_toy_bundle(), _config(60, grad_accum_steps=2), str(tmp_path / "one"))
    part = str(tmp_path / "two")
    first = loop.train(_toy_bundle(), _config(30), part, _mirrored())
    assert first.step == 30
    two = loop.train(_toy_bundle(), _config(60), part, _mirrored())
    assert two.step == 60
    assert two.loss == pytest.approx(one.loss, rel=1e-5)
    for a, b in zip(_weights(one.models), _weights(two.models), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(_weights(one.ema_models), _weights(two.ema_models), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with open(tmp_path / "two" / "train_summary.json") as f:
        summary = json.load(f)
    assert summary["replicas"] == 2 and summary["global_batch"] == 64
    assert summary["examples_per_sec"] > 0 and summary["peak_rss_mb"] > 0
    # Without accumulation the one-device run draws other noise (one shard, not two).
    plain = loop.train(_toy_bundle(), _config(60), str(tmp_path / "plain"))
    assert plain.loss != pytest.approx(two.loss, rel=1e-5)


def _mnist_images(n=512):
    images, _ = data.load_tfds_images("mnist", "train[:512]", data_dir=MNIST_DATA_DIR)
    return images


@pytest.mark.parametrize("model", ["resnet", "vae"])
def test_image_and_vae_bundles_under_mirrored_match_one_device(tmp_path, model):
    """The NCSN image pipeline and the VAE's two objectives under MirroredStrategy."""
    images = _mnist_images()
    if model == "vae":
        cfg = _vae_config((28, 28, 1), latent_dim=4, hidden_units=(32,))

        def bundle():
            return vae.vae_bundle(cfg, images, seed=0, num_summary_images=4)
    else:
        scfg = config.from_flat(
            dict(
                dataset="mnist", network="resnet", sigma_max=1.0, sigma_min=0.01, ngf=4,
                channel_mults=(1,), num_res_blocks=1, n_steps_each=1,
            )
        )  # fmt: skip

        def bundle():
            return score_model.image_bundle(scfg, images, (28, 28, 1), num_summary_samples=4)

    def quiet_bundle():  # no sample images: this test is about the updates
        b = bundle()
        b.image_summaries = b.custom_summaries = None
        return b

    cfg_kw = dict(batch_size=16, steps_per_loop=4, checkpoint_every=4, log_every=4)
    one = loop.train(quiet_bundle(), _config(8, grad_accum_steps=2, **cfg_kw), str(tmp_path / "1"))
    two = loop.train(quiet_bundle(), _config(8, **cfg_kw), str(tmp_path / "2"), _mirrored())
    assert two.step == 8 and two.loss == pytest.approx(one.loss, rel=1e-4)
    for a, b in zip(_weights(one.models), _weights(two.models), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert (tmp_path / "2" / "tb").exists()


def test_strategy_errors_name_the_flag_or_variable(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.StrategyError, match="needs TF_CONFIG"):
        distribute.make_strategy("multi_worker_mirrored")
    for bad, message in [
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', 'needs a "cluster"'),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps"}}', "must name a job"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "not in"),
    ]:
        monkeypatch.setenv("TF_CONFIG", bad)
        with pytest.raises(distribute.StrategyError, match=message):
            distribute.make_strategy("multi_worker_mirrored")
    with pytest.raises(distribute.StrategyError, match=r"--devices: no such device"):
        distribute.make_strategy("mirrored", devices=["/gpu:7"])
    with pytest.raises(distribute.StrategyError, match="needs --tpu"):
        distribute.make_strategy("tpu")
    with pytest.raises(distribute.StrategyError, match="cannot connect"):
        distribute.make_strategy("tpu", tpu="grpc://127.0.0.1:1")
    assert (
        distribute.make_strategy("mirrored", devices=["CPU:0", "/cpu:1"]).num_replicas_in_sync == 2
    )
    assert distribute.is_chief(distribute.make_strategy("default"))


def test_a_nan_on_one_replica_stops_every_replica_before_the_update(tmp_path):
    """Replica 1's batch at step 37 is NaN: the run stops at step 37 on both replicas, no
    update of that step is applied, and the last checkpoint (30) is the last good state."""
    bad_at = 37
    good, poisoned = _toy_bundle(), _toy_bundle()

    def dataset_fn(batch, ctx, start):
        # one pipeline feeding 2 replicas: element j is replica j % 2's batch of step j // 2
        ds = tf.data.Dataset.zip(good.dataset_fn(batch, ctx, start), tf.data.Dataset.counter())
        return ds.map(
            lambda x, j: tf.where(
                tf.logical_and(start + j // 2 + 1 == bad_at, j % 2 == 1), x * np.nan, x
            )
        )

    poisoned.dataset_fn = dataset_fn
    workdir = tmp_path / "nan"
    with pytest.raises(loop.NonFiniteLossError, match=f"step {bad_at}") as err:
        loop.train(poisoned, _config(60), str(workdir), _mirrored())
    assert err.value.step == bad_at and err.value.checkpoint.endswith("ckpt-30")
    models, step = checkpoints.load_ema_models(good.model_fns, str(workdir / "checkpoints"))
    assert step == 30 and all(np.all(np.isfinite(w)) for w in _weights(models))


def test_the_collective_watchdog_fires_only_after_timeout_seconds_without_a_step():
    """CollectiveWatchdog with a counter the test moves: steps keep it quiet however long the
    call; it fires once, ``timeout`` (1 s) after the last step; the first call's clock starts
    at its first step (tracing is not a lost peer); outside ``watching`` nothing fires. (Steps
    0.1 s apart against a 1 s limit: a false alarm would need the test stalled for 0.9 s.)"""
    counter, fired = [0], []
    dog = distribute.CollectiveWatchdog(1.0, lambda: counter[0], poll=0.01, abort=fired.append)

    def wait_for_alarm(n):
        t0 = time.monotonic()
        while len(fired) < n and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        return time.monotonic() - t0

    try:
        with dog.watching():  # a call that steps every 0.1 s for 1.2 s: never fires
            for _ in range(12):
                time.sleep(0.1)
                counter[0] += 1
        assert not fired
        time.sleep(1.2)  # not watching: a pause between calls is not a stall
        assert not fired
        with dog.watching(first=True):
            time.sleep(1.2)  # tracing: no step yet, the clock has not started
            assert not fired
            counter[0] += 1
            waited = wait_for_alarm(1)
        assert len(fired) == 1 and "--collective_timeout" in fired[0]
        assert 0.99 < waited < 5, waited  # the timeout after the last step (and a poll or so)
        with dog.watching():  # no step at all: the clock runs from the call's start
            waited = wait_for_alarm(2)
        assert len(fired) == 2 and 0.99 < waited < 5, waited
    finally:
        dog.close()
    assert not dog._thread.is_alive()
