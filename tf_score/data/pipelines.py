"""Data: 2-D toy distributions (TensorFlow Probability) and their input pipelines.

Every toy is an isotropic Gaussian mixture ``sum_k w_k N(mu_k, s_k^2 I)``, built as a
``tfd.MixtureSameFamily``. Gaussian smoothing keeps that family, so the density perturbed by
N(0, sigma^2 I) is known exactly (component scale sqrt(s_k^2 + sigma^2)) and so is its score:
the ground truth for score networks and samplers at every noise level.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tf_score.config import check_batch_split
from tf_score.config import check_labels as config_check_labels

tfd = tfp.distributions


@dataclasses.dataclass(frozen=True)
class GaussianMixtureToy:
    """A 2-D isotropic Gaussian mixture with exact (perturbed) densities and scores."""

    name: str
    weights: tuple[float, ...]
    locs: tuple[tuple[float, float], ...]
    scales: tuple[float, ...]
    #: square plotting window [-extent, extent]^2
    extent: float

    @property
    def dim(self) -> int:
        return 2

    def distribution(self, sigma=0.0) -> tfd.Distribution:
        """p_sigma = p * N(0, sigma^2 I). ``sigma`` may be a scalar or per-example [B]."""
        sigma = tf.convert_to_tensor(sigma, tf.float32)
        scales = tf.constant(self.scales, tf.float32)
        # [..., K] component scales; a per-example sigma gives a batch of mixtures.
        comp_scale = tf.sqrt(tf.square(scales) + tf.square(sigma)[..., tf.newaxis])
        locs = tf.constant(self.locs, tf.float32)
        comp_scale_diag = tf.broadcast_to(
            comp_scale[..., tf.newaxis], tf.concat([tf.shape(comp_scale), [2]], axis=0)
        )
        return tfd.MixtureSameFamily(
            mixture_distribution=tfd.Categorical(probs=tf.constant(self.weights, tf.float32)),
            components_distribution=tfd.MultivariateNormalDiag(
                loc=locs, scale_diag=comp_scale_diag
            ),
        )

    def sample(self, n, seed) -> tf.Tensor:
        """n exact samples (stateless: the same seed gives the same points)."""
        return self.distribution().sample(n, seed=tf.cast(seed, tf.int32))

    def log_prob(self, x, sigma=0.0) -> tf.Tensor:
        return self.distribution(sigma).log_prob(x)

    def score(self, x, sigma=0.0) -> tf.Tensor:
        """grad_x log p_sigma(x), by autodiff of the exact log density."""
        x = tf.convert_to_tensor(x, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)
            logp = self.log_prob(x, sigma)
        return tape.gradient(logp, x)

    def score_fn(self) -> Callable[[tf.Tensor], tf.Tensor]:
        """Unconditional exact score ``x -> grad log p(x)``."""
        return lambda x: self.score(x)

    @property
    def num_classes(self) -> int:
        """The classes of its labelled form: one per mixture component."""
        return len(self.weights)

    def sample_labelled(self, n, seed) -> tuple[tf.Tensor, tf.Tensor]:
        """(x [n, 2], labels int32 [n]): each point with the component it was drawn from
        (stateless: the same seed gives the same pairs)."""
        c_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        logits = tf.math.log(tf.constant(self.weights, tf.float32))[None, :]
        labels = tf.random.stateless_categorical(logits, n, c_seed, dtype=tf.int32)[0]
        z = tf.random.stateless_normal([n, 2], x_seed)
        locs, scales = tf.constant(self.locs, tf.float32), tf.constant(self.scales, tf.float32)
        return tf.gather(locs, labels) + tf.gather(scales, labels)[:, None] * z, labels

    def denoise(self, x, sigma, labels=None) -> tf.Tensor:
        """The exact denoiser E[x_0 | x_sigma = x] of p (labels None, or "no label": index
        ``num_classes``) or of the component each label names: per component the Gaussian
        posterior mean mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k), mixed by the posterior
        component probabilities."""
        x, var, diff = self._perturbed(x, sigma)
        locs, s2 = tf.constant(self.locs, tf.float32), tf.square(tf.constant(self.scales))
        d_k = locs[None] + (s2[None, :] / var)[..., None] * diff
        resp = tf.nn.softmax(self.class_logits(x, sigma), axis=-1)
        if labels is not None:
            labels = tf.broadcast_to(tf.cast(labels, tf.int32), tf.shape(x)[:1])
            chosen = tf.one_hot(labels, self.num_classes)  # "no label": all zeros
            given = tf.reduce_any(chosen > 0, axis=-1, keepdims=True)
            resp = tf.where(given, chosen, resp)
        return tf.reduce_sum(resp[..., None] * d_k, axis=1)

    def _perturbed(self, x, sigma):
        """(x, per-component variances of p_sigma [B, K], x - mu_k [B, K, 2])."""
        x = tf.convert_to_tensor(x, tf.float32)
        sigma = tf.broadcast_to(tf.cast(sigma, tf.float32), tf.shape(x)[:1])[:, None]
        var = tf.square(tf.constant(self.scales))[None, :] + tf.square(sigma)
        return x, var, x[:, None, :] - tf.constant(self.locs, tf.float32)[None, :, :]

    def class_logits(self, x, sigma) -> tf.Tensor:
        """The exact noise-conditional classifier: logits [B, K] of p(component k | x_sigma =
        x) = w_k N(x; mu_k, (s_k^2 + sigma^2) I) / p_sigma(x) (classifier guidance)."""
        x, var, diff = self._perturbed(x, sigma)
        log_w = tf.math.log(tf.constant(self.weights, tf.float32))[None, :]
        return log_w - tf.math.log(var) - tf.reduce_sum(tf.square(diff), -1) / (2.0 * var)

    def conditional_score_fn(self, sigmas) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
        """Exact noise-conditional score ``(x, labels) -> grad log p_{sigma[label]}(x)``."""
        sigmas = tf.constant(sigmas, tf.float32)
        return lambda x, labels: self.score(x, tf.gather(sigmas, labels))


def _ring(radius: float, n: int, scale: float):
    angles = 2 * np.pi * np.arange(n) / n
    return [(float(radius * np.cos(a)), float(radius * np.sin(a))) for a in angles], [scale] * n


def _two_mode() -> GaussianMixtureToy:
    return GaussianMixtureToy(
        name="two_mode",
        weights=(0.2, 0.8),
        locs=((-5.0, -5.0), (5.0, 5.0)),
        scales=(1.0, 1.0),
        extent=8.0,
    )


def _eight_gaussians() -> GaussianMixtureToy:
    locs, scales = _ring(4.0, 8, 0.35)
    return GaussianMixtureToy("eight_gaussians", (1 / 8,) * 8, tuple(locs), tuple(scales), 6.0)


def _rings() -> GaussianMixtureToy:
    # Two concentric circles, each a dense necklace of small Gaussians, mass ~ circumference.
    inner_locs, inner_scales = _ring(2.0, 32, 0.12)
    outer_locs, outer_scales = _ring(4.0, 64, 0.12)
    weights = np.array([1.0] * 32 + [1.0] * 64)
    weights /= weights.sum()
    return GaussianMixtureToy(
        "rings",
        tuple(float(w) for w in weights),
        tuple(inner_locs + outer_locs),
        tuple(inner_scales + outer_scales),
        5.5,
    )


TOYS: dict[str, Callable[[], GaussianMixtureToy]] = {
    "two_mode": _two_mode,
    "eight_gaussians": _eight_gaussians,
    "rings": _rings,
}


def get_toy(name: str) -> GaussianMixtureToy:
    if name not in TOYS:
        raise ValueError(f"unknown toy distribution {name!r}; choose one of {sorted(TOYS)}")
    return TOYS[name]()


class BatchShare(NamedTuple):
    """The rows of every global batch that one input pipeline feeds, and to how many replicas.

    Global batch k is the same examples in the same order whatever the topology: pipeline p
    of P feeds rows [p * B / P, (p + 1) * B / P), split in order between its local replicas
    (replica r of R gets rows [r * B / R, (r + 1) * B / R) when replicas are numbered
    worker-major, as tf.distribute numbers them).
    """

    start: int
    rows: int
    local_replicas: int = 1

    @property
    def per_replica(self) -> int:
        return self.rows // self.local_replicas


def batch_share(global_batch: int, ctx: tf.distribute.InputContext) -> BatchShare:
    """This input pipeline's ``BatchShare`` of a ``global_batch`` under ``ctx``."""
    pipelines, replicas = ctx.num_input_pipelines, ctx.num_replicas_in_sync
    check_batch_split(global_batch, replicas)
    if replicas % pipelines:
        raise ValueError(f"{replicas} replicas cannot be split evenly over {pipelines} workers")
    rows = global_batch // pipelines
    return BatchShare(ctx.input_pipeline_id * rows, rows, replicas // pipelines)


def split_for_replicas(ds: tf.data.Dataset, share: BatchShare) -> tf.data.Dataset:
    """Turn a stream of ``share.rows``-row batches into per-replica batches, in replica order
    (one pipeline feeding L local replicas hands them L consecutive elements per step)."""
    if share.local_replicas == 1:
        return ds
    per = share.per_replica

    def split(batch):
        return tf.nest.map_structure(
            lambda t: tf.reshape(t, tf.concat([[share.local_replicas, per], tf.shape(t)[1:]], 0)),
            batch,
        )

    return ds.map(split).unbatch()


def toy_dataset(
    toy: GaussianMixtureToy,
    batch_size: int,
    seed,
    start_step: int = 0,
    share: BatchShare | None = None,
    labelled: bool = False,
):
    """Infinite tf.data stream of fresh batches; global batch k is drawn with fold_in(seed, k).

    ``share`` picks this input pipeline's rows (default: all of them, one replica). Starting at
    ``start_step`` replays exactly the batches an uninterrupted run would see. ``labelled``:
    batches of (x, labels), each point's mixture component its label.
    """
    seed = tf.cast(seed, tf.int32)
    share = share or BatchShare(0, batch_size)

    def draw(k):
        k_seed = tf.random.experimental.stateless_fold_in(seed, k)
        rows = slice(share.start, share.start + share.rows)
        if labelled:
            x, labels = toy.sample_labelled(batch_size, k_seed)
            return x[rows], labels[rows]
        return toy.sample(batch_size, seed=k_seed)[rows]

    ds = tf.data.Dataset.counter(start=start_step).map(
        draw, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return split_for_replicas(ds, share).prefetch(tf.data.AUTOTUNE)


# --- images ------------------------------------------------------------------------------


class DataUnavailableError(RuntimeError):
    """A data set cannot be read; the message says how to make it available."""


class BadImagesError(ValueError):
    """Files in an image folder that cannot be used; ``problems`` maps file -> reason."""

    def __init__(self, folder: str, problems: dict[str, str]):
        self.problems = problems
        listing = "\n".join(f"  {name}: {why}" for name, why in sorted(problems.items()))
        super().__init__(f"{len(problems)} unusable file(s) in {folder}:\n{listing}")


@dataclasses.dataclass(frozen=True)
class ImageDatasetSpec:
    """How a tfds image data set is read: its image key, output size, crop and flips."""

    tfds_name: str
    image_shape: tuple[int, int, int]
    random_flip: bool
    center_crop: int | None = None  # crop a square this size from the centre before resizing
    cache: bool = True  # keep decoded images in memory (small data sets)
    num_classes: int = 0  # classes of its ``label`` feature (0: unlabelled)


IMAGE_DATASETS: dict[str, ImageDatasetSpec] = {
    "mnist": ImageDatasetSpec("mnist", (28, 28, 1), random_flip=False, num_classes=10),
    "fashion_mnist": ImageDatasetSpec("fashion_mnist", (28, 28, 1), False, num_classes=10),
    "cifar10": ImageDatasetSpec("cifar10", (32, 32, 3), random_flip=True, num_classes=10),
    # NCSN: centre crop 140 x 140, resize to 64 x 64.
    "celeb_a": ImageDatasetSpec(
        "celeb_a", (64, 64, 3), random_flip=True, center_crop=140, cache=False
    ),
}


def _tfds_examples(name: str, split: str, data_dir: str | None, download: bool):
    import tensorflow_datasets as tfds

    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image data set {name!r}; choose one of {sorted(IMAGE_DATASETS)}")
    spec = IMAGE_DATASETS[name]
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if not builder.is_prepared():
        if not download:
            raise DataUnavailableError(_how_to_prepare(spec.tfds_name, builder.data_dir))
        if not download_host_reachable():  # else tfds retries for minutes before it gives up
            raise DataUnavailableError(
                f"{spec.tfds_name!r} is not prepared in {builder.data_dir!r} and its download "
                f"server ({DOWNLOAD_HOST}) cannot be reached from here.\n"
                + _how_to_prepare(spec.tfds_name, builder.data_dir)
            )
        try:
            builder.download_and_prepare()
        except Exception as e:  # network errors come in many types; all mean the same here
            raise DataUnavailableError(
                f"could not download {spec.tfds_name!r} ({type(e).__name__}: {e}).\n"
                + _how_to_prepare(spec.tfds_name, builder.data_dir)
            ) from e
    splits = builder.info.splits
    base_split = split.split("[")[0]
    if splits and base_split not in splits:
        raise ValueError(f"{name} has no split {split!r}; available: {sorted(splits)}")
    return builder.as_dataset(split=split, shuffle_files=False), spec


def _image_of(spec: ImageDatasetSpec):
    h, w, _ = spec.image_shape

    def image(example):
        img = example["image"]
        if spec.center_crop:
            img = tf.image.resize_with_crop_or_pad(img, spec.center_crop, spec.center_crop)
        if img.shape[0] != h or img.shape[1] != w:
            img = tf.cast(tf.round(tf.image.resize(img, [h, w], antialias=True)), tf.uint8)
        return img

    return image


def load_tfds_images(
    name: str, split: str, data_dir: str | None = None, download: bool = False
) -> tuple[tf.data.Dataset, ImageDatasetSpec]:
    """The uint8 images of a tfds data set (no shuffling), resized and cropped per its spec.

    Fails with ``DataUnavailableError`` saying how to prepare the data when it is missing.
    """
    ds, spec = _tfds_examples(name, split, data_dir, download)
    return ds.map(_image_of(spec), num_parallel_calls=tf.data.AUTOTUNE), spec


def load_tfds_labelled(
    name: str, split: str, data_dir: str | None = None, download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W, C], int64 labels [N]) of a labelled tfds image data set, in
    memory, in the data set's order (for classifiers and label histograms)."""
    ds, spec = _tfds_examples(name, split, data_dir, download)
    if "label" not in ds.element_spec:
        raise ValueError(f"{name} has no 'label' feature")
    image = _image_of(spec)
    ds = ds.map(lambda e: (image(e), e["label"]), num_parallel_calls=tf.data.AUTOTUNE)
    xs, ys = [], []
    for x, y in ds.batch(4096).as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


#: where tfds downloads the image data sets from (checked before a download starts)
DOWNLOAD_HOST = "storage.googleapis.com"


def download_host_reachable(timeout: float = 5.0) -> bool:
    """Whether a TCP connection to ``DOWNLOAD_HOST``:443 opens within ``timeout`` seconds."""
    import socket

    try:
        with socket.create_connection((DOWNLOAD_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _how_to_prepare(name: str, data_dir: str) -> str:
    return (
        f"data set {name!r} is not prepared in {data_dir!r}. On a machine with internet run\n"
        f"  python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
        f"data_dir='DIR').download_and_prepare()\"\n"
        f"(or `tfds build {name} --data_dir=DIR`; for manual downloads see the tfds catalogue "
        f"page of {name}), copy DIR here and pass --data_dir=DIR."
    )


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_image_folder(folder: str, image_size: int | None = None) -> np.ndarray:
    """Every image file in ``folder`` as uint8 [N, H, W, C].

    Safe fixes are made and reported: palette/alpha/CMYK images are converted to the majority
    mode (grayscale or RGB), and with ``image_size`` every image is centre-cropped to a square
    and resized. Corrupt files, and mixed sizes without ``image_size``, stop with
    ``BadImagesError`` listing each file and why.
    """
    import os

    from absl import logging
    from PIL import Image

    if not os.path.isdir(folder):
        raise DataUnavailableError(f"image folder {folder!r} does not exist")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(_IMAGE_SUFFIXES))
    if not names:
        raise DataUnavailableError(f"no image files ({', '.join(_IMAGE_SUFFIXES)}) in {folder!r}")
    problems, images = {}, {}
    for name in names:
        try:
            with Image.open(os.path.join(folder, name)) as im:
                im.load()
                images[name] = im.copy()
        except Exception as e:  # PIL raises many types for unreadable files
            problems[name] = f"unreadable ({type(e).__name__}: {e})"
    gray = sum(im.mode in ("L", "1", "I;16", "I") for im in images.values())
    mode = "L" if gray > len(images) / 2 else "RGB"
    arrays = {}
    for name, im in images.items():
        if im.mode != mode:
            logging.warning("%s: converted from %s to %s", name, im.mode, mode)
            im = im.convert(mode)
        if image_size:
            side = min(im.size)
            left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
            im = im.crop((left, top, left + side, top + side))
            if side != image_size:
                im = im.resize((image_size, image_size), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.uint8)
        arrays[name] = arr[..., None] if arr.ndim == 2 else arr
    sizes = {a.shape for a in arrays.values()}
    if len(sizes) > 1:
        common = max(sizes, key=lambda s: sum(a.shape == s for a in arrays.values()))
        for name, a in arrays.items():
            if a.shape != common:
                problems[name] = (
                    f"size {a.shape[1]}x{a.shape[0]}, most are "
                    f"{common[1]}x{common[0]} (pass --image_size to resize all)"
                )
    if problems:
        raise BadImagesError(folder, problems)
    return np.stack([arrays[n] for n in names if n in arrays])


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """A data set's ``labels`` as int32 [N], each in [0, num_classes) (``config.check_labels``,
    naming ``where`` they come from)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{where}: labels must be one per image [N], got shape {labels.shape}")
    return config_check_labels(labels, num_classes, f"{where}: labels")


def load_labelled_folder(folder: str, image_size: int | None = None):
    """(uint8 images [N, H, W, C], int32 labels [N], class names): one class per
    subfolder of ``folder``, numbered in sorted order of the subfolders' names."""
    import os

    if not os.path.isdir(folder):
        raise DataUnavailableError(f"image folder {folder!r} does not exist")
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not classes:
        raise DataUnavailableError(f"{folder!r} has no class subfolders (one per class)")
    parts = [load_image_folder(os.path.join(folder, c), image_size) for c in classes]
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise BadImagesError(folder, {c: f"images of shape {p.shape[1:]}"
                                      for c, p in zip(classes, parts, strict=True)})  # fmt: skip
    labels = np.concatenate([np.full(len(p), k, np.int32) for k, p in enumerate(parts)])
    return np.concatenate(parts), labels, classes


def load_npz_labels(path: str) -> np.ndarray:
    """The ``labels`` array of an .npz file of images (DataUnavailableError if it has none)."""
    with np.load(path, allow_pickle=False) as f:
        if "labels" not in f:
            raise DataUnavailableError(f"{path} has no 'labels' array (num_classes > 0 needs "
                                       "one label per image)")  # fmt: skip
        return f["labels"]


def load_npz_images(path: str) -> np.ndarray:
    """Images from an .npz: key ``images`` (or its only array), [N, H, W(, C)].

    uint8 in [0, 255] or floats in [0, 1]; returned as uint8 [N, H, W, C].
    """
    import os

    if not os.path.isfile(path):
        raise DataUnavailableError(f"npz file {path!r} does not exist")
    if not zipfile.is_zipfile(path):  # np.load would try to unpickle anything else
        raise ValueError(f"{path} is not a readable .npz file (not a zip archive)")
    try:  # allow_pickle stays off: an object array is refused, never unpickled
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            if "images" in keys:
                x = f["images"]
            elif len(keys) == 1:
                x = f[keys[0]]
            else:
                raise ValueError(f"{path}: expected an array named 'images' (found {keys})")
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable .npz file ({type(e).__name__})") from e
    except ValueError as e:
        if "images" in str(e):
            raise
        raise ValueError(f"{path} is not a numeric .npz array of images: {e}") from e
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: images must be [N, H, W] or [N, H, W, 1|3], got {x.shape}")
    if len(x) == 0:
        raise ValueError(f"{path}: holds no images (shape {x.shape})")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            bad = int(np.sum(~np.isfinite(x).reshape(len(x), -1).all(1)))
            raise ValueError(f"{path}: {bad} image(s) have NaN or infinite pixels")
        if x.min() < 0 or x.max() > 1:
            raise ValueError(
                f"{path}: float images must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]"
            )
        return np.round(x * 255).astype(np.uint8)
    raise ValueError(f"{path}: images must be uint8 or float, got {x.dtype}")


def count_examples(ds: tf.data.Dataset) -> int:
    """Number of elements, from the cardinality or by counting once (eagerly)."""
    n = int(ds.cardinality())
    if n < 0:
        n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
    return n


def image_training_dataset(
    images: tf.data.Dataset,
    batch_size: int,
    seed,
    start_step: int = 0,
    random_flip: bool = False,
    shuffle_buffer: int = 10_000,
    cache: bool = True,
    share: BatchShare | None = None,
    num_pipelines: int = 1,
    pipeline_id: int = 0,
    num_examples: int | None = None,
) -> tf.data.Dataset:
    """Infinite, deterministic batches of dequantised images in [0, 1] for training (of
    (image, label) pairs when ``images`` holds pairs).

    x = (pixel + u) / 256 with u ~ U(0, 1) (= x*255/256 + U(0, 1/256) for x = pixel/255).
    ``batch_size`` is the global batch; ``share`` picks this input pipeline's rows of it and
    splits them between its local replicas (default: all rows, one replica).

    With ``cache`` (data sets that fit in memory) every pipeline holds the images as one
    tensor, and epoch e visits them in the order of a stateless permutation seeded by
    fold_in(seed, e), element noise a function of (seed, e, index): global batch k is then
    the same images with the same noise for any number of replicas and workers, and a resume
    at ``start_step`` skips nothing. Without it (streams too big for memory) pipeline
    ``pipeline_id`` of ``num_pipelines`` reads its own shard through a seeded shuffle buffer
    and a resume skips ``start_step`` batches: reproducible for a given number of workers.
    """
    seed = tf.cast(seed, tf.int32)
    share = share or BatchShare(0, batch_size)
    # Sizes must be Python numbers (a strategy may trace this function): pass
    # ``num_examples`` (see ``count_examples``) or it is taken from the data once, eagerly.
    total = int(num_examples) if num_examples is not None else count_examples(images)
    prep = _dequantise(random_flip)
    if cache:
        ds = _cached_epochs(images, total, batch_size, seed, start_step, share, prep)
    else:
        ds = _streamed(images, total, seed, start_step, share, prep, shuffle_buffer,
                       num_pipelines, pipeline_id)  # fmt: skip
    return ds.prefetch(tf.data.AUTOTUNE)


def _dequantise(random_flip: bool):
    """(seed, uint8 image) -> (pixel + u) / 256, u ~ U(0, 1), randomly flipped if asked."""

    def prep(s, img):
        if isinstance(img, tuple):  # (image, label): the label as it is
            return prep(s, img[0]), img[1]
        s_noise, s_flip = tf.unstack(tf.random.experimental.stateless_split(s, 2))
        x = tf.cast(img, tf.float32)
        x = (x + tf.random.stateless_uniform(tf.shape(x), s_noise)) / 256.0
        if random_flip:
            x = tf.image.stateless_random_flip_left_right(x, s_flip)
        return x

    return prep


def _cached_epochs(images, n, batch_size, seed, start_step, share, prep):
    """In memory: epoch e in the order of a stateless permutation seeded fold_in(seed, e)."""
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise ValueError(f"the data set has {n} images, fewer than one batch of {batch_size}")
    with tf.init_scope():  # materialise eagerly even when traced
        table = tf.nest.map_structure(lambda t: tf.constant(t.numpy()), next(iter(images.batch(n))))
    first_epoch, skip = divmod(int(start_step), per_epoch)

    def epoch(e):
        e_seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(e, tf.int32))
        order = tf.random.experimental.stateless_shuffle(tf.range(n), e_seed)
        # [steps, this pipeline's rows] of the epoch's global batches (remainder dropped)
        rows = tf.reshape(order[: per_epoch * batch_size], [per_epoch, batch_size])
        first = tf.where(e == first_epoch, skip, 0)
        rows = rows[first:, share.start : share.start + share.rows]
        return (
            tf.data.Dataset.from_tensor_slices(tf.reshape(rows, [-1]))
            .map(
                lambda i: prep(
                    tf.random.experimental.stateless_fold_in(e_seed, i),
                    tf.nest.map_structure(lambda t: tf.gather(t, i), table),
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
            .batch(share.per_replica, drop_remainder=True)
        )

    return tf.data.Dataset.counter(start=first_epoch).flat_map(epoch)


def _streamed(images, total, seed, start_step, share, prep, shuffle_buffer, num_pipelines,
              pipeline_id):  # fmt: skip
    """Too big for memory: this pipeline's shard through a seeded shuffle buffer."""
    n = total // num_pipelines  # shards differ by at most one image; use the common part
    if num_pipelines > 1:
        images = images.shard(num_pipelines, pipeline_id)
    images = images.take(n)
    if n < share.rows:
        raise ValueError(f"the data set has {n} images, fewer than one batch of {share.rows}")
    shuffle_seed = int(tf.random.stateless_uniform([], seed, maxval=2**31 - 1, dtype=tf.int32))
    ds = (
        images.shuffle(
            min(int(shuffle_buffer), n), seed=shuffle_seed, reshuffle_each_iteration=True
        )
        .repeat()
        .enumerate()
        .map(
            lambda k, img: prep(
                tf.random.experimental.stateless_fold_in(seed, tf.cast(k, tf.int32)), img
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .batch(share.rows, drop_remainder=True)
        .skip(int(start_step))
    )
    return split_for_replicas(ds, share)


def image_dataset_fn(images, seed, random_flip: bool = False, cache: bool = True):
    """A ``ModelBundle.dataset_fn`` over ``images`` (see ``image_training_dataset``): in
    memory, global batch k depends only on (seed, k); streamed, each input pipeline reads its
    shard with its own seed fold_in(seed, pipeline id)."""
    num_examples = count_examples(images)
    seed = tf.cast(seed, tf.int32)

    def dataset_fn(global_batch, ctx, start_step):
        # In memory every pipeline follows the one global stream (that of pipeline 0).
        pipeline_id = ctx.input_pipeline_id if not cache else 0
        pipeline_seed = tf.random.experimental.stateless_fold_in(seed, pipeline_id, alg="philox")
        return image_training_dataset(
            images,
            global_batch,
            pipeline_seed,
            start_step=start_step,
            random_flip=random_flip,
            cache=cache,
            share=batch_share(global_batch, ctx),
            num_pipelines=ctx.num_input_pipelines,
            pipeline_id=ctx.input_pipeline_id,
            num_examples=num_examples,
        )

    return dataset_fn


def load_training_images(cfg, split: str = "train", labels: bool = False):
    """(uint8 image dataset, image shape, random_flip, cache) for a ``config.DataConfig``: tfds
    images, an image folder or an .npz file (every family's image loader). With ``labels``
    (a class-conditional model's training, ``cfg.num_classes`` > 0) the elements are (image,
    int32 label), the labels checked to lie in [0, num_classes)."""
    name, classes = cfg.dataset, (cfg.num_classes if labels else 0)
    if name in ("folder", "npz"):
        if name == "folder" and classes:
            arr, label_array, _ = load_labelled_folder(cfg.data_path, cfg.image_size or None)
        elif name == "folder":
            arr = load_image_folder(cfg.data_path, cfg.image_size or None)
        else:
            arr = load_npz_images(cfg.data_path)
            label_array = load_npz_labels(cfg.data_path) if classes else None
        if classes:
            label_array = check_labels(label_array, classes, cfg.data_path)
            if len(label_array) != len(arr):
                raise ValueError(f"{cfg.data_path}: {len(label_array)} labels for {len(arr)} "
                                 "images")  # fmt: skip
        ds = tf.data.Dataset.from_tensor_slices((arr, label_array) if classes else arr)
        return ds, tuple(arr.shape[1:]), bool(cfg.random_flip), True
    ds, spec = _tfds_examples(name, split, cfg.data_dir or None, download=cfg.download)
    image = _image_of(spec)
    if classes:
        if classes < spec.num_classes:
            raise ValueError(f"dataset={name} has {spec.num_classes} classes: num_classes="
                             f"{classes} is too few")  # fmt: skip
        ds = ds.map(lambda e: (image(e), tf.cast(e["label"], tf.int32)),
                    num_parallel_calls=tf.data.AUTOTUNE)  # fmt: skip
    else:
        ds = ds.map(image, num_parallel_calls=tf.data.AUTOTUNE)
    return ds, spec.image_shape, spec.random_flip, spec.cache
