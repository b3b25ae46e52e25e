"""NCSN on images: networks, data pipelines, image training, sampling and inpainting."""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import MNIST_DATA_DIR

from tf_score import config, data, sampling
from tf_score.config import TrainConfig
from tf_score.families import score_model
from tf_score.networks import ConditionalResNet, CondRefineNetDilated, contract
from tf_score.networks.layers import ConditionalInstanceNormPlus
from tf_score.noise import geometric_sigmas
from tf_score.sampling import registry, solvers
from tf_score.training import loop

SIGMAS = geometric_sigmas(1.0, 0.01, 10)


# --- networks ----------------------------------------------------------------------------


def test_refinenet_matches_the_ncsn_parameter_count():
    m = CondRefineNetDilated((28, 28, 1), SIGMAS, ngf=64)
    m.build()
    assert abs(m.count_params() - 7.64e6) / 7.64e6 < 0.01, m.count_params()
    x = tf.random.uniform([2, 28, 28, 1], seed=1)
    assert m(x, tf.constant([0, 9])).shape == (2, 28, 28, 1)


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_image_networks_round_trip_config_keras_file_and_checkpoint(tmp_path, shape):
    for cls, kw in [
        (CondRefineNetDilated, dict(ngf=8)),
        (ConditionalResNet, dict(ngf=8, channel_mults=(1, 2), num_blocks=1)),
    ]:
        m = cls(shape, SIGMAS, **kw)
        m.build()
        x = tf.random.uniform([3, *shape], seed=2)
        levels = tf.constant([0, 4, 9])
        y = m(x, levels).numpy()
        assert y.shape == (3, *shape) and np.all(np.isfinite(y))
        path = str(tmp_path / f"{cls.__name__}{shape[-1]}.keras")
        m.save(path)
        np.testing.assert_allclose(
            keras.saving.load_model(path)(x, levels).numpy(), y, rtol=1e-5, atol=1e-5
        )
        other = cls.from_config(m.get_config())
        other.build()
        ckpt = tf.train.Checkpoint(model=m).save(str(tmp_path / f"c{cls.__name__}{shape[-1]}"))
        tf.train.Checkpoint(model=other).restore(ckpt).assert_consumed()
        np.testing.assert_allclose(other(x, levels).numpy(), y, rtol=1e-5, atol=1e-5)


