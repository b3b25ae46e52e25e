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

import weakref
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
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


def _plus_noise(moved, noise_std, z):
    """``moved + noise_std * z``, kept a sum of two terms. Grappler otherwise merges
    ``x + drift + noise`` into one three-input AddN, which its memory optimizer, at large
    batch sizes, turns into a TemporaryVariable that collides between while-loop iterations
    (AlreadyExistsError; tensorflow/tensorflow#37740). The control dependency makes
    ``moved`` unmergeable; the arithmetic is unchanged."""
    with tf.control_dependencies([moved]):
        noise = noise_std * z
    return moved + noise


def _langevin_impl(score_fn, x0, level, step_size, n_steps, seed):
    x0 = tf.convert_to_tensor(x0, tf.float32)
    step_size = tf.cast(step_size, tf.float32)
    n_steps = tf.cast(n_steps, tf.int32)
    noise_scale = tf.sqrt(2.0 * step_size)
    levels = tf.fill([tf.shape(x0)[0]], tf.cast(level, tf.int32))

    def body(k, x):
        s = tf.cast(score_fn(x, levels), tf.float32)
        x = _plus_noise(x + step_size * s, noise_scale, _step_noise(seed, k, tf.shape(x)))
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
        levels = tf.fill([batch], level)
        if inpaint:
            observed = x_obs + sigmas[level] * _step_noise(obs_seed, level, tf.shape(x_obs))

        def step_body(t, x):
            if inpaint:
                x = mask * observed + (1.0 - mask) * x
            s = tf.cast(score_fn(x, levels), tf.float32)
            z = _step_noise(seed, level * n_steps_each + t, tf.shape(x))
            return t + 1, _plus_noise(x + a * s, noise_scale, z)

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
        levels = tf.fill([batch], tf.cast(num_levels, tf.int32) - 1)
        x = x + tf.square(sigma_last) * tf.cast(score_fn(x, levels), tf.float32)
        num_evals += 1
    if inpaint:
        x = mask * x_obs + (1.0 - mask) * x
    return SamplerOutput(x, snaps.stack() if snapshots else None, num_evals)


class SamplerError(ValueError):
    """A sampler option is out of its range (raised before any sampling)."""


def _check(name, value, ok, allowed):
    """Validate a Python or eager value; symbolic tensors are checked in-graph by callers."""
    v = tf.get_static_value(value)
    if v is None:
        return
    if not ok(v):
        raise SamplerError(f"{name} must be {allowed}, got {v!r}")


_COMPILED: dict[tuple[str, bool], tf.types.experimental.PolymorphicFunction] = {}


def _compiled(name, impl, jit_compile):
    key = (name, bool(jit_compile))
    if key not in _COMPILED:
        _COMPILED[key] = tf.function(impl, jit_compile=bool(jit_compile), reduce_retracing=True)
    return _COMPILED[key]


def langevin(
    score_fn,
    x0,
    sigmas,
    seed,
    langevin_step_size: float = 0.05,
    langevin_steps: int = 1000,
    jit_compile: bool = False,
) -> SamplerOutput:
    """Plain Langevin dynamics at the last level: ``langevin_steps`` steps of
    x <- x + a s(x, L) + sqrt(2a) z with a fixed a = ``langevin_step_size``.

    For an unconditional score pass ``lambda x, levels: s(x)`` (made once: a new callable per
    call retraces). ``langevin_steps`` evaluations.
    """
    _check("langevin_step_size", langevin_step_size, lambda v: v > 0, "> 0")
    _check("langevin_steps", langevin_steps, lambda v: v >= 0, ">= 0")
    fn = _compiled("langevin", _langevin_impl, jit_compile)
    level = len(np.atleast_1d(tf.get_static_value(tf.convert_to_tensor(sigmas)))) - 1
    return fn(
        score_fn,
        x0,
        tf.constant(level, tf.int32),
        tf.cast(langevin_step_size, tf.float32),
        tf.cast(langevin_steps, tf.int32),
        seed,
    )


