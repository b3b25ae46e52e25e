"""Direct tests of ``tf_score.data``: the toy mixtures against their closed forms (moments,
perturbed density and score), the seeded toy and image streams (batch k a function of
(seed, k), dequantisation, epochs as permutations, exact resumes), and the .npz / folder
loaders. (Topology invariance of the streams: test_distribute.py.)"""

import numpy as np
import pytest
import tensorflow as tf

from tf_score import data


def _mixture_log_prob(toy, x, sigma):
    """log sum_k w_k N(x; mu_k, (s_k^2 + sigma^2) I) in float64 (2-D), by log-sum-exp."""
    x = np.asarray(x, np.float64)
    w, mu = np.asarray(toy.weights), np.asarray(toy.locs)
    var = np.asarray(toy.scales) ** 2 + sigma**2  # [K]
    d2 = np.sum((x[:, None, :] - mu[None]) ** 2, -1)  # [B, K]
    log_terms = np.log(w) - np.log(2 * np.pi * var) - 0.5 * d2 / var
    m = log_terms.max(1, keepdims=True)
    return (m + np.log(np.exp(log_terms - m).sum(1, keepdims=True)))[:, 0], log_terms


def _mixture_score(toy, x, sigma):
    """sum_k r_k(x) (mu_k - x) / (s_k^2 + sigma^2), r_k the posterior responsibilities."""
    x = np.asarray(x, np.float64)
    logp, log_terms = _mixture_log_prob(toy, x, sigma)
    r = np.exp(log_terms - logp[:, None])  # [B, K]
    var = np.asarray(toy.scales) ** 2 + sigma**2
    mu = np.asarray(toy.locs)
    return np.einsum("bk,bkd->bd", r / var, mu[None] - x[:, None, :])


def test_two_mode_samples_have_the_mixtures_weights_means_and_scales():
    """n = 20000 (fixed seed): weight of the (5, 5) mode 0.8 within 4 SE (0.011); each mode's
    mean within 4 SE of its centre (0.07 for the 0.2 mode) and per-coordinate sd within 0.05
    of 1; the same seed gives the same points, another seed others."""
    toy = data.get_toy("two_mode")
    assert toy.weights == (0.2, 0.8) and toy.locs == ((-5.0, -5.0), (5.0, 5.0))
    n = 20000
    x = toy.sample(n, seed=[1, 2]).numpy()
    assert x.shape == (n, 2) and x.dtype == np.float32
    heavy = x.sum(1) > 0  # the modes are 14 sd apart: the split is exact in practice
    assert abs(heavy.mean() - 0.8) < 4 * np.sqrt(0.16 / n)
    for sel, centre in ((~heavy, -5.0), (heavy, 5.0)):
        m = sel.sum()
        np.testing.assert_allclose(x[sel].mean(0), centre, atol=4 / np.sqrt(m))
        np.testing.assert_allclose(x[sel].std(0, ddof=1), 1.0, atol=0.05)
    np.testing.assert_array_equal(toy.sample(n, seed=[1, 2]).numpy(), x)
    assert not np.allclose(toy.sample(n, seed=[1, 3]).numpy()[:10], x[:10])
    with pytest.raises(ValueError, match="unknown toy distribution 'nope'"):
        data.get_toy("nope")


@pytest.mark.parametrize("name", ["two_mode", "eight_gaussians"])
@pytest.mark.parametrize("sigma", [0.0, 0.5, 3.0])
def test_perturbed_log_prob_and_score_match_the_mixture_closed_form(name, sigma):
    """log p_sigma and grad log p_sigma (autodiff) equal the Gaussian-mixture closed forms with
    component variance s_k^2 + sigma^2 (float64 reference; atol 2e-3 nats / 2e-3 + rtol 1e-3
    on the score, float32 evaluation); a per-example sigma [B] gives each row its own."""
    toy = data.get_toy(name)
    x = np.random.default_rng(0).uniform(-7, 7, (64, 2)).astype(np.float32)
    want_lp, _ = _mixture_log_prob(toy, x, sigma)
    np.testing.assert_allclose(toy.log_prob(x, sigma).numpy(), want_lp, atol=2e-3, rtol=1e-5)
    want_s = _mixture_score(toy, x, sigma)
    np.testing.assert_allclose(toy.score(x, sigma).numpy(), want_s, atol=2e-3, rtol=1e-3)
    sig = np.linspace(0.1, 4.0, 64).astype(np.float32)
    got = toy.score(x, sig).numpy()
    for i in (0, 31, 63):
        np.testing.assert_allclose(
            got[i], _mixture_score(toy, x[i : i + 1], float(sig[i]))[0], atol=2e-3, rtol=1e-3
        )


