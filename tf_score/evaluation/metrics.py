"""Sample-quality metrics: mode weights, MMD and its two-sample test for 2-D toys;
Fréchet (FID) and kernel (KID) distances in a classifier or Inception-v3 feature space."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def mode_weight(x) -> tuple[float, float]:
    """Fraction of 2-D samples in the (5, 5) mode (x1 + x2 > 0) and its standard error."""
    x = np.asarray(x)
    w = float(np.mean(x[:, 0] + x[:, 1] > 0))
    return w, float(np.sqrt(w * (1.0 - w) / len(x)))


def mode_sds(x) -> tuple[float, float]:
    """Per-coordinate standard deviation within each mode (light, heavy), averaged over the
    two coordinates: each mode centred on its own mean; NaN for a mode with fewer than two
    samples (a class-conditional row draws one mode only)."""
    x = np.asarray(x)
    heavy = x[:, 0] + x[:, 1] > 0
    return tuple(
        float(np.mean(x[m].std(axis=0, ddof=1))) if m.sum() > 1 else float("nan")
        for m in (~heavy, heavy)
    )


def _median_bandwidth(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    z = tf.concat([x, y], 0)
    d2 = _sq_dists(z, z).numpy().ravel()
    return tf.constant(np.sqrt(0.5 * np.median(d2) + 1e-12), tf.float64)


def _sq_dists(a, b):
    return (
        tf.reduce_sum(a * a, 1)[:, None]
        + tf.reduce_sum(b * b, 1)[None, :]
        - 2.0 * a @ tf.transpose(b)
    )


def mmd_rbf(x, y, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD between samples x [n, d] and y [m, d] with an RBF kernel.

    MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y), k(a, b) = exp(-||a - b||^2 / (2 h^2)),
    with the diagonal terms left out (unbiased, so it can be slightly negative when p = q).
    ``bandwidth`` h defaults to the median heuristic on the pooled sample.
    """
    x = tf.convert_to_tensor(x, tf.float64)
    y = tf.convert_to_tensor(y, tf.float64)
    h = tf.constant(bandwidth, tf.float64) if bandwidth else _median_bandwidth(x, y)
    n = tf.cast(tf.shape(x)[0], tf.float64)
    m = tf.cast(tf.shape(y)[0], tf.float64)
    kxx = tf.exp(-_sq_dists(x, x) / (2 * h * h))
    kyy = tf.exp(-_sq_dists(y, y) / (2 * h * h))
    kxy = tf.exp(-_sq_dists(x, y) / (2 * h * h))
    term_x = (tf.reduce_sum(kxx) - tf.linalg.trace(kxx)) / (n * (n - 1))
    term_y = (tf.reduce_sum(kyy) - tf.linalg.trace(kyy)) / (m * (m - 1))
    return float(term_x + term_y - 2.0 * tf.reduce_mean(kxy))


def energy_distance(x, y) -> float:
    """Unbiased energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Euclidean norms; the
    diagonal pairs left out, so it can be slightly negative when p = q). Zero iff p = q."""
    x = tf.convert_to_tensor(x, tf.float64)
    y = tf.convert_to_tensor(y, tf.float64)

    def mean_dist(a, b, same):
        d = tf.sqrt(tf.maximum(_sq_dists(a, b), 0.0))
        n, m = tf.cast(tf.shape(a)[0], tf.float64), tf.cast(tf.shape(b)[0], tf.float64)
        return tf.reduce_sum(d) / (n * (n - 1) if same else n * m)

    return float(2.0 * mean_dist(x, y, False) - mean_dist(x, x, True) - mean_dist(y, y, True))