def annealed_langevin(
    score_fn,
    x0,
    sigmas,
    seed,
    step_lr: float = 0.05,
    n_steps_each: int = 100,
    denoise: bool = True,
    snapshots: bool = False,
    jit_compile: bool = False,
) -> SamplerOutput:
    """Annealed Langevin dynamics (NCSN, Song & Ermon 2019, Algorithm 1).

    For each level i = 1..L, ``n_steps_each`` (T) steps of

        x <- x + a_i s(x, i) + sqrt(2 a_i) z,   a_i = step_lr * sigma_i^2 / sigma_L^2,

    so that a_i / sigma_i^2 (the signal-to-noise of the step) is the same at every level.
    With ``denoise`` a final Tweedie step x <- x + sigma_L^2 s(x, L) removes the last level's
    noise (NCSNv2). ``snapshots`` also returns the chain at every level boundary.
    L T evaluations (+1 with ``denoise``). Start from ``uniform_init`` (NCSN: U[0, 1] images).

    Args:
      score_fn: ``(x, levels) -> s``, levels int32 [B] indexing ``sigmas``.
      x0: initial state [B, ...].
      sigmas: the decreasing schedule the network was trained on, shape [L].
      seed: stateless seed, shape [2].
      step_lr: base step size eps (NCSN MNIST: 2e-5; two-mode toy: 0.05).
      n_steps_each: T, steps per level.
    """
    _check("step_lr", step_lr, lambda v: v > 0, "> 0")
    _check("n_steps_each", n_steps_each, lambda v: v >= 1, ">= 1")
    fn = _compiled("annealed_langevin", _annealed_impl, jit_compile)
    return fn(
        score_fn,
        x0,
        tf.cast(sigmas, tf.float32),
        tf.cast(step_lr, tf.float32),
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
    seed,
    step_lr: float = 0.05,
    n_steps_each: int = 100,
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
    _check("step_lr", step_lr, lambda v: v > 0, "> 0")
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
        tf.cast(step_lr, tf.float32),
        tf.cast(n_steps_each, tf.int32),
        seed,
        bool(denoise),
        bool(snapshots),
        x_obs,
        mask,
    )


# --- faster samplers for noise-conditional (VE) score models ---------------------------------


def gaussian_init(shape, seed, sigma: float, minval: float = 0.0, maxval: float = 1.0, mean=None):
    """x0 = u + sigma_1 z, z ~ N(0, I): a sample "like the data, perturbed to the first
    level", the start the samplers below assume. u is the data's ``mean`` (per channel, the
    last axis) when it is known, else u ~ U[minval, maxval]. The deterministic samplers carry
    x0 to the data without mixing, so its centre matters: a start centred 3 units off the
    two-mode toy's mean moves its mode weight from 0.80 to 0.79 at sigma_1 = 80 and to 0.75
    at 20, even with the exact score. The same z for either u."""
    s_u, s_z = tf.unstack(tf.random.experimental.stateless_split(seed, 2, alg="philox"))
    if mean is None:
        u = uniform_init(shape, s_u, minval, maxval)
    else:
        u = tf.constant(np.asarray(mean, np.float32))
    return u + sigma * tf.random.stateless_normal(shape, s_z, alg="philox")


def _next_sigmas(sigmas):
    return tf.concat([sigmas[1:], tf.zeros([1], sigmas.dtype)], axis=0)


def _cas_impl(score_fn, x0, sigmas, eps, seed, denoise):
    x0 = tf.convert_to_tensor(x0, tf.float32)
    num_levels = tf.shape(sigmas)[0]
    batch = tf.shape(x0)[0]
    eta = eps / tf.square(sigmas[-1])
    nxt = _next_sigmas(sigmas)
    # After the step the noise left in x is (1 - eta) sigma_i; top it up to sigma_(i+1).
    noise_std = tf.sqrt(tf.maximum(tf.square(nxt) - tf.square((1.0 - eta) * sigmas), 0.0))

    def body(i, x):
        s = tf.cast(score_fn(x, tf.fill([batch], i)), tf.float32)
        z = _step_noise(seed, i, tf.shape(x))
        x = _plus_noise(x + eta * tf.square(sigmas[i]) * s, noise_std[i], z)
        return i + 1, x

    _, x = tf.while_loop(lambda i, _: i < num_levels, body, (tf.constant(0), x0))
    num_evals = num_levels
    if denoise:
        # the last step left (1 - eta) sigma_L of noise
        level = tf.fill([batch], num_levels - 1)
        resid = (1.0 - eta) * sigmas[-1]
        x = x + tf.square(resid) * tf.cast(score_fn(x, level), tf.float32)
        num_evals += 1
    return SamplerOutput(x, None, num_evals)