def test_perturbed_density_integrates_to_one_and_spreads_as_sigma_squared():
    """On a 0.1 grid over [-25, 25]^2, p_sigma (sigma = 1.5) integrates to 1 within 1e-3, its
    mean is (3, 3) and its per-coordinate variance 1 + sigma^2 + Var(mode centres) = 3.25 + 16
    within 1e-2 (Riemann sums of a smooth density decaying far inside the window)."""
    toy = data.get_toy("two_mode")
    sigma, h = 1.5, 0.1
    g = np.arange(-25.0, 25.0, h) + h / 2
    xx, yy = np.meshgrid(g, g, indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32)
    p = np.exp(toy.log_prob(pts, sigma).numpy().astype(np.float64)) * h * h
    assert abs(p.sum() - 1.0) < 1e-3
    mean = p @ pts
    np.testing.assert_allclose(mean / p.sum(), [3.0, 3.0], atol=1e-2)
    var = p @ (pts - mean / p.sum()) ** 2 / p.sum()
    np.testing.assert_allclose(var, 1.0 + sigma**2 + 0.2 * 0.8 * 100, atol=1e-2)


def test_toy_stream_batch_k_is_a_function_of_seed_and_k():
    """toy_dataset: batch k is toy.sample(B, fold_in(seed, k)) exactly, the same for two
    streams, different for k + 1; start_step=k starts at batch k; a BatchShare(start, rows,
    R) feeds rows [start, start + rows) of every global batch, split in order into R."""
    toy = data.get_toy("two_mode")
    seed = tf.constant([5, 6])
    a = [b.numpy() for b in data.toy_dataset(toy, 8, seed).take(4)]
    b = [b.numpy() for b in data.toy_dataset(toy, 8, seed).take(4)]
    for k in range(4):
        np.testing.assert_array_equal(a[k], b[k])
        want = toy.sample(8, seed=tf.random.experimental.stateless_fold_in(seed, k)).numpy()
        np.testing.assert_array_equal(a[k], want)
    assert not np.allclose(a[1], a[2])
    resumed = next(iter(data.toy_dataset(toy, 8, seed, start_step=3))).numpy()
    np.testing.assert_array_equal(resumed, a[3])
    share = data.BatchShare(start=2, rows=6, local_replicas=3)
    parts = [p.numpy() for p in data.toy_dataset(toy, 8, seed, share=share).take(6)]
    assert all(p.shape == (2, 2) for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts[:3]), a[0][2:8])
    np.testing.assert_array_equal(np.concatenate(parts[3:]), a[1][2:8])


def _images(n=64, seed=0):
    # distinct random 4 x 4 images (16 uint8 pixels: collisions are ~impossible, checked)
    x = np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 1), np.uint8)
    assert len({im.tobytes() for im in x}) == n
    return x


def _rows(batch):
    return sorted(np.floor(batch * 256).astype(np.uint8).reshape(len(batch), -1).tolist())


def test_cached_epochs_are_permutations_of_dequantised_images():
    """Cached: x in [0, 1), x * 256 - pixel = u in [0, 1) with mean 0.5 (4 SE = 0.02 over
    3072 values) and off the pixel grid; each epoch (4 batches of 16 of 64 images) holds every
    image exactly once, epochs in different orders; fewer images than a batch is refused."""
    imgs = _images()
    ds = tf.data.Dataset.from_tensor_slices(imgs)
    batches = [b.numpy() for b in data.image_training_dataset(ds, 16, [1, 2]).take(12)]
    x = np.concatenate(batches)
    assert x.shape == (192, 4, 4, 1) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() < 1.0
    want = sorted(imgs.reshape(64, -1).tolist())
    for e in range(3):
        assert _rows(np.concatenate(batches[4 * e : 4 * e + 4])) == want
    u = x * 256 - np.floor(x * 256)
    assert abs(u.mean() - 0.5) < 4 * np.sqrt(1 / 12 / u.size)
    assert np.mean(u > 1e-3) > 0.99
    first = np.floor(np.concatenate(batches[:4]) * 256)
    second = np.floor(np.concatenate(batches[4:8]) * 256)
    assert not np.array_equal(first, second)
    with pytest.raises(ValueError, match="fewer than one batch of 128"):
        data.image_training_dataset(ds, 128, [1, 2])