def kernel_two_sample_test(
    x, y, num_permutations: int = 1000, seed: int = 0, bandwidth: float | None = None
) -> tuple[float, float]:
    """Permutation test of p = q with the unbiased RBF MMD^2 (Gretton et al. 2012).

    Returns (MMD^2, p-value). The pooled sample is relabelled ``num_permutations`` times;
    p = (1 + #{permuted MMD^2 >= observed}) / (1 + num_permutations), so p is never 0 and is
    uniform on its grid when p = q. The bandwidth (median heuristic on the pooled sample by
    default) is fixed across permutations, as the test requires.
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"each sample needs at least 2 points, got {n} and {m}")
    z = np.concatenate([x, y])
    sq = np.sum(z * z, 1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    h = bandwidth or np.sqrt(0.5 * np.median(d2) + 1e-12)
    k = np.exp(-d2 / (2.0 * h * h))
    row = k.sum(1)
    total = row.sum()
    rng = np.random.default_rng(seed)
    # Column 0: the observed labelling; the others: random relabellings (x-indicators).
    a = np.zeros((n + m, num_permutations + 1))
    a[:n, 0] = 1.0
    for j in range(1, num_permutations + 1):
        a[rng.permutation(n + m)[:n], j] = 1.0
    aka = np.einsum("ip,ip->p", a, k @ a)  # sum of k over the x block (diagonal included)
    ak1 = a.T @ row  # sum of k over x rows
    bkb = total - 2.0 * ak1 + aka  # y block
    akb = ak1 - aka  # x-y cross block
    stat = (aka - n) / (n * (n - 1)) + (bkb - m) / (m * (m - 1)) - 2.0 * akb / (n * m)
    p = (1.0 + np.sum(stat[1:] >= stat[0])) / (1.0 + num_permutations)
    return float(stat[0]), float(p)


def paired_difference(a, b) -> dict:
    """Paired comparison of two models on the same examples: d_i = a_i - b_i, its mean, the
    standard error sd(d) / sqrt(n), t = mean / se and the two-sided p-value of mean = 0 under
    Student's t with n - 1 degrees of freedom."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(
            f"need two equal-length 1-D arrays of >= 2 values, got {a.shape} and {b.shape}"
        )
    d = a - b
    mean, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
    if se > 0:
        t = mean / se
    else:  # no spread: identical values are no evidence of a difference, any other is total
        t = 0.0 if mean == 0 else float("inf") * np.sign(mean)
    df = len(d) - 1.0
    # P(|T| > t) = I_(df / (df + t^2))(df / 2, 1 / 2), the regularised incomplete beta
    p = float(tf.math.betainc(df / 2, 0.5, df / (df + t * t))) if np.isfinite(t) else 0.0
    return {"n": len(d), "mean": mean, "se": se, "t": float(t), "p": p}


# --- image quality in a feature space: Fréchet distance (FID) and kernel distance (KID) ----


class MetricUnavailableError(RuntimeError):
    """A feature extractor cannot be built here; the message says how to make it available."""


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)) between Gaussians N(mu1, C1), N(mu2, C2).

    tr (C1 C2)^(1/2) is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix C1^(1/2) C2 C1^(1/2), which has the same spectrum as C1 C2; this is
    stable where a general matrix square root of C1 C2 goes complex.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    c1, c2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    w, v = np.linalg.eigh(c1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    mid = root1 @ c2 @ root1
    tr_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (mid + mid.T)), 0.0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * tr_root)