def consistent_eta(sigmas) -> float:
    """The smallest consistent eta of a schedule: max_i (1 - sigma_(i+1) / sigma_i)."""
    sig = np.asarray(sigmas, np.float64)
    return float(np.max(1.0 - sig[1:] / sig[:-1])) if len(sig) > 1 else 1.0


def consistent_annealed(
    score_fn,
    x0,
    sigmas,
    seed,
    cas_eta: float = 0.0,
    denoise: bool = True,
    jit_compile: bool = False,
) -> SamplerOutput:
    """Consistent annealed sampling (Jolicoeur-Martineau et al. 2020): one step per level,

        x <- x + eta sigma_i^2 s(x, i) + sqrt(sigma_(i+1)^2 - (1 - eta)^2 sigma_i^2) z,

    with eta = ``cas_eta`` (0: the smallest consistent value, ``consistent_eta``) and
    sigma_(L+1) = 0, so that a chain at noise level sigma_i is at sigma_(i+1) after the step.
    Needs (1 - eta) sigma_i <= sigma_(i+1), i.e. eta >= 1 - sigma_(i+1) / sigma_i at every
    level. L evaluations (+1 with ``denoise``). Start from ``gaussian_init``.
    """
    sig = np.asarray(tf.get_static_value(tf.convert_to_tensor(sigmas)), np.float64)
    _check("cas_eta", cas_eta, lambda v: 0 <= v <= 1, "in [0, 1]")
    need = consistent_eta(sig)
    eta = float(cas_eta) or need
    _check("cas_eta", eta, lambda v: v >= need * (1 - 1e-6), f">= {need:.4g} for this schedule")
    fn = _compiled("consistent_annealed", _cas_impl, jit_compile)
    eps = eta * sig[-1] ** 2
    return fn(
        score_fn, x0, tf.cast(sigmas, tf.float32), tf.constant(eps, tf.float32), seed, bool(denoise)
    )


def _per_example_norm(t):
    return tf.norm(tf.reshape(t, [tf.shape(t)[0], -1]), axis=1)


PREDICTORS = ("reverse_diffusion", "ancestral")


def _pc_impl(score_fn, x0, sigmas, snr, n_corrector, seed, denoise, ancestral):
    x0 = tf.convert_to_tensor(x0, tf.float32)
    num_levels = tf.shape(sigmas)[0]
    batch = tf.shape(x0)[0]
    nxt = _next_sigmas(sigmas)
    steps_per_level = n_corrector + 1

    def level_body(i, x):
        levels = tf.fill([batch], i)

        def corrector(j, x):
            g = tf.cast(score_fn(x, levels), tf.float32)
            z = _step_noise(seed, i * steps_per_level + j, tf.shape(x))
            # one step for the batch, from its mean norms (per-example ratios are too noisy
            # in low dimension; the score SDE reference does the same)
            ratio = (
                snr
                * tf.reduce_mean(_per_example_norm(z))
                / tf.maximum(tf.reduce_mean(_per_example_norm(g)), 1e-12)
            )
            a = 2.0 * tf.square(ratio)
            return j + 1, _plus_noise(x + a * g, tf.sqrt(2.0 * a), z)

        _, x = tf.while_loop(lambda j, _: j < n_corrector, corrector, (tf.constant(0), x))
        # predictor sigma_i -> sigma_(i+1): both move the mean by d_i s; reverse diffusion
        # adds sqrt(d_i) z, ancestral only what brings the noise left to sigma_(i+1)
        var = tf.square(sigmas[i]) - tf.square(nxt[i])
        s = tf.cast(score_fn(x, levels), tf.float32)
        z = _step_noise(seed, i * steps_per_level + n_corrector, tf.shape(x))
        keep_noise = tf.logical_or(i < num_levels - 1, tf.logical_not(denoise))
        std = tf.where(ancestral, nxt[i] * tf.sqrt(var) / sigmas[i], tf.sqrt(var))
        x = _plus_noise(x + var * s, tf.cast(keep_noise, tf.float32) * std, z)
        return i + 1, x

    _, x = tf.while_loop(lambda i, _: i < num_levels, level_body, (tf.constant(0), x0))
    return SamplerOutput(x, None, num_levels * steps_per_level)


