"""Data: 2-D toy distributions (TensorFlow Probability) and their input pipelines.

Every toy is an isotropic Gaussian mixture ``sum_k w_k N(mu_k, s_k^2 I)``, built as a
``tfd.MixtureSameFamily``. Gaussian smoothing keeps that family, so the density perturbed by
N(0, sigma^2 I) is known exactly (component scale sqrt(s_k^2 + sigma^2)) and so is its score:
the ground truth for score networks and samplers at every noise level.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

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


def toy_dataset(toy: GaussianMixtureToy, batch_size: int, seed, start_step: int = 0):
    """Infinite tf.data stream of fresh batches; batch k is drawn with fold_in(seed, k).

    Starting at ``start_step`` replays exactly the batches an uninterrupted run would see.
    """
    seed = tf.cast(seed, tf.int32)

    def draw(k):
        return toy.sample(batch_size, seed=tf.random.experimental.stateless_fold_in(seed, k))

    return (
        tf.data.Dataset.counter(start=start_step)
        .map(draw, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )
