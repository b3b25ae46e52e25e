"""Sample-quality metrics against closed forms, and the classifier behind classifier FID/KID."""

import numpy as np
import pytest
from conftest import MNIST_DATA_DIR

from tf_score import data
from tf_score.evaluation import metrics
from tf_score.families import classifier


def _psd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_frechet_distance_matches_the_2x2_closed_form():
    # For 2 x 2 PSD M, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)); here M = A B (same spectrum
    # as A^1/2 B A^1/2), and A, B do not commute.
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = _psd(rng, 2), _psd(rng, 2)
        mu1, mu2 = rng.normal(size=2), rng.normal(size=2)
        ab = a @ b
        tr_root = np.sqrt(np.trace(ab) + 2.0 * np.sqrt(np.linalg.det(ab)))
        want = np.sum((mu1 - mu2) ** 2) + np.trace(a) + np.trace(b) - 2.0 * tr_root
        assert metrics.frechet_distance(mu1, a, mu2, b) == pytest.approx(want, rel=1e-9)
        assert metrics.frechet_distance(mu2, b, mu1, a) == pytest.approx(want, rel=1e-9)
    c = _psd(rng, 16)
    assert abs(metrics.frechet_distance(np.ones(16), c, np.ones(16), c)) < 1e-8


def test_fid_of_gaussian_samples_converges_to_the_closed_form():
    # N(0, I) vs N(0.5, 4 I) in d = 4: 4 * 0.25 + 4 * (2 - 1)^2 = 5.
    rng = np.random.default_rng(1)
    n = 40000
    f1 = rng.normal(size=(n, 4))
    f2 = 0.5 + 2.0 * rng.normal(size=(n, 4))
    assert metrics.fid_from_features(f1, f2) == pytest.approx(5.0, rel=0.02)


def test_kid_matches_the_cubic_kernel_closed_form():
    # k(a, b) = (ab + 1)^3 = a^3 b^3 + 3 a^2 b^2 + 3 ab + 1 in d = 1, so
    # MMD^2 = (m3 - m3')^2 + 3 (m2 - m2')^2 + 3 (m1 - m1')^2 with raw moments m_j.
    # N(0, 1) vs N(d, 1): m1 = d, m2 = 1 + d^2, m3 = d^3 + 3 d.
    d = 0.5
    want = (d**3 + 3 * d) ** 2 + 3 * d**4 + 3 * d**2
    rng = np.random.default_rng(2)
    f1 = rng.normal(size=(20000, 1))
    f2 = d + rng.normal(size=(20000, 1))
    # The estimate's standard error here is about 3.3% of the value (the sixth moments make
    # the cubic kernel noisy; measured over 4 seeds): the tolerance is 3 standard errors.
    mean, std = metrics.kid_from_features(f1, f2, num_subsets=20, subset_size=2000, seed=0)
    assert mean == pytest.approx(want, rel=0.1)
    assert std > 0
    same, _ = metrics.kid_from_features(
        f1, rng.normal(size=(20000, 1)), num_subsets=20, subset_size=2000, seed=0
    )
    assert abs(same) < 0.01 * want  # unbiased: about 0 when p = q (measured |.| <= 0.0017)


def test_kid_equals_the_direct_unbiased_estimate():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(30, 5)), 0.3 + rng.normal(size=(40, 5))
    k = lambda u, v: (u @ v / 5 + 1.0) ** 3
    s = 30  # every point of a, a random 30 of b: compare on a fixed subset instead
    b30 = b[:s]
    xx = sum(k(a[i], a[j]) for i in range(s) for j in range(s) if i != j) / (s * (s - 1))
    yy = sum(k(b30[i], b30[j]) for i in range(s) for j in range(s) if i != j) / (s * (s - 1))
    xy = sum(k(a[i], b30[j]) for i in range(s) for j in range(s)) / (s * s)
    got, _ = metrics.kid_from_features(a, b30, num_subsets=1, subset_size=s)
    assert got == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_two_sample_test_has_its_size_and_power():
    rng = np.random.default_rng(4)
    # Under p = q the p-value is uniform: about 10% of 60 tests fall below 0.1
    # (binomial sd 3.9%; the bound is 3 sd above).
    ps = [
        metrics.kernel_two_sample_test(
            rng.normal(size=(60, 2)), rng.normal(size=(60, 2)), num_permutations=200, seed=i
        )[1]
        for i in range(60)
    ]
    assert np.mean(np.asarray(ps) < 0.1) < 0.22
    assert 0.35 < np.mean(ps) < 0.65
    # A 0.5 sd shift in 2-D with 300 points each is found.
    x, y = rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + np.array([0.5, 0.0])
    stat, p = metrics.kernel_two_sample_test(x, y, num_permutations=500)
    assert p < 0.01
    # The statistic is the unbiased MMD^2 with the same (median) bandwidth.
    assert stat == pytest.approx(metrics.mmd_rbf(x, y), rel=1e-6)