def predictor_corrector(
    score_fn,
    x0,
    sigmas,
    seed,
    snr: float = 0.16,
    n_corrector: int = 1,
    denoise: bool = True,
    predictor: str = "reverse_diffusion",
    jit_compile: bool = False,
) -> SamplerOutput:
    """Predictor-corrector sampling of the variance-exploding SDE (Song et al. 2021).

    At each level i: ``n_corrector`` Langevin steps with step a = 2 (snr ||z|| / ||s||)^2
    (norms averaged over the batch), then a predictor to sigma_(i+1) (sigma_(L+1) = 0),
    x <- x + d_i s(x, i) + c_i z with d_i = sigma_i^2 - sigma_(i+1)^2 and
      reverse_diffusion: c_i = sqrt(d_i) (Euler-Maruyama of the reverse SDE);
      ancestral:         c_i = sigma_(i+1) sqrt(d_i) / sigma_i (the Gaussian posterior's
                         step: a chain at noise sigma_i ends at exactly sigma_(i+1), however
                         far apart the levels; reverse diffusion leaves more noise than
                         sigma_(i+1) when they are far apart, e.g. 1.8 sigma_(i+1) at a ratio 2).
    With ``denoise`` the last predictor step adds no noise (its mean is the Tweedie denoise).
    L (n_corrector + 1) evaluations. Start from ``gaussian_init``.
    """
    _check("snr", snr, lambda v: v > 0, "> 0")
    _check("n_corrector", n_corrector, lambda v: v >= 0, ">= 0")
    _check("predictor", predictor, lambda v: v in PREDICTORS, " or ".join(PREDICTORS))
    fn = _compiled("predictor_corrector", _pc_impl, jit_compile)
    return fn(
        score_fn,
        x0,
        tf.cast(sigmas, tf.float32),
        tf.cast(snr, tf.float32),
        tf.cast(n_corrector, tf.int32),
        seed,
        tf.constant(bool(denoise)),
        tf.constant(predictor == "ancestral"),
    )


def _heun_impl(score_fn, x0, sigmas, levels):
    x0 = tf.convert_to_tensor(x0, tf.float32)
    batch = tf.shape(x0)[0]
    steps = tf.shape(levels)[0]
    grid = tf.gather(sigmas, levels)
    nxt = _next_sigmas(grid)
    nxt_level = tf.concat([levels[1:], levels[-1:]], axis=0)

    def body(k, x):
        sigma, sigma_next = grid[k], nxt[k]
        # probability-flow ODE of the VE SDE in sigma: dx/dsigma = -sigma s(x, sigma)
        d = -sigma * tf.cast(score_fn(x, tf.fill([batch], levels[k])), tf.float32)
        x_euler = x + (sigma_next - sigma) * d

        def heun():
            s2 = tf.cast(score_fn(x_euler, tf.fill([batch], nxt_level[k])), tf.float32)
            return x + (sigma_next - sigma) * 0.5 * (d - sigma_next * s2)

        # the last step goes to sigma = 0: Euler (x + sigma^2 s, the Tweedie denoise)
        x = tf.cond(k < steps - 1, heun, lambda: x_euler)
        return k + 1, x

    _, x = tf.while_loop(lambda k, _: k < steps, body, (tf.constant(0), x0))
    return SamplerOutput(x, None, 2 * steps - 1)


def heun_levels(num_levels: int, num_steps: int | None = None) -> np.ndarray:
    """``num_steps`` of the network's levels, evenly spaced in index, first and last kept."""
    if num_steps is None or num_steps >= num_levels:
        return np.arange(num_levels, dtype=np.int32)
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    return np.unique(np.round(np.linspace(0, num_levels - 1, num_steps))).astype(np.int32)


