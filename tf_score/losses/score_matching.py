"""Score-matching objectives.

Every loss is a pure function of a score function and a batch that returns the
per-example loss, shape [B]. The training loop reduces it (tf.nn.compute_average_loss
under a distribution strategy), so the same loss serves one device or many.

Conventions:
  * An unconditional score function is ``score_fn(x) -> s`` with ``s.shape == x.shape``.
  * A noise-conditional one is ``score_fn(x, levels) -> s`` where ``levels`` are int32
    level indices into the schedule ``sigmas`` (sigma_1 > ... > sigma_L).
  * ``seed`` is a stateless seed, an int32/int64 tensor of shape [2]; the same seed gives the
    same noise, so a resumed run replays exactly.
Losses are computed in float32 whatever the network's compute dtype is.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

ScoreFn = Callable[..., tf.Tensor]

PROJECTIONS = ("gaussian", "rademacher")


def _flat_sum(t: tf.Tensor) -> tf.Tensor:
    """Sum over every axis but the first (the batch)."""
    return tf.reduce_sum(tf.reshape(t, [tf.shape(t)[0], -1]), axis=1)


def _per_example(values: tf.Tensor, batch_shape_like: tf.Tensor) -> tf.Tensor:
    """Reshape per-example values [B] to broadcast against a batch shaped like the input."""
    rank = batch_shape_like.shape.rank
    return tf.reshape(values, [-1] + [1] * (rank - 1))


def _split(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
    return tf.unstack(tf.random.experimental.stateless_split(seed, n, alg="philox"))


def sample_levels(batch_size, num_levels, seed) -> tf.Tensor:
    """Noise-level index per example, uniform on {0, ..., L-1} (int32, shape [B])."""
    return tf.random.stateless_uniform(
        [batch_size], seed=seed, minval=0, maxval=num_levels, dtype=tf.int32, alg="philox"
    )


def projections(shape, seed, kind: str = "gaussian") -> tf.Tensor:
    """Random projection directions v with E[v v^T] = I: N(0, I) or Rademacher (+-1)."""
    if kind == "gaussian":
        return tf.random.stateless_normal(shape, seed=seed, alg="philox")
    if kind == "rademacher":
        bits = tf.random.stateless_uniform(
            shape, seed=seed, minval=0, maxval=2, dtype=tf.int32, alg="philox"
        )
        return tf.cast(2 * bits - 1, tf.float32)
    raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}")


# --- denoising score matching -------------------------------------------------------------


def dsm(score_fn: ScoreFn, x: tf.Tensor, sigma: float, seed) -> tf.Tensor:
    """Single-level denoising score matching (Vincent 2011).

    loss(x) = 1/2 || s(x~) + (x~ - x) / sigma^2 ||^2 with x~ = x + sigma z, z ~ N(0, I).
    Its minimiser is the score of the perturbed density p_sigma = p * N(0, sigma^2 I).
    """
    x = tf.convert_to_tensor(x, tf.float32)
    z = tf.random.stateless_normal(tf.shape(x), seed=seed, alg="philox")
    s = tf.cast(score_fn(x + sigma * z), tf.float32)
    return 0.5 * _flat_sum(tf.square(s + z / sigma))


def anneal_dsm(
    score_fn: ScoreFn, x: tf.Tensor, sigmas, levels: tf.Tensor, seed, anneal_power: float = 2.0
) -> tf.Tensor:
    """NCSN objective: multi-level DSM weighted by lambda(sigma_i) = sigma_i^anneal_power.

    loss(x) = sigma_i^p / 2 || s(x~, i) + (x~ - x) / sigma_i^2 ||^2, x~ = x + sigma_i z, with the
    level i = ``levels`` drawn per example by the caller (see ``sample_levels``). With p = 2 each
    level contributes O(1) because ||sigma s|| ~ sqrt(D) at the optimum.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    sigma = tf.gather(tf.convert_to_tensor(sigmas, tf.float32), levels)
    sigma_b = _per_example(sigma, x)
    z = tf.random.stateless_normal(tf.shape(x), seed=seed, alg="philox")
    s = tf.cast(score_fn(x + sigma_b * z, levels), tf.float32)
    return 0.5 * _flat_sum(tf.square(s + z / sigma_b)) * sigma**anneal_power


# --- sliced score matching ----------------------------------------------------------------


def _sliced_terms(s_of_x: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, v: tf.Tensor):
    """Return s(x) and v^T (ds/dx) v per example with one Hessian-vector-style product.

    d(v^T s)/dx summed over the batch is the per-example gradient because examples do not
    interact in the network (no batch norm); the outer training tape differentiates through it.
    """
    with tf.GradientTape() as tape:
        tape.watch(x)
        s = tf.cast(s_of_x(x), tf.float32)
        sv = tf.reduce_sum(s * v)
    grad_sv = tape.gradient(sv, x)
    return s, _flat_sum(v * grad_sv)