def feature_moments(f) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(f, np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def fid_from_features(f1, f2) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets [n, d]."""
    return frechet_distance(*feature_moments(f1), *feature_moments(f2))


def kid_from_features(
    f1, f2, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel inception distance (Bińkowski et al. 2018): the unbiased MMD^2 with the cubic
    kernel k(a, b) = (a.b / d + 1)^3, averaged over random subsets of
    min(subset_size, n1, n2) points from each set. Returns (mean, std over subsets).
    When a set has no more than ``subset_size`` points every subset of it is the whole set,
    and the std reflects only the other set's subsets, not the uncertainty of the mean."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    d = f1.shape[1]
    s = min(subset_size, len(f1), len(f2))
    if s < 2:
        raise ValueError(f"KID needs at least 2 points per set, got {len(f1)} and {len(f2)}")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(num_subsets):
        a = f1[rng.choice(len(f1), s, replace=False)]
        b = f2[rng.choice(len(f2), s, replace=False)]
        kaa, kbb, kab = (_cubic(u @ v.T / d + 1.0) for u, v in ((a, a), (b, b), (a, b)))
        off = s * (s - 1)
        vals.append(
            (kaa.sum() - np.trace(kaa)) / off + (kbb.sum() - np.trace(kbb)) / off - 2.0 * kab.mean()
        )
    vals = np.asarray(vals)
    return float(vals.mean()), float(vals.std(ddof=1) if len(vals) > 1 else 0.0)


def _cubic(t):
    return t * t * t  # (much faster than t ** 3 in numpy)


class FeatureExtractor:
    """images in [0, 1], [N, H, W, C] -> (features [N, d], predicted labels [N] or None),
    run in batches through a compiled function."""

    def __init__(self, name: str, fn, num_classes: int | None, batch_size: int = 500):
        self.name = name
        self.num_classes = num_classes
        self.batch_size = batch_size
        self._fn = tf.function(fn, reduce_retracing=True)

    def __call__(self, images) -> tuple[np.ndarray, np.ndarray | None]:
        feats, labels = [], []
        for i in range(0, len(images), self.batch_size):
            f, y = self._fn(tf.convert_to_tensor(images[i : i + self.batch_size], tf.float32))
            feats.append(f.numpy())
            if self.num_classes:
                labels.append(y.numpy())
        return np.concatenate(feats), (np.concatenate(labels) if labels else None)


def classifier_extractor(model, batch_size: int = 500) -> FeatureExtractor:
    """Features and argmax labels of a ``classifier.DigitClassifier``."""

    def fn(x):
        h = model.features(x)
        return h, tf.argmax(model.head(h), -1)

    return FeatureExtractor("classifier", fn, num_classes=model.num_classes, batch_size=batch_size)


def inception_extractor(weights: str | None = "imagenet", batch_size: int = 50):
    """Inception-v3 pool features (2048-d) for RGB data sets, the standard FID/KID space.

    ``weights``: "imagenet" (keras.applications downloads them once to ~/.keras/models), a
    path to ``inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5``, or None (random,
    for tests only). Grey images are repeated to 3 channels; images are resized to 299 x 299.
    Note: these are the Keras ImageNet weights, not the TF-slim graph of the original FID
    code, so values are comparable between runs of this library, not to published FIDs.
    """
    import keras

    try:
        net = keras.applications.InceptionV3(
            include_top=False, weights=weights, pooling="avg", input_shape=(299, 299, 3)
        )
    except Exception as e:  # download and file errors come in many types
        raise MetricUnavailableError(
            f"the Inception-v3 weights ({weights}) are not available ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}). On a machine with "
            'internet run\n  python -c "import keras; keras.applications.InceptionV3('
            "include_top=False, weights='imagenet')\"\nand copy ~/.keras/models/"
            "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5 here (same place), or "
            "pass its path as --inception_weights=PATH. For MNIST-like data use the classifier "
            "(--feature_extractor=classifier)."
        ) from e

    def fn(x):
        if x.shape[-1] == 1:
            x = tf.repeat(x, 3, axis=-1)
        x = tf.image.resize(x, [299, 299], method="bilinear")
        return net(x * 2.0 - 1.0, training=False), tf.zeros([tf.shape(x)[0]], tf.int64)

    return FeatureExtractor("inception_v3", fn, num_classes=None, batch_size=batch_size)


def label_histogram(labels, num_classes: int) -> list[float]:
    """Fraction of samples per predicted class (mode coverage)."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
    return (counts / max(1, counts.sum())).tolist()


def fid_kid_with_floor(
    samples,
    reference,
    floor_images,
    extractor: FeatureExtractor,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    reference_features=None,
    labels=None,
) -> dict:
    """FID and KID of ``samples`` against ``reference`` images (the training set), with the
    floor: the same metrics for as many held-out real images (``floor_images``, the test set)
    as there are samples. FID is biased upwards at small n, so only numbers at the same n
    compare; the floor says how far from 0 a perfect model would be at this n.

    All images are float in [0, 1], [N, H, W, C]. Returns a JSON-able dict, with the
    extractor's label histogram of the samples and of the floor images when it has one, and
    with the classes the samples were asked for (``labels`` [N]) the fraction it labels so,
    ``class_accuracy``.
    """
    n = len(samples)
    if len(floor_images) < n:
        raise ValueError(f"{len(floor_images)} held-out images for the floor, need n = {n}")
    f_ref = reference_features
    if f_ref is None:
        f_ref, _ = extractor(reference)
    f_s, y_s = extractor(samples)
    f_h, y_h = extractor(floor_images[:n])
    kid = kid_from_features(f_s, f_ref, kid_subsets, kid_subset_size, seed)
    kid_floor = kid_from_features(f_h, f_ref, kid_subsets, kid_subset_size, seed)
    out = {
        "feature_extractor": extractor.name,
        "n": n,
        "n_reference": len(f_ref),
        "fid": fid_from_features(f_s, f_ref),
        "fid_floor": fid_from_features(f_h, f_ref),
        "kid": kid[0],
        "kid_std": kid[1],
        "kid_floor": kid_floor[0],
        "kid_floor_std": kid_floor[1],
        "kid_subset_size": min(kid_subset_size, n, len(f_ref)),
    }
    if extractor.num_classes:
        out["label_histogram"] = label_histogram(y_s, extractor.num_classes)
        out["label_histogram_floor"] = label_histogram(y_h, extractor.num_classes)
        if labels is not None:
            out["class_accuracy"] = float(np.mean(np.asarray(y_s) == np.asarray(labels)))
    return out