def heun(
    score_fn, x0, sigmas, seed=None, heun_steps: int = 0, jit_compile: bool = False
) -> SamplerOutput:
    """Deterministic Heun integration of the probability-flow ODE (EDM, Karras et al. 2022,
    Algorithm 1 for the VE parameterisation sigma(t) = t, without churn).

    The grid is ``heun_steps`` of the network's own levels (0: all; see ``heun_levels``) and
    then 0: a Heun step between levels (2 evaluations) and a final Euler step to 0, so
    2 K - 1 evaluations for K levels. ``seed`` is unused (deterministic). Start from
    ``gaussian_init``.
    """
    del seed
    sigmas = tf.cast(sigmas, tf.float32)
    levels = heun_levels(int(sigmas.shape[0]), heun_steps or None)
    fn = _compiled("heun", _heun_impl, jit_compile)
    return fn(score_fn, x0, sigmas, tf.constant(levels))


# --- probability-flow ODE (adaptive) and its likelihood --------------------------------------


def interpolated_score(score_fn, sigmas):
    """A continuous-sigma score ``(x, sigma) -> s`` from a network conditioned on the discrete
    ``sigmas`` (decreasing): linear in log sigma between the two nearest levels (2 network
    evaluations per call; clamped outside [sigma_L, sigma_1])."""
    sig = tf.constant(sigmas, tf.float32)
    log_s = tf.math.log(sig)
    num_levels = len(sigmas)

    def score(x, sigma):
        batch = tf.shape(x)[0]
        # Clamp before the log: adaptive solvers may probe just past sigma_min, even at
        # sigma <= 0, where log gives NaN (and the solver then never finishes).
        t = tf.math.log(tf.clip_by_value(tf.cast(sigma, tf.float32), sig[-1], sig[0]))
        # index i with log_s[i] >= t >= log_s[i + 1]
        i = tf.clip_by_value(
            tf.reduce_sum(tf.cast(log_s > t, tf.int32)) - 1, 0, max(num_levels - 2, 0)
        )
        j = tf.minimum(i + 1, num_levels - 1)
        w = tf.math.divide_no_nan(log_s[i] - t, log_s[i] - log_s[j])
        s_i = tf.cast(score_fn(x, tf.fill([batch], i)), tf.float32)
        s_j = tf.cast(score_fn(x, tf.fill([batch], j)), tf.float32)
        return (1.0 - w) * s_i + w * s_j

    score.network_evals_per_call = 2  # read by probability_flow_ode's evaluation count
    return score


def probability_flow_ode(
    score_fn,
    x0,
    sigma_max: float,
    sigma_min: float,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    denoise: bool = True,
    jit_compile: bool = False,
) -> SamplerOutput:
    """Integrate the VE probability-flow ODE dx/dsigma = -sigma s(x, sigma) from ``sigma_max``
    down to ``sigma_min`` with the adaptive Dormand-Prince (RK45) solver of
    ``tfp.math.ode``. ``score_fn(x, sigma)`` takes a continuous sigma (for a level-conditioned
    network use ``interpolated_score``). ``num_evals`` counts network evaluations: the
    solver's count of ODE function evaluations, plus 1 for ``denoise`` (Tweedie at
    sigma_min), each times ``score_fn.network_evals_per_call`` (2 for ``interpolated_score``,
    else 1). Compiled as one ``tf.function`` (the solver's adaptive loop is a graph loop).
    Start from ``gaussian_init`` with sigma = ``sigma_max``."""
    _check("sigma_min", sigma_min, lambda v: 0 < v < float(sigma_max), f"in (0, {sigma_max})")
    fn = _compiled("probability_flow_ode", _ode_impl, jit_compile)
    out = fn(
        score_fn, tf.convert_to_tensor(x0, tf.float32), float(sigma_max), float(sigma_min),
        float(rtol), float(atol), bool(denoise),
    )  # fmt: skip
    per_call = int(getattr(score_fn, "network_evals_per_call", 1))
    return out._replace(num_evals=out.num_evals * per_call)


def _ode_impl(score_fn, x0, sigma_max, sigma_min, rtol, atol, denoise):
    import tensorflow_probability as tfp

    solver = tfp.math.ode.DormandPrince(rtol=rtol, atol=atol)

    # integrate in tau = -sigma so that time increases
    def ode_fn(tau, x):
        sigma = -tau
        return sigma * tf.cast(score_fn(x, sigma), tf.float32)  # dx/dtau = -dx/dsigma

    result = solver.solve(ode_fn, -sigma_max, x0, solution_times=[-sigma_min])
    x = result.states[-1]
    num_evals = tf.cast(result.diagnostics.num_ode_fn_evaluations, tf.int32)
    if denoise:
        x = x + sigma_min**2 * tf.cast(score_fn(x, sigma_min), tf.float32)
        num_evals += 1
    return SamplerOutput(x, None, num_evals)