def test_image_quality_reports_floor_histogram_and_n():
    rng = np.random.default_rng(5)
    ref = rng.uniform(size=(400, 4, 4, 1)).astype(np.float32)
    held = rng.uniform(size=(300, 4, 4, 1)).astype(np.float32)
    shifted = np.clip(held[:200] + 0.2, 0, 1)

    def fn(x):
        import tensorflow as tf

        f = tf.reshape(x, [tf.shape(x)[0], -1])
        return f, tf.argmax(f[:, :3], -1)

    ext = metrics.FeatureExtractor("pixels", fn, num_classes=3, batch_size=64)
    out = metrics.fid_kid_with_floor(shifted, ref, held, ext, kid_subsets=10, kid_subset_size=100)
    assert out["n"] == 200 and out["n_reference"] == 400 and out["kid_subset_size"] == 100
    assert out["fid"] > 10 * out["fid_floor"] > 0
    assert out["kid"] > out["kid_floor"] + 5 * out["kid_std"]
    assert sum(out["label_histogram"]) == pytest.approx(1.0)
    assert len(out["label_histogram_floor"]) == 3
    # The floor uses exactly the first n held-out images: samples = those images give FID 0.
    same = metrics.fid_kid_with_floor(
        held[:200], ref, held, ext, kid_subsets=5, kid_subset_size=100
    )
    assert same["fid"] == pytest.approx(same["fid_floor"], abs=1e-9)
    with pytest.raises(ValueError, match="held-out"):
        metrics.fid_kid_with_floor(held, ref, held[:10], ext)


def test_inception_route_features_and_a_clear_error_without_weights(tmp_path):
    missing = str(tmp_path / "nope.h5")
    with pytest.raises(metrics.MetricUnavailableError, match="--inception_weights"):
        metrics.inception_extractor(weights=missing)
    ext = metrics.inception_extractor(weights=None, batch_size=2)  # random weights: shapes only
    f, labels = ext(np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype(np.float32))
    assert f.shape == (3, 2048) and labels is None and np.all(np.isfinite(f))


def test_classifier_learns_digits_and_round_trips(tmp_path):
    x, y = data.load_tfds_labelled("mnist", "train[:3000]", MNIST_DATA_DIR)
    xt, yt = data.load_tfds_labelled("mnist", "test[:1000]", MNIST_DATA_DIR)
    assert x.shape == (3000, 28, 28, 1) and x.dtype == np.uint8 and set(y) == set(range(10))
    r = classifier.train_classifier((x, y), (xt, yt), str(tmp_path), num_steps=47, verbose=0)
    assert r.epochs == 2 and r.steps == 48
    # 2 epochs on 3000 images; the full preset (3 epochs of 60000) reaches 99% (README).
    assert r.test_accuracy > 0.85
    assert classifier.test_accuracy_of(r.path) == pytest.approx(r.test_accuracy)
    model = classifier.load_classifier(str(tmp_path))
    ext = metrics.classifier_extractor(model, batch_size=256)
    f, labels = ext(xt[:300].astype(np.float32) / 255.0)
    assert f.shape == (300, 128)
    assert np.mean(labels == yt[:300]) == pytest.approx(r.test_accuracy, abs=0.05)
    # Real test images against real train images: a small FID; a random-pixel set: a large one.
    ref, _ = ext(x[:1000].astype(np.float32) / 255.0)
    noise = np.random.default_rng(0).uniform(size=(300, 28, 28, 1)).astype(np.float32)
    fn, _ = ext(noise)
    assert metrics.fid_from_features(fn, ref) > 10 * metrics.fid_from_features(f, ref)
    with pytest.raises(FileNotFoundError, match=r"mnist_classifier\.cfg"):
        classifier.load_classifier(str(tmp_path / "missing"))


def test_paired_difference_has_the_t_distributions_p_value_and_size():
    # n = 2: t has 1 degree of freedom (Cauchy), p = 1 - (2 / pi) atan |t|
    r = metrics.paired_difference([3.0, 5.0], [1.0, 2.0])  # d = 2, 3
    assert r["mean"] == 2.5 and r["se"] == pytest.approx(np.std([2, 3], ddof=1) / np.sqrt(2))
    assert r["p"] == pytest.approx(1 - 2 / np.pi * np.arctan(r["t"]), rel=1e-5)
    # size: with a = b in distribution, p < 0.05 in 5% of 2000 paired samples of n = 8
    # (+- 3 SE = 1.5%; a normal approximation to t would reject about 9%)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 2, 8))
    rejected = np.mean([metrics.paired_difference(a, b)["p"] < 0.05 for a, b in x])
    assert abs(rejected - 0.05) < 0.015, rejected
    with pytest.raises(ValueError, match="equal-length"):
        metrics.paired_difference([1.0, 2.0], [1.0])


def test_energy_distance_matches_the_gaussian_closed_form():
    """N(0, 1) against N(1, 1) in 1-D: 2 E|X - Y| - E|X - X'| - E|Y - Y'| with
    E|N(m, s^2)| = s sqrt(2 / pi) exp(-m^2 / 2 s^2) + m erf(m / (s sqrt 2)) is 0.5418 (m = 1,
    s = sqrt 2 for X - Y; m = 0 for the others). The estimate's sd is 0.035 at 2000 samples
    each (8 seeds; the sample means' spread dominates), so 4000 each are within 0.1 (4 sd);
    two samples of one distribution are within 0.002 of 0 (measured sd 0.0003)."""
    from math import erf, exp, pi, sqrt

    def mean_abs(m, s):
        return s * sqrt(2 / pi) * exp(-(m**2) / (2 * s**2)) + m * erf(m / (s * sqrt(2)))

    exact = 2 * mean_abs(1.0, sqrt(2)) - 2 * mean_abs(0.0, sqrt(2))
    assert exact == pytest.approx(0.5418, abs=1e-4)
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, (4000, 1)), rng.normal(1, 1, (4000, 1))
    assert metrics.energy_distance(x, y) == pytest.approx(exact, abs=0.1)
    assert abs(metrics.energy_distance(x, rng.normal(0, 1, (4000, 1)))) < 0.002
