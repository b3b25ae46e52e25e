"""The ODE / SDE solvers people reach for first in k-diffusion and diffusers, written on the
denoiser D(x; sigma) = ``model.denoise(x, sigma)`` (Karras et al. 2022, section 3), each on the
registry's signature. With d = (x - D) / sigma = dx/dsigma of the probability-flow ODE and the
grid sigma_1 > ... > sigma_N, then 0:

    euler            x <- x + (sigma_(i+1) - sigma_i) d                         N calls
    euler_ancestral  Euler to sigma_down, then sigma_up z (eta: how much noise)  N calls
    dpm2             a midpoint step at sqrt(sigma_i sigma_(i+1))                2 N - 1 calls
    lms              linear multistep of order 4 on the past derivatives        N calls
    dpmpp_2m         DPM-Solver++(2M), Lu et al. 2022, in t = -log sigma         N calls
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_score.sampling import registry
from tf_score.sampling.registry import Option, Sampler, SamplerOutput, register
from tf_score.sampling.solvers import after_step, as_grid, next_sigmas, step_noise


def denoised_at(model, x, sigma):
    """D(x; sigma) for the whole batch at one sigma, float32."""
    return tf.cast(model.denoise(x, tf.fill(tf.shape(x)[:1], sigma)), tf.float32)


def _loop(body, x, n):
    _, x = tf.while_loop(lambda i, _: i < n, body, (tf.constant(0), x))
    return x


def euler(model, x, sigmas, *, seed, callback=None):
    """Euler's method on dx/dsigma = (x - D) / sigma; the last step (to 0) returns D."""
    del seed
    x, sigmas = tf.convert_to_tensor(x, tf.float32), as_grid(sigmas)
    n, nxt = tf.shape(sigmas)[0], next_sigmas(sigmas)

    def body(i, x):
        d = (x - denoised_at(model, x, sigmas[i])) / sigmas[i]
        return i + 1, after_step(callback, i, sigmas[i], x + (nxt[i] - sigmas[i]) * d)

    return SamplerOutput(_loop(body, x, n), n)


def ancestral_step(sigma, sigma_next, eta):
    """(sigma_down, sigma_up): a step to sigma_next made of a deterministic move to sigma_down
    and fresh noise sigma_up, sigma_down^2 + sigma_up^2 = sigma_next^2 (eta 1: the DDPM
    posterior's noise; 0: none, the ODE)."""
    up = tf.minimum(
        sigma_next,
        eta * tf.sqrt(tf.maximum(tf.square(sigma_next) * (tf.square(sigma) - tf.square(sigma_next))
                                 / tf.square(sigma), 0.0)),
    )  # fmt: skip
    return tf.sqrt(tf.maximum(tf.square(sigma_next) - tf.square(up), 0.0)), up


def euler_ancestral(model, x, sigmas, *, seed, callback=None, eta=1.0):
    """Euler to sigma_down, then sigma_up z (``ancestral_step``); no noise on the last step."""
    x, sigmas = tf.convert_to_tensor(x, tf.float32), as_grid(sigmas)
    n, nxt, eta = tf.shape(sigmas)[0], next_sigmas(sigmas), tf.cast(eta, tf.float32)

    def body(i, x):
        down, up = ancestral_step(sigmas[i], nxt[i], eta)
        d = (x - denoised_at(model, x, sigmas[i])) / sigmas[i]
        x = x + (down - sigmas[i]) * d + up * step_noise(seed, i, tf.shape(x))
        return i + 1, after_step(callback, i, sigmas[i], x)

    return SamplerOutput(_loop(body, x, n), n)


def dpm2(model, x, sigmas, *, seed, callback=None):
    """DPM2 (k-diffusion): the derivative at the geometric midpoint sqrt(sigma_i sigma_(i+1))
    carries x from sigma_i to sigma_(i+1); Euler on the last step (to 0)."""
    del seed
    x, sigmas = tf.convert_to_tensor(x, tf.float32), as_grid(sigmas)
    n, nxt = tf.shape(sigmas)[0], next_sigmas(sigmas)

    def body(i, x):
        sigma, sigma_next = sigmas[i], nxt[i]
        d = (x - denoised_at(model, x, sigma)) / sigma

        def midpoint():
            mid = tf.exp(0.5 * (tf.math.log(sigma) + tf.math.log(sigma_next)))
            x_mid = x + (mid - sigma) * d
            d_mid = (x_mid - denoised_at(model, x_mid, mid)) / mid
            return x + (sigma_next - sigma) * d_mid

        x = tf.cond(i < n - 1, midpoint, lambda: x + (sigma_next - sigma) * d)
        return i + 1, after_step(callback, i, sigma, x)

    return SamplerOutput(_loop(body, x, n), 2 * n - 1)