def ode_log_likelihood(
    score_fn,
    x,
    sigma_min: float,
    sigma_max: float,
    prior_log_prob,
    seed=None,
    exact_trace: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-5,
):
    """log p_sigma_min(x) by the probability-flow ODE (Song et al. 2021, instantaneous change
    of variables): integrate x from ``sigma_min`` up to ``sigma_max`` together with
    int div f dsigma, f = -sigma s(x, sigma), and add ``prior_log_prob(x(sigma_max))``
    (VE: about N(0, sigma_max^2 I)). The divergence is the exact Jacobian trace with
    ``exact_trace`` (low dimension) or else Hutchinson's estimate with one Rademacher probe
    per example drawn from ``seed``. Returns (log_likelihood [B], num_ode_fn_evaluations)."""
    import tensorflow_probability as tfp

    x = tf.convert_to_tensor(x, tf.float32)
    batch = tf.shape(x)[0]
    dim = int(np.prod(x.shape[1:]))
    if not exact_trace:
        probe = tf.sign(tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0, alg="philox"))

    def drift(y, sigma):
        return -sigma * tf.cast(score_fn(y, sigma), tf.float32)

    def ode_fn(sigma, state):
        y, _ = state
        with tf.GradientTape(persistent=exact_trace) as tape:
            tape.watch(y)
            f = drift(y, sigma)
            if exact_trace:
                flat = tf.reshape(f, [batch, dim])
            else:
                fe = tf.reduce_sum(f * probe)
        if exact_trace:
            jac = tape.batch_jacobian(flat, y)  # [B, D, *x.shape[1:]]
            div = tf.linalg.trace(tf.reshape(jac, [batch, dim, dim]))
        else:
            vjp = tape.gradient(fe, y)
            div = tf.reduce_sum(tf.reshape(vjp * probe, [batch, dim]), axis=1)
        return f, div

    solver = tfp.math.ode.DormandPrince(rtol=rtol, atol=atol)
    result = solver.solve(
        ode_fn, float(sigma_min), (x, tf.zeros([batch])), solution_times=[float(sigma_max)]
    )
    y_end, int_div = result.states[0][-1], result.states[1][-1]
    log_p = prior_log_prob(y_end) + int_div
    return log_p, tf.cast(result.diagnostics.num_ode_fn_evaluations, tf.int32)


# --- the registry: one contract, one seeding convention --------------------------------------

_INTERPOLATED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def continuous_score(score_fn, sigmas):
    """The score at any sigma of a level-conditioned ``score_fn``: its ``continuous``
    attribute (a continuous-sigma model, ``edm.score_on_grid``) with sigma clamped below at
    sigma_L (adaptive solvers probe past the end, even sigma <= 0, where log sigma is NaN
    and the solver never finishes), else the log-sigma interpolation between its levels
    (``interpolated_score``). One function per (score, schedule): a new closure per call
    would retrace the compiled samplers."""
    key = tuple(float(v) for v in np.asarray(sigmas, np.float64))
    per_fn = _INTERPOLATED.setdefault(score_fn, {})
    if key not in per_fn:
        exact = getattr(score_fn, "continuous", None)
        if exact is None:
            per_fn[key] = interpolated_score(score_fn, np.asarray(key, np.float32))
        else:
            floor = np.float32(key[-1])
            per_fn[key] = lambda x, sigma: exact(x, tf.maximum(tf.cast(sigma, tf.float32), floor))
    return per_fn[key]


def ode(
    score_fn,
    x0,
    sigmas,
    seed=None,
    ode_tol: float = 1e-5,
    denoise: bool = True,
    jit_compile: bool = False,
) -> SamplerOutput:
    """The adaptive probability-flow ODE (``probability_flow_ode``, rtol = atol = ``ode_tol``)
    from sigma_1 to sigma_L: on a continuous model's own score (``continuous_score``), or on
    a level-conditioned one interpolated in log sigma (2 network evaluations per solver
    call). ``seed`` is unused (deterministic). Start from ``gaussian_init``."""
    del seed
    sig = np.asarray(tf.get_static_value(tf.convert_to_tensor(sigmas)), np.float32)
    if len(sig) < 2:
        raise SamplerError("the ODE sampler needs at least 2 noise levels")
    return probability_flow_ode(
        continuous_score(score_fn, sig),
        x0,
        float(sig[0]),
        float(sig[-1]),
        rtol=ode_tol,
        atol=ode_tol,
        denoise=denoise,
        jit_compile=jit_compile,
    )