@pytest.mark.parametrize("cache", [True, False])
def test_image_stream_resumes_at_start_step_exactly(cache):
    """A stream started at step k (cached, and streamed through the shuffle buffer) yields
    exactly batches k, k+1, ... of the uninterrupted stream (bit-identical, across the epoch
    boundary at 4); another seed gives other batches."""
    ds = tf.data.Dataset.from_tensor_slices(_images())
    kw = dict(cache=cache, shuffle_buffer=64)
    full = [b.numpy() for b in data.image_training_dataset(ds, 16, [3, 4], **kw).take(9)]
    for k in (1, 3, 6):
        got = [b.numpy() for b in data.image_training_dataset(ds, 16, [3, 4], k, **kw).take(3)]
        for j, g in enumerate(got):
            np.testing.assert_array_equal(g, full[k + j])
    other = next(iter(data.image_training_dataset(ds, 16, [3, 5], **kw))).numpy()
    assert not np.allclose(other, full[0])


def test_npz_loader_passes_uint8_rounds_floats_and_refuses_bad_shapes(tmp_path):
    """uint8 comes back unchanged (a lone array under any key), [N, H, W] gains a channel,
    floats in [0, 1] become round(255 x); 2-channel, 1-D, integer and infinite arrays are a
    ValueError saying why; a missing file is DataUnavailableError."""
    path = str(tmp_path / "x.npz")
    u8 = np.random.default_rng(1).integers(0, 256, (5, 6, 6, 3), np.uint8)
    np.savez(path, whatever=u8)
    np.testing.assert_array_equal(data.load_npz_images(path), u8)
    f = np.array([[[0.0, 0.5], [1.0, 0.2]]], np.float64)  # [1, 2, 2]
    np.savez(path, images=f)
    np.testing.assert_array_equal(data.load_npz_images(path)[..., 0], [[[0, 128], [255, 51]]])
    for bad, message in [
        (np.zeros((2, 4, 4, 2), np.uint8), r"must be \[N, H, W\] or \[N, H, W, 1\|3\]"),
        (np.zeros(7, np.uint8), r"must be \[N, H, W\]"),
        (np.zeros((2, 4, 4), np.int32), "must be uint8 or float, got int32"),
        (np.array([[[np.inf]]], np.float32), r"1 image\(s\) have NaN or infinite pixels"),
        (np.full((1, 2, 2), -0.1, np.float32), r"must lie in \[0, 1\]"),
    ]:
        np.savez(path, images=bad)
        with pytest.raises(ValueError, match=message):
            data.load_npz_images(path)
    with pytest.raises(data.DataUnavailableError, match="does not exist"):
        data.load_npz_images(str(tmp_path / "missing.npz"))


def test_image_folder_round_trips_pngs_in_name_order(tmp_path):
    """Grayscale PNGs load bit-exact as [N, H, W, 1] in sorted name order (non-images
    ignored); a grey image among RGB ones becomes three equal channels; image_size equal to
    the short side is a pure centre crop; a missing or empty folder is DataUnavailableError."""
    from PIL import Image

    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (3, 5, 7), np.uint8)
    for name, im in zip(("b.png", "a.png", "c.png"), grey, strict=True):
        Image.fromarray(im).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    arr = data.load_image_folder(str(tmp_path))
    assert arr.shape == (3, 5, 7, 1) and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr[..., 0], grey[[1, 0, 2]])
    cropped = data.load_image_folder(str(tmp_path), image_size=5)
    np.testing.assert_array_equal(cropped[..., 0], grey[[1, 0, 2]][:, :, 1:6])
    rgb_dir = tmp_path / "rgb"
    rgb_dir.mkdir()
    rgb = rng.integers(0, 256, (2, 4, 4, 3), np.uint8)
    for k in range(2):
        Image.fromarray(rgb[k]).save(rgb_dir / f"{k}.png")
    Image.fromarray(grey[0][:4, :4]).save(rgb_dir / "2.png")
    arr = data.load_image_folder(str(rgb_dir))
    np.testing.assert_array_equal(arr[:2], rgb)
    np.testing.assert_array_equal(arr[2], np.repeat(grey[0][:4, :4, None], 3, -1))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DataUnavailableError, match="no image files"):
        data.load_image_folder(str(empty))
    with pytest.raises(data.DataUnavailableError, match="does not exist"):
        data.load_image_folder(str(tmp_path / "missing"))
