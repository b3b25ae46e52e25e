"""Langevin-type samplers as compiled TensorFlow loops.

Update convention used everywhere in this module (the "a" convention):

    x <- x + a * s(x) + sqrt(2 a) * z,     z ~ N(0, I)

which is Langevin dynamics for p when s = grad log p. The toy code of NCSN writes the same
step as ``x + (lr / 2) s + sqrt(lr) z``; that is a = lr / 2, so its "lr 0.1" is a = 0.05 here.
The image code of NCSN already uses this convention with a_i = eps * (sigma_i / sigma_L)^2.

All samplers run as one ``tf.function`` (optionally XLA-compiled): a ``tf.while_loop`` over
steps, never a Python loop at run time. Noise is stateless (Philox), drawn from
``fold_in(seed, step)``, so a given seed replays the same chain. XLA's Philox kernels give a
different (equally valid) stream than TensorFlow's, so a chain is reproducible for a given
seed and compile mode, not across ``jit_compile`` settings.
The chain state is float32 even when the network computes in bfloat16/float16.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class SamplerOutput(NamedTuple):
    """What every sampler returns."""

    samples: tf.Tensor
    #: chain state at the start and at the end of every noise level, [L + 1, B, ...]
    #: (only when ``snapshots=True``; otherwise None).
    snapshots: tf.Tensor | None
    #: number of score-network evaluations per sample (int32 scalar).
    num_evals: tf.Tensor


def uniform_init(shape, seed, minval: float = 0.0, maxval: float = 1.0) -> tf.Tensor:
    """Initial chain state x0 ~ U[minval, maxval]^shape (NCSN starts from U[0, 1] images)."""
    return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval, alg="philox")


def _step_noise(seed, step, shape):
    # Philox explicitly: "auto_select" may pick another algorithm on other devices.
    return tf.random.stateless_normal(
        shape, seed=tf.random.experimental.stateless_fold_in(seed, step, alg="philox"), alg="philox"
    )


def _langevin_impl(score_fn, x0, step_size, n_steps, seed):
    x0 = tf.convert_to_tensor(x0, tf.float32)
    step_size = tf.cast(step_size, tf.float32)
    n_steps = tf.cast(n_steps, tf.int32)
    noise_scale = tf.sqrt(2.0 * step_size)

    def body(k, x):
        s = tf.cast(score_fn(x), tf.float32)
        x = x + step_size * s + noise_scale * _step_noise(seed, k, tf.shape(x))
        return k + 1, x

    _, x = tf.while_loop(lambda k, _: k < n_steps, body, (tf.constant(0), x0))
    return SamplerOutput(x, None, n_steps)


def _annealed_impl(
    score_fn, x0, sigmas, eps, n_steps_each, seed, denoise, snapshots, x_obs=None, mask=None
):
    """Annealed Langevin; with (x_obs, mask) the masked pixels are clamped to x_obs noised to
    the current level before every step (NCSN inpainting) and to x_obs at the end."""
    x0 = tf.convert_to_tensor(x0, tf.float32)
    sigmas = tf.convert_to_tensor(sigmas, tf.float32)
    eps = tf.cast(eps, tf.float32)
    n_steps_each = tf.cast(n_steps_each, tf.int32)
    num_levels = sigmas.shape[0] if sigmas.shape[0] is not None else tf.shape(sigmas)[0]
    batch = tf.shape(x0)[0]
    sigma_last = sigmas[-1]
    inpaint = x_obs is not None
    if inpaint:
        x_obs = tf.convert_to_tensor(x_obs, tf.float32)
        mask = tf.cast(mask, tf.float32)
        # A different stream from the step noise: fold in a step index past the last step.
        obs_seed = tf.random.experimental.stateless_fold_in(seed, -1, alg="philox")

    def level_body(level, x, snaps):
        a = eps * tf.square(sigmas[level] / sigma_last)
        noise_scale = tf.sqrt(2.0 * a)
        labels = tf.fill([batch], level)
        if inpaint:
            observed = x_obs + sigmas[level] * _step_noise(obs_seed, level, tf.shape(x_obs))

        def step_body(t, x):
            if inpaint:
                x = mask * observed + (1.0 - mask) * x
            s = tf.cast(score_fn(x, labels), tf.float32)
            z = _step_noise(seed, level * n_steps_each + t, tf.shape(x))
            return t + 1, x + a * s + noise_scale * z

        _, x = tf.while_loop(lambda t, _: t < n_steps_each, step_body, (tf.constant(0), x))
        if snapshots:
            snaps = snaps.write(level + 1, x)
        return level + 1, x, snaps

    snaps = tf.TensorArray(tf.float32, size=num_levels + 1, element_shape=x0.shape)
    if snapshots:
        snaps = snaps.write(0, x0)
    _, x, snaps = tf.while_loop(
        lambda level, *_: level < num_levels, level_body, (tf.constant(0), x0, snaps)
    )
    num_evals = tf.cast(num_levels, tf.int32) * n_steps_each
    if denoise:
        # Tweedie: E[x | x~] = x~ + sigma^2 grad log p_sigma(x~), taken at the last level.
        labels = tf.fill([batch], tf.cast(num_levels, tf.int32) - 1)
        x = x + tf.square(sigma_last) * tf.cast(score_fn(x, labels), tf.float32)
        num_evals += 1
    if inpaint:
        x = mask * x_obs + (1.0 - mask) * x
    return SamplerOutput(x, snaps.stack() if snapshots else None, num_evals)


def _check(name, value, ok, allowed):
    """Validate a Python or eager value; symbolic tensors are checked in-graph by callers."""
    v = tf.get_static_value(value)
    if v is None:
        return
    if not ok(v):
        raise ValueError(f"{name} must be {allowed}, got {v!r}")


_COMPILED: dict[tuple[str, bool], tf.types.experimental.PolymorphicFunction] = {}


def _compiled(name, impl, jit_compile):
    key = (name, bool(jit_compile))
    if key not in _COMPILED:
        _COMPILED[key] = tf.function(impl, jit_compile=bool(jit_compile), reduce_retracing=True)
    return _COMPILED[key]


def langevin(score_fn, x0, step_size, n_steps, seed, jit_compile: bool = False) -> SamplerOutput:
    """Langevin dynamics with a fixed step: x <- x + a s(x) + sqrt(2a) z for ``n_steps`` steps.

    Args:
      score_fn: ``x -> s(x)``, an estimate of grad log p.
      x0: initial state [B, ...].
      step_size: a (see the module docstring for the convention).
      n_steps: number of steps (= network evaluations).
      seed: stateless seed, shape [2].
      jit_compile: compile the loop with XLA.
    """
    _check("step_size", step_size, lambda v: v > 0, "> 0")
    _check("n_steps", n_steps, lambda v: v >= 0, ">= 0")
    fn = _compiled("langevin", _langevin_impl, jit_compile)
    return fn(score_fn, x0, tf.cast(step_size, tf.float32), tf.cast(n_steps, tf.int32), seed)


def annealed_langevin(
    score_fn,
    x0,
    sigmas,
    eps: float,
    n_steps_each: int,
    seed,
    denoise: bool = False,
    snapshots: bool = False,
    jit_compile: bool = False,
) -> SamplerOutput:
    """Annealed Langevin dynamics (NCSN, Song & Ermon 2019, Algorithm 1).

    For each level i = 1..L, ``n_steps_each`` (T) steps of

        x <- x + a_i s(x, i) + sqrt(2 a_i) z,   a_i = eps * sigma_i^2 / sigma_L^2,

    so that a_i / sigma_i^2 (the signal-to-noise of the step) is the same at every level.
    With ``denoise`` a final Tweedie step x <- x + sigma_L^2 s(x, L) removes the last level's
    noise (NCSNv2). ``snapshots`` also returns the chain at every level boundary.

    Args:
      score_fn: ``(x, labels) -> s``, labels int32 [B] indexing ``sigmas``.
      x0: initial state [B, ...] (NCSN: U[0, 1] for images).
      sigmas: the decreasing schedule the network was trained on, shape [L].
      eps: base step size (NCSN MNIST: 2e-5; two-mode toy: 0.05).
      n_steps_each: T, steps per level.
      seed: stateless seed, shape [2].
    """
    _check("eps", eps, lambda v: v > 0, "> 0")
    _check("n_steps_each", n_steps_each, lambda v: v >= 1, ">= 1")
    fn = _compiled("annealed_langevin", _annealed_impl, jit_compile)
    return fn(
        score_fn,
        x0,
        tf.cast(sigmas, tf.float32),
        tf.cast(eps, tf.float32),
        tf.cast(n_steps_each, tf.int32),
        seed,
        bool(denoise),
        bool(snapshots),
    )


def annealed_langevin_inpaint(
    score_fn,
    x_obs,
    mask,
    sigmas,
    eps: float,
    n_steps_each: int,
    seed,
    denoise: bool = True,
    snapshots: bool = False,
    jit_compile: bool = False,
) -> SamplerOutput:
    """Fill the pixels where ``mask == 0`` given ``x_obs`` where ``mask == 1`` (NCSN inpainting).

    Annealed Langevin on the whole image, except that before every step the observed pixels
    are replaced by x_obs + sigma_i z (the observation perturbed to the current level, drawn
    once per level), so the free pixels are sampled from p_{sigma_i}(free | observed). The
    chain starts from U[0, 1] in the free pixels; the result keeps x_obs exactly where observed.
    """
    _check("eps", eps, lambda v: v > 0, "> 0")
    _check("n_steps_each", n_steps_each, lambda v: v >= 1, ">= 1")
    x_obs = tf.convert_to_tensor(x_obs, tf.float32)
    mask = tf.cast(tf.broadcast_to(mask, tf.shape(x_obs)), tf.float32)
    init_seed = tf.random.experimental.stateless_fold_in(seed, -2, alg="philox")
    x0 = mask * x_obs + (1.0 - mask) * uniform_init(tf.shape(x_obs), init_seed)
    fn = _compiled("annealed_langevin", _annealed_impl, jit_compile)
    return fn(
        score_fn,
        x0,
        tf.cast(sigmas, tf.float32),
        tf.cast(eps, tf.float32),
        tf.cast(n_steps_each, tf.int32),
        seed,
        bool(denoise),
        bool(snapshots),
        x_obs,
        mask,
    )