def _edm_impl(score_fn, x0, sigmas, seed, gammas, s_noise):
    x0 = tf.convert_to_tensor(x0, tf.float32)
    steps = tf.shape(sigmas)[0]
    nxt = _next_sigmas(sigmas)

    def at(x, sigma):  # a continuous score takes a scalar sigma
        return tf.cast(score_fn(x, sigma), tf.float32)

    def body(k, x):
        sigma, sigma_next = sigmas[k], nxt[k]
        sigma_hat = sigma * (1.0 + gammas[k])
        z = _step_noise(seed, k, tf.shape(x))
        x_hat = x + tf.sqrt(tf.maximum(tf.square(sigma_hat) - tf.square(sigma), 0.0)) * s_noise * z
        d = -sigma_hat * at(x_hat, sigma_hat)  # dx/dsigma = (x - D) / sigma = -sigma s
        x_euler = x_hat + (sigma_next - sigma_hat) * d

        def heun():
            d2 = -sigma_next * at(x_euler, sigma_next)
            return x_hat + (sigma_next - sigma_hat) * 0.5 * (d + d2)

        return k + 1, tf.cond(k < steps - 1, heun, lambda: x_euler)

    _, x = tf.while_loop(lambda k, _: k < steps, body, (tf.constant(0), x0))
    return SamplerOutput(x, None, 2 * steps - 1)