def lms_coefficients(sigmas, order: int = 4) -> np.ndarray:
    """[N, order] weights c_ij = int_{sigma_i}^{sigma_(i+1)} of the Lagrange basis polynomial
    of the j-th latest derivative (at sigma_(i-j)), over min(i + 1, order) points; exact
    polynomial integration in float64."""
    sig = np.concatenate([np.asarray(sigmas, np.float64), [0.0]])
    out = np.zeros([len(sig) - 1, order])
    for i in range(len(sig) - 1):
        k = min(i + 1, order)
        nodes = sig[i - np.arange(k)]
        for j in range(k):
            others = np.delete(nodes, j)
            basis = np.poly1d(np.poly(others) / np.prod(nodes[j] - others))
            integral = np.polyint(basis)
            out[i, j] = integral(sig[i + 1]) - integral(sig[i])
    return out


def lms(model, x, sigmas, *, seed, callback=None, lms_order=4):
    """Linear multistep (k-diffusion's LMS): x <- x + sum_j c_ij d_(i-j) over the last
    ``lms_order`` derivatives (``lms_coefficients``)."""
    del seed
    x, sigmas = tf.convert_to_tensor(x, tf.float32), as_grid(sigmas)
    coeffs = tf.constant(lms_coefficients(tf.get_static_value(sigmas), lms_order), tf.float32)
    n = tf.shape(sigmas)[0]
    history = tf.zeros([lms_order, *x.shape], tf.float32) if x.shape.is_fully_defined() else (
        tf.zeros(tf.concat([[lms_order], tf.shape(x)], 0)))  # fmt: skip

    def body(i, state):
        x, past = state
        d = (x - denoised_at(model, x, sigmas[i])) / sigmas[i]
        past = tf.concat([d[None], past[:-1]], axis=0)  # newest first
        c = tf.reshape(coeffs[i], [lms_order] + [1] * len(x.shape))
        x = x + tf.reduce_sum(c * past, axis=0)
        return i + 1, (after_step(callback, i, sigmas[i], x), past)

    _, (x, _) = tf.while_loop(lambda i, _: i < n, body, (tf.constant(0), (x, history)))
    return SamplerOutput(x, n)


def dpmpp_2m(model, x, sigmas, *, seed, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022; k-diffusion's sample_dpmpp_2m): in t = -log sigma,
    x <- (sigma_(i+1) / sigma_i) x - expm1(-h) D', h = t_(i+1) - t_i, with D' the denoised
    extrapolated from the last two, (1 + 1/(2r)) D_i - D_(i-1) / (2r), r = h_(i-1) / h;
    first order on the first and the last step."""
    del seed
    x, sigmas = tf.convert_to_tensor(x, tf.float32), as_grid(sigmas)
    n, nxt = tf.shape(sigmas)[0], next_sigmas(sigmas)
    t = -tf.math.log(sigmas)
    prev_sigma = tf.concat([sigmas[:1], sigmas[:-1]], axis=0)

    def body(i, state):
        x, old = state
        sigma, sigma_next = sigmas[i], nxt[i]
        denoised = denoised_at(model, x, sigma)

        def second_order():
            h = -tf.math.log(sigma_next) - t[i]
            r = (t[i] + tf.math.log(prev_sigma[i])) / h
            d2 = (1.0 + 1.0 / (2.0 * r)) * denoised - old / (2.0 * r)
            return (sigma_next / sigma) * x - tf.math.expm1(-h) * d2

        def first_order():
            # to 0: D itself; else the exact step of a constant D
            h = -tf.math.log(tf.maximum(sigma_next, 1e-30)) - t[i]
            step = (sigma_next / sigma) * x - tf.math.expm1(-h) * denoised
            return tf.where(sigma_next > 0, step, denoised)

        x = tf.cond((i > 0) & (sigma_next > 0), second_order, first_order)
        return i + 1, (after_step(callback, i, sigma, x), denoised)

    _, (x, _) = tf.while_loop(lambda i, _: i < n, body, (tf.constant(0), (x, tf.zeros_like(x))))
    return SamplerOutput(x, n)


ETA = Option("eta", float, 1.0, "euler_ancestral: noise of each step (0: Euler)", 0.0, 1.0,
             True)  # fmt: skip
LMS_ORDER = Option("lms_order", int, 4, "lms: derivatives combined", 1, 4, True, static=True)
SOLVERS = (
    Sampler("euler", euler, (), "perturbed", lambda n, p: n, False,
            "Euler on the probability-flow ODE: N evaluations"),
    Sampler("euler_ancestral", euler_ancestral, (ETA,), "perturbed", lambda n, p: n, True,
            "Euler ancestral (eta): N evaluations"),
    Sampler("dpm2", dpm2, (), "perturbed", lambda n, p: 2 * n - 1, False,
            "DPM2 (midpoint in log sigma): 2 N - 1 evaluations", on_grid=lambda p: False),
    Sampler("lms", lms, (LMS_ORDER,), "perturbed", lambda n, p: n, False,
            "linear multistep of order lms_order: N evaluations"),
    Sampler("dpmpp_2m", dpmpp_2m, (), "perturbed", lambda n, p: n, False,
            "DPM-Solver++(2M): N evaluations"),
)  # fmt: skip
for _entry in SOLVERS:
    register(_entry, replace=True)
    registry.BUILTINS.add(_entry.name)