def test_conditional_instance_norm_plus_uses_the_level_and_normalises():
    norm = ConditionalInstanceNormPlus(3)
    x = tf.random.normal([2, 5, 5, 4], seed=3) * 3.0 + 2.0
    norm.build(x.shape)
    norm.scale.assign(
        np.stack(
            [
                np.r_[np.ones(4), np.zeros(4)],
                np.r_[2 * np.ones(4), np.zeros(4)],
                np.r_[np.ones(4), np.ones(4)],
            ]
        ).astype(np.float32)
    )
    y0 = norm(x, tf.constant([0, 0])).numpy()
    # level 0: gamma 1, alpha 0, beta 0 -> plain instance norm
    mu = x.numpy().mean(axis=(1, 2), keepdims=True)
    sd = x.numpy().std(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(y0, (x.numpy() - mu) / np.sqrt(sd**2 + 1e-5), atol=1e-4)
    y1 = norm(x, tf.constant([1, 1])).numpy()
    np.testing.assert_allclose(y1, 2 * y0, atol=1e-4)
    y2 = norm(x, tf.constant([2, 2])).numpy()
    assert not np.allclose(y2, y0)  # alpha != 0 puts the channel means back


def test_bad_image_sizes_give_clear_errors():
    with pytest.raises(ValueError, match="must be divisible by 4"):
        ConditionalResNet((30, 30, 1), SIGMAS, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="must be divisible by 2 for its dilated stages"):
        CondRefineNetDilated((27, 27, 1), SIGMAS)


# --- data --------------------------------------------------------------------------------


def test_real_mnist_pipeline_is_dequantised_deterministic_and_resumable():
    ds, spec = data.load_tfds_images("mnist", "train", data_dir=MNIST_DATA_DIR)
    assert spec.image_shape == (28, 28, 1)
    stream = data.image_training_dataset(ds, 64, [1, 2], num_examples=60_000)
    it = iter(stream)
    batches = [next(it).numpy() for _ in range(940)]
    x = batches[0]
    assert x.shape == (64, 28, 28, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() < 1.0
    # dequantised: values are not on the 1/255 (or 1/256) grid
    assert np.mean(np.abs(x * 256 - np.round(x * 256)) > 1e-3) > 0.9
    # epochs are reshuffled, and a resume anywhere replays the same batches
    assert not np.array_equal(batches[0], batches[937])
    again = data.image_training_dataset(ds, 64, [1, 2], start_step=938, num_examples=60_000)
    np.testing.assert_array_equal(next(iter(again)).numpy(), batches[938])
    other_seed = next(iter(data.image_training_dataset(ds, 64, [1, 3], num_examples=60_000)))
    assert not np.array_equal(other_seed.numpy(), x)


def test_mock_cifar10_pipeline_flips(monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(data.pipelines, "download_host_reachable", lambda timeout=5.0: True)
    with tfds.testing.mock_data(num_examples=64):
        # mock_data replaces download_and_prepare and as_dataset: nothing leaves the machine.
        ds, spec = data.load_tfds_images("cifar10", "train", data_dir="/nonexistent", download=True)
        assert spec.random_flip and spec.image_shape == (32, 32, 3)
        x = next(iter(data.image_training_dataset(ds, 32, [0, 0], random_flip=True)))
    assert x.shape == (32, 32, 32, 3)


def test_missing_data_says_how_to_prepare_it(tmp_path):
    with pytest.raises(data.DataUnavailableError, match=r"(?s)not prepared.*--data_dir"):
        data.load_tfds_images("fashion_mnist", "train", data_dir=str(tmp_path))


def _write_png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)


def test_image_folder_reports_bad_files_and_converts_safe_ones(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(3):
        _write_png(tmp_path / f"ok{k}.png", rng.integers(0, 255, (16, 16, 3), np.uint8))
    _write_png(tmp_path / "alpha.png", rng.integers(0, 255, (16, 16, 4), np.uint8))
    arr = data.load_image_folder(str(tmp_path))
    assert arr.shape == (4, 16, 16, 3)  # RGBA converted to RGB
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    _write_png(tmp_path / "big.png", rng.integers(0, 255, (20, 24, 3), np.uint8))
    with pytest.raises(data.BadImagesError) as err:
        data.load_image_folder(str(tmp_path))
    assert set(err.value.problems) == {"broken.png", "big.png"}
    assert "unreadable" in err.value.problems["broken.png"]
    assert "--image_size" in err.value.problems["big.png"]
    os.remove(tmp_path / "broken.png")
    arr = data.load_image_folder(str(tmp_path), image_size=8)
    assert arr.shape == (5, 8, 8, 3)


def test_npz_images(tmp_path):
    path = str(tmp_path / "x.npz")
    np.savez(path, images=np.random.default_rng(0).random((10, 8, 8)).astype(np.float32))
    arr = data.load_npz_images(path)
    assert arr.shape == (10, 8, 8, 1) and arr.dtype == np.uint8
    np.savez(path, images=np.full((2, 8, 8, 3), 2.0))
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\]"):
        data.load_npz_images(path)
    np.savez(path, a=np.zeros((2, 8, 8)), b=np.zeros(3))
    with pytest.raises(ValueError, match="expected an array named 'images'"):
        data.load_npz_images(path)
    np.savez(path, images=np.zeros((0, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="holds no images"):
        data.load_npz_images(path)
    bad = np.zeros((3, 8, 8), np.float32)
    bad[1, 2, 3] = np.nan
    np.savez(path, images=bad)
    with pytest.raises(ValueError, match=r"1 image\(s\) have NaN or infinite pixels"):
        data.load_npz_images(path)
    np.savez(path, images=np.array([{"a": 1}], dtype=object))  # would need unpickling
    with pytest.raises(ValueError, match=r"is not a numeric \.npz array of images"):
        data.load_npz_images(path)
    with open(path, "wb") as f:
        f.write(b"garbage bytes, not a zip archive")
    with pytest.raises(ValueError, match=r"is not a readable \.npz file"):
        data.load_npz_images(path)


@pytest.mark.parametrize(
    "model, network, shape, n, message",
    [
        ("score", "resnet", (28, 28), 5, "has 5 image(s), fewer than one batch of --batch_size=8"),
        ("vae", "mlp", (28, 28), 5, "has 5 image(s), fewer than one batch of --batch_size=8"),
        ("score", "resnet", (3, 3), 40, "has 3x3 images, but --network=resnet with"),
        ("score", "refinenet", (3, 3), 40, "--network=refinenet needs height and width"),
        ("score", "edm_unet", (6, 6), 40, "needs height and width divisible by 4"),
    ],
)
def test_npz_too_small_for_a_batch_or_the_network_is_refused_before_writing(
    tmp_path, model, network, shape, n, message
):
    """An npz with fewer images than one batch, or images the network cannot down-sample,
    stops at the data check naming the flags, and nothing is written to the workdir."""
    from tf_score import api

    path = str(tmp_path / "x.npz")
    np.savez(path, images=np.random.default_rng(0).integers(0, 255, (n, *shape), np.uint8))
    cfg = config.ExperimentConfig(
        data=config.DataConfig(dataset="npz", data_path=path),
        network=config.NetworkConfig(model=model, network=network, ngf=8, channel_mults=(1, 2, 2)),
        noise=config.NoiseConfig(sigma_max=1.0, sigma_min=0.01, num_levels=10),
        loss=config.LossConfig(loss="edm" if network.startswith("edm") else "anneal_dsm"),
        train=config.TrainConfig(num_steps=2, batch_size=8),
    )
    workdir = tmp_path / "run"
    with pytest.raises(api.RunError, match=re.escape(message)):
        api.train(cfg, str(workdir), progress=False)
    assert not workdir.exists() or not os.listdir(workdir)


# --- training and sampling ---------------------------------------------------------------


def _mnist_subset(n=512):
    ds, _ = data.load_tfds_images("mnist", "train", data_dir=MNIST_DATA_DIR)
    return ds.take(n)


def _small_resnet_config(seed=0):
    return config.from_flat(
        dict(
            dataset="mnist", network="resnet", sigma_max=1.0, sigma_min=0.01, num_levels=10,
            ngf=8, channel_mults=(1, 2), num_res_blocks=1, learning_rate=2e-3, seed=seed,
            n_steps_each=1,
        )
    )  # fmt: skip


def _small_resnet_bundle(seed=0):
    cfg = _small_resnet_config(seed)
    return score_model.image_bundle(cfg, _mnist_subset(), (28, 28, 1), num_summary_samples=4)


def _cfg(steps, **kw):
    return TrainConfig(
        **{
            **dict(
                num_steps=steps,
                batch_size=32,
                log_every=10,
                checkpoint_every=10,
                steps_per_loop=10,
                ema_rate=0.9,
            ),
            **kw,
        }
    )


def test_training_lowers_the_loss_on_real_mnist(tmp_path):
    """The NCSN loss on a fixed held-out batch (fixed noise) falls after 80 steps.

    Evaluated deterministically, so the comparison is free of the per-batch level noise of
    the running training loss; 80 steps at lr 2e-3 take it down by about a third.
    """
    bundle = _small_resnet_bundle()
    keras.utils.set_random_seed(0)  # what train() does: the same initial weights
    initial = bundle.model_fns["score"]()
    trained = loop.train(bundle, _cfg(80), str(tmp_path)).models["score"]
    test, _ = data.load_tfds_images("mnist", "test", data_dir=MNIST_DATA_DIR)
    x = tf.cast(next(iter(test.batch(256))), tf.float32) / 255.0
    loss = score_model.make_score_loss(config.LossConfig(), SIGMAS)

    def evaluate(model):
        return np.mean(
            [tf.reduce_mean(loss(model, x, tf.constant([k, 7])).loss).numpy() for k in range(4)]
        )

    before, after = evaluate(initial), evaluate(trained)
    assert after < 0.8 * before, (before, after)


def test_image_run_resumes_to_the_same_state(tmp_path):
    full = loop.train(_small_resnet_bundle(), _cfg(12, steps_per_loop=4), str(tmp_path / "full"))
    loop.train(_small_resnet_bundle(), _cfg(8, steps_per_loop=4), str(tmp_path / "part"))
    resumed = loop.train(_small_resnet_bundle(), _cfg(12, steps_per_loop=4), str(tmp_path / "part"))
    assert resumed.loss == pytest.approx(full.loss, rel=1e-5)
    for a, b in zip(full.models["score"].weights, resumed.models["score"].weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_image_sampling_is_reproducible():
    m = ConditionalResNet((28, 28, 1), SIGMAS, ngf=8, channel_mults=(1, 2), num_blocks=1)
    m.build()
    model = contract.LevelScoreModel(m, SIGMAS)
    x0 = registry.uniform_start([4, 28, 28, 1], [0, 0], SIGMAS, sampling.SampleSpace((28, 28, 1)))
    solver = tf.function(solvers.annealed_langevin)

    def run():
        frames = []  # the start and the chain after every level (the old snapshots)
        out = solver(
            model, x0, SIGMAS, seed=tf.constant([1, 2]), step_lr=2e-5, n_steps_each=3,
            denoise=True, callback=sampling.py_callback(lambda i, s, x: frames.append(x)),
        )  # fmt: skip
        return out, np.stack([x0.numpy(), *frames])

    (a, snapshots), (b, _) = run(), run()
    np.testing.assert_array_equal(a.samples.numpy(), b.samples.numpy())
    assert snapshots.shape == (11, 4, 28, 28, 1) and int(a.num_evals) == 31


def test_inpainting_keeps_the_observed_part_and_samples_the_conditional():
    """Exact scores of a 2-D Gaussian: inpainting x2 given x1 draws from p(x2 | x1)."""
    cov = np.array([[1.0, 0.8], [0.8, 1.0]], np.float32)
    sigmas = geometric_sigmas(3.0, 0.05, 8)
    precs = tf.constant(
        np.stack([np.linalg.inv(cov + s**2 * np.eye(2)) for s in sigmas]), tf.float32
    )
    score = contract.LevelScoreModel(
        lambda x, levels: -tf.einsum("bij,bj->bi", tf.gather(precs, levels), x), sigmas
    )
    n = 8000
    x1 = tf.fill([n, 1], 1.5)
    x_obs = tf.concat([x1, tf.zeros([n, 1])], axis=1)
    mask = tf.constant([1.0, 0.0])
    made = sampling.plan("annealed_langevin", score, sigmas,
                         dict(step_lr=2e-3, n_steps_each=300, denoise=False))  # fmt: skip
    out = sampling.inpaint(made, x_obs, mask, tf.constant([3, 4]), sampling.SampleSpace((2,)))
    x = out.samples.numpy()
    np.testing.assert_array_equal(x[:, 0], 1.5)
    # p(x2 | x1) = N(0.8 * 1.5, 1 - 0.64) (plus sigma_L^2 = 0.0025 from the last level)
    se_mean, se_var = np.sqrt(0.36 / n), 0.36 * np.sqrt(2 / n)
    assert abs(x[:, 1].mean() - 1.2) < 5 * se_mean + 0.02, x[:, 1].mean()
    assert abs(x[:, 1].var() - 0.36) < 5 * se_var + 0.03, x[:, 1].var()


def test_tensorboard_sample_grid_is_what_generate_draws(tmp_path):
    """One seeding convention: the grid training writes to TensorBoard at its last step is
    ``api.generate(run, 16, seed=cfg.seed)`` of the loaded run (same EMA weights)."""
    from tensorboard.backend.event_processing import event_accumulator

    from tf_score import api
    from tf_score.evaluation import plotting

    cfg = _small_resnet_config().replace(
        data={"data_dir": MNIST_DATA_DIR, "download": False},
        train=dict(num_steps=10, batch_size=32, log_every=10, checkpoint_every=10),
    )
    api.train(cfg, str(tmp_path), progress=False)
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    event = acc.Tensors("samples/annealed_langevin")[-1]
    assert event.step == 10
    png = tf.make_ndarray(event.tensor_proto)[2]  # [width, height, encoded image]
    logged = tf.io.decode_png(png).numpy()
    run = api.load(str(tmp_path))
    grid = plotting.image_grid(api.generate(run, 16, seed=cfg.seed).samples)
    assert logged.shape == grid.shape
    assert np.abs(logged.astype(int) - grid.astype(int)).max() <= 1  # rounding at .5 only