def edm(
    score_fn,
    x0,
    sigmas,
    seed,
    s_churn: float = 0.0,
    s_noise: float = 1.0,
    s_tmin: float = 0.0,
    s_tmax: float = 0.0,
    jit_compile: bool = False,
) -> SamplerOutput:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) on the grid ``sigmas``, then
    0: before step i the noise is raised to sigma_hat = sigma_i (1 + gamma_i) by adding
    sqrt(sigma_hat^2 - sigma_i^2) s_noise z, gamma_i = min(s_churn / N, sqrt(2) - 1) for
    s_tmin <= sigma_i <= s_tmax (0: no upper limit), else 0; then one Heun step to
    sigma_(i+1) (Euler on the last, to 0). 2 N - 1 evaluations, at sigma_hat: the score is
    ``continuous_score(score_fn)``. With s_churn = 0 it is the deterministic Heun sampler.
    Start from ``gaussian_init``."""
    _check("s_churn", s_churn, lambda v: v >= 0, ">= 0")
    _check("s_noise", s_noise, lambda v: v > 0, "> 0")
    sig = np.asarray(tf.get_static_value(tf.convert_to_tensor(sigmas)), np.float64)
    n = len(sig)
    in_range = (sig >= s_tmin) & ((sig <= s_tmax) | (s_tmax == 0))
    gammas = np.where(in_range, min(s_churn / n, np.sqrt(2.0) - 1.0), 0.0).astype(np.float32)
    fn = _compiled("edm", _edm_impl, jit_compile)
    return fn(
        continuous_score(score_fn, sig),
        x0,
        tf.constant(sig, tf.float32),
        seed,
        tf.constant(gammas),
        tf.constant(s_noise, tf.float32),
    )


def _uniform_start(shape, seed, sigmas, init_range, init_mean=None):
    del sigmas, init_mean
    return uniform_init(shape, seed, *init_range)


def _perturbed_start(shape, seed, sigmas, init_range, init_mean=None):
    sigma_1 = tf.cast(sigmas, tf.float32)[0]
    return gaussian_init(shape, seed, sigma_1, *init_range, mean=init_mean)


class Sampler(NamedTuple):
    """A registered sampler: ``fn(score_fn, x0, sigmas, seed, **options) -> SamplerOutput``
    with ``score_fn(x, levels)``, its own start ``init(shape, seed, sigmas, init_range,
    init_mean)`` and the names of its options (each a keyword of ``fn``, a ``SamplerConfig``
    field and a flag)."""

    name: str
    fn: Callable[..., SamplerOutput]
    init: Callable
    options: tuple[str, ...]
    #: network evaluations per sample, in words
    cost: str


SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler(
            "annealed_langevin",
            annealed_langevin,
            _uniform_start,
            ("step_lr", "n_steps_each", "denoise"),
            "L x n_steps_each (+1 denoise)",
        ),
        Sampler(
            "langevin",
            langevin,
            _uniform_start,
            ("langevin_step_size", "langevin_steps"),
            "langevin_steps, at the last level",
        ),
        Sampler(
            "consistent_annealed",
            consistent_annealed,
            _perturbed_start,
            ("cas_eta", "denoise"),
            "L (+1 denoise)",
        ),
        Sampler(
            "predictor_corrector",
            predictor_corrector,
            _perturbed_start,
            ("snr", "n_corrector", "denoise", "predictor"),
            "L x (1 + n_corrector)",
        ),
        Sampler("heun", heun, _perturbed_start, ("heun_steps",), "2 K - 1 for K = heun_steps"),
        Sampler("ode", ode, _perturbed_start, ("ode_tol", "denoise"), "adaptive"),
        Sampler(
            "edm",
            edm,
            _perturbed_start,
            ("s_churn", "s_noise", "s_tmin", "s_tmax"),
            "2 L - 1",
        ),
    )
}


def evaluations_per_sample(name: str, num_levels: int, options: dict) -> int | None:
    """Network evaluations per sample of sampler ``name`` on ``num_levels`` levels with
    ``options`` (its ``cost`` as a number; None for the adaptive ODE, known only after)."""
    o, n = options, int(num_levels)
    counts = {
        "annealed_langevin": lambda: n * o["n_steps_each"] + int(o.get("denoise", False)),
        "langevin": lambda: o["langevin_steps"],
        "consistent_annealed": lambda: n + int(o.get("denoise", False)),
        "predictor_corrector": lambda: n * (1 + o["n_corrector"]),
        "heun": lambda: 2 * len(heun_levels(n, o.get("heun_steps") or None)) - 1,
        "edm": lambda: 2 * n - 1,
        "ode": lambda: None,
    }
    get_sampler(name)
    return counts[name]()


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise SamplerError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sampler_names() -> list[str]:
    return list(SAMPLERS)


def batch_seeds(seed, batch_index=0):
    """The seeding convention of every generation path (library, CLI, export, TensorBoard):
    batch b of a run seeded s uses the pair (s, b); its start x0 is drawn from
    fold_in((s, b), 0) and its chain from fold_in((s, b), 1). A served ``seed`` input is the
    pair itself, so serving (s, 0) equals the first batch of seed s."""
    pair = tf.cast(seed, tf.int32)
    if pair.shape.rank == 0:
        pair = tf.stack([pair, tf.cast(batch_index, tf.int32)])
    fold = tf.random.experimental.stateless_fold_in
    return fold(pair, 0, alg="philox"), fold(pair, 1, alg="philox")


def draw(
    name: str,
    score_fn,
    sigmas,
    shape,
    seed,
    init_range=(0.0, 1.0),
    jit_compile: bool = False,
    snapshots: bool = False,
    init_mean=None,
    **options,
) -> SamplerOutput:
    """One batch of ``shape`` = [N, ...] from sampler ``name``, started by its own init,
    seeded by ``batch_seeds(seed)`` (an int is batch 0); graph-compatible (export uses it).
    Langevin chains start uniform on ``init_range``; the others at ``init_mean`` (the
    data's mean per channel, when known; else uniform) plus sigma_1 z."""
    spec = get_sampler(name)
    unknown = set(options) - set(spec.options)
    if unknown:
        raise SamplerError(
            f"sampler {name!r} takes options {', '.join(spec.options)}; not {sorted(unknown)}"
        )
    init_seed, chain_seed = batch_seeds(seed)
    x0 = spec.init(shape, init_seed, sigmas, tuple(float(v) for v in init_range), init_mean)
    kwargs = dict(options, jit_compile=jit_compile)
    if snapshots:
        if name != "annealed_langevin":
            raise SamplerError("snapshots are recorded by annealed_langevin only")
        kwargs["snapshots"] = True
    return spec.fn(score_fn, x0, sigmas, chain_seed, **kwargs)