def _sliced(s_of_x, x, seed, n_particles, projection, variance_reduction) -> tf.Tensor:
    if n_particles < 1:
        raise ValueError(f"n_particles must be >= 1, got {n_particles}")
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    x_rep = tf.repeat(x, n_particles, axis=0) if n_particles > 1 else x
    v = projections(tf.shape(x_rep), seed, projection)
    s, vjv = _sliced_terms(s_of_x, x_rep, v)
    if variance_reduction:
        # E_v[(v^T s)^2] = ||s||^2 when E[v v^T] = I, so the second term is taken exactly.
        second = 0.5 * _flat_sum(tf.square(s))
    else:
        second = 0.5 * tf.square(_flat_sum(v * s))
    per_particle = vjv + second
    return tf.reduce_mean(tf.reshape(per_particle, [-1, n_particles]), axis=1)


def ssm(
    score_fn: ScoreFn,
    x: tf.Tensor,
    seed,
    n_particles: int = 1,
    projection: str = "gaussian",
) -> tf.Tensor:
    """Sliced score matching (Song et al. 2019).

    loss(x) = E_v [ v^T grad_x(v^T s(x)) + 1/2 (v^T s(x))^2 ], v ~ N(0, I) or Rademacher,
    averaged over ``n_particles`` projections. Unbiased for the exact SM objective up to a
    constant; needs one extra backward pass, not D.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    return _sliced(score_fn, x, seed, n_particles, projection, variance_reduction=False)


def ssm_vr(
    score_fn: ScoreFn,
    x: tf.Tensor,
    seed,
    n_particles: int = 1,
    projection: str = "gaussian",
) -> tf.Tensor:
    """Variance-reduced SSM: loss(x) = E_v [ v^T grad_x(v^T s(x)) ] + 1/2 ||s(x)||^2."""
    x = tf.convert_to_tensor(x, tf.float32)
    return _sliced(score_fn, x, seed, n_particles, projection, variance_reduction=True)


def anneal_ssm(
    score_fn: ScoreFn,
    x: tf.Tensor,
    sigmas,
    levels: tf.Tensor,
    seed,
    anneal_power: float = 2.0,
    n_particles: int = 1,
    projection: str = "gaussian",
    variance_reduction: bool = False,
) -> tf.Tensor:
    """Noise-conditional SSM: sliced SM of s(., i) on x~ = x + sigma_i z, weighted by sigma_i^p.

    Estimates the score of p_{sigma_i} without the closed-form DSM target, which is what
    lets SSM train on perturbed data whose noise model is unknown.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    noise_seed, proj_seed = _split(seed, 2)
    sigma = tf.gather(tf.convert_to_tensor(sigmas, tf.float32), levels)
    x_t = x + _per_example(sigma, x) * tf.random.stateless_normal(
        tf.shape(x), seed=noise_seed, alg="philox"
    )
    levels_rep = tf.repeat(levels, n_particles, axis=0) if n_particles > 1 else levels
    loss = _sliced(
        lambda y: score_fn(y, levels_rep),
        x_t,
        proj_seed,
        n_particles,
        projection,
        variance_reduction,
    )
    return loss * sigma**anneal_power


# --- exact score matching -----------------------------------------------------------------


def exact_sm(score_fn: ScoreFn, x: tf.Tensor) -> tf.Tensor:
    """Hyvarinen score matching: loss(x) = tr(grad_x s(x)) + 1/2 ||s(x)||^2.

    Takes D backward passes (one per input dimension), so it is for low-dimensional data:
    x must be [B, D] with a static D.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    if x.shape.rank != 2 or x.shape[1] is None:
        raise ValueError(f"exact_sm needs x of shape [B, D] with static D, got {x.shape}")
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        s = tf.cast(score_fn(x), tf.float32)
        components = [s[:, d] for d in range(x.shape[1])]
    trace = tf.add_n([tape.gradient(c, x)[:, d] for d, c in enumerate(components)])
    del tape
    return trace + 0.5 * tf.reduce_sum(tf.square(s), axis=1)


def anneal_ssm_vr(
    score_fn: ScoreFn,
    x: tf.Tensor,
    sigmas,
    levels: tf.Tensor,
    seed,
    anneal_power: float = 2.0,
    n_particles: int = 1,
    projection: str = "gaussian",
) -> tf.Tensor:
    """``anneal_ssm`` with the variance-reduced second term 1/2 ||s||^2 (SSM-VR)."""
    return anneal_ssm(
        score_fn, x, sigmas, levels, seed, anneal_power, n_particles, projection, True
    )
