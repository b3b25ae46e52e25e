"""The ODE / SDE solvers people reach for first in k-diffusion and diffusers, written on the
denoiser D(x; sigma) = ``model.denoise(x, sigma)`` (Karras et al. 2022, section 3), each on the
registry's signature. With d = (x - D) / sigma = dx/dsigma of the probability-flow ODE and the
grid sigma_1 > ... > sigma_N, then 0:

    euler            x <- x + (sigma_(i+1) - sigma_i) d
    euler_ancestral  Euler to sigma_down, then sigma_up z (eta: how much noise)
    dpm2             a midpoint step at sqrt(sigma_i sigma_(i+1))
    lms              linear multistep of order 4 on the past derivatives
    dpmpp_2m         DPM-Solver++(2M), Lu et al. 2022, in t = -log sigma
    dpm2_ancestral   the DPM2 midpoint to sigma_down, then sigma_up z
    dpmpp_2s_ancestral  DPM-Solver++(2S) single-step midpoint, ancestral noise
    dpmpp_2m_sde     DPM-Solver++(2M) SDE: the 2M update with noise (sde_eta),
                     its correction of midpoint or heun form (solver_type)
    dpmpp_3m_sde     the third-order multistep SDE variant (sde_eta 0: an ODE)
    dpm_adaptive     DPM-Solver-12/23 with an error-controlled step in log sigma
                     (rtol, atol, h_init), from the grid's first to last sigma

Each entry of ``ENTRIES`` states the solver's network evaluations (the table in
docs/glossary.md is generated from them: ``registry.evaluations_table``).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_score.sampling import registry
from tf_score.sampling.registry import Option, Sampler, SamplerOutput
from tf_score.sampling.solvers import (
    DENOISE,
    after_step,
    as_grid,
    next_sigmas,
    plus_noise,
    step_noise,
)


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


def _denoised_diff(model, x, sigma):
    """(D, d = (x - D) / sigma) at one sigma."""
    denoised = denoised_at(model, x, sigma)
    return denoised, (x - denoised) / sigma


def _ancestral(model, x, sigmas, seed, callback, eta, move):
    """The loop of the second-order ancestral solvers: at each sigma_i, ``move(x, sigma_i,
    sigma_down, D, d)`` (one more call) to sigma_down, Euler instead on the last step
    (sigma_down = 0), then sigma_up z (``ancestral_step``)."""
    x, sigmas = tf.convert_to_tensor(x, tf.float32), as_grid(sigmas)
    n, nxt, eta = tf.shape(sigmas)[0], next_sigmas(sigmas), tf.cast(eta, tf.float32)

    def body(i, x):
        sigma = sigmas[i]
        down, up = ancestral_step(sigma, nxt[i], eta)
        denoised, d = _denoised_diff(model, x, sigma)
        x = tf.cond(i < n - 1, lambda: move(x, sigma, down, denoised, d),
                    lambda: x + (down - sigma) * d)  # fmt: skip
        x = plus_noise(x, up, step_noise(seed, i, tf.shape(x)))
        return i + 1, after_step(callback, i, sigma, x)

    return SamplerOutput(_loop(body, x, n), 2 * n - 1)


def dpm2_ancestral(model, x, sigmas, *, seed, callback=None, eta=1.0):
    """DPM2 ancestral (k-diffusion): the DPM2 midpoint step from sigma_i to sigma_down (the
    midpoint at sqrt(sigma_i sigma_down)), then sigma_up z; Euler on the last step."""

    def midpoint(x, sigma, down, denoised, d):
        mid = tf.exp(0.5 * (tf.math.log(sigma) + tf.math.log(down)))
        _, d_mid = _denoised_diff(model, x + (mid - sigma) * d, mid)
        return x + (down - sigma) * d_mid

    return _ancestral(model, x, sigmas, seed, callback, eta, midpoint)


def dpmpp_2s_ancestral(model, x, sigmas, *, seed, callback=None, eta=1.0):
    """DPM-Solver++(2S) ancestral (Lu et al. 2022; k-diffusion): in t = -log sigma, a
    single-step second-order move from sigma_i to sigma_down through the midpoint
    s = t + h / 2, x_s = (sigma_s / sigma_i) x - expm1(-h/2) D(x), then
    x <- (sigma_down / sigma_i) x - expm1(-h) D(x_s; sigma_s), then sigma_up z; Euler on
    the last step."""

    def single_step(x, sigma, down, denoised, d):
        h = tf.math.log(sigma) - tf.math.log(down)
        mid = sigma * tf.exp(-0.5 * h)
        x_mid = (mid / sigma) * x - tf.math.expm1(-0.5 * h) * denoised
        return (down / sigma) * x - tf.math.expm1(-h) * denoised_at(model, x_mid, mid)

    return _ancestral(model, x, sigmas, seed, callback, eta, single_step)


def _sde_noise(sigma_next, eta_h):
    """The noise of a DPM-Solver++ SDE step: sigma_(i+1) sqrt(1 - exp(-2 eta h))."""
    return sigma_next * tf.sqrt(tf.maximum(-tf.math.expm1(-2.0 * eta_h), 0.0))


def dpmpp_2m_sde(model, x, sigmas, *, seed, callback=None, sde_eta=1.0, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE (k-diffusion's sample_dpmpp_2m_sde): with h = log(sigma_i /
    sigma_(i+1)), H = (1 + eta) h and r = h_(i-1) / h, x <- (sigma_(i+1) / sigma_i) e^(-eta h)
    x - expm1(-H) D_i + c (D_i - D_(i-1)) / r (no correction on the first step), plus
    sigma_(i+1) sqrt(1 - e^(-2 eta h)) z; the last step returns D. ``solver_type`` sets c:
    ``midpoint`` -expm1(-H) / 2, ``heun`` 1 + expm1(-H) / H (the exact integral of D linear
    in log sigma). ``sde_eta`` 0 is a deterministic DPM-Solver++(2M) (midpoint: dpmpp_2m)."""
    x, sigmas = tf.convert_to_tensor(x, tf.float32), as_grid(sigmas)
    n, nxt, eta = tf.shape(sigmas)[0], next_sigmas(sigmas), tf.cast(sde_eta, tf.float32)
    h_all = tf.math.log(sigmas) - tf.math.log(tf.maximum(nxt, 1e-30))

    def body(i, state):
        x, old = state
        sigma, sigma_next, h = sigmas[i], nxt[i], h_all[i]
        denoised = denoised_at(model, x, sigma)

        def step():
            eta_h = eta * h
            phi = -tf.math.expm1(-h - eta_h)
            moved = (sigma_next / sigma) * tf.exp(-eta_h) * x + phi * denoised
            r = h_all[tf.maximum(i - 1, 0)] / h
            c = 0.5 * phi if solver_type == "midpoint" else 1.0 - phi / (h + eta_h)
            correction = tf.cast(i > 0, tf.float32) * c / r * (denoised - old)
            return plus_noise(moved + correction, _sde_noise(sigma_next, eta_h),
                              step_noise(seed, i, tf.shape(x)))  # fmt: skip

        x = tf.cond(i < n - 1, step, lambda: denoised)
        return i + 1, (after_step(callback, i, sigma, x), denoised)

    _, (x, _) = tf.while_loop(lambda i, _: i < n, body, (tf.constant(0), (x, tf.zeros_like(x))))
    return SamplerOutput(x, n)


def dpmpp_3m_sde(model, x, sigmas, *, seed, callback=None, sde_eta=1.0):
    """DPM-Solver++(3M) SDE (k-diffusion's sample_dpmpp_3m_sde): the exponential step with
    eta, x <- e^(-(1 + eta) h) x + (1 - e^(-(1 + eta) h)) D_i, corrected by the first and
    second divided differences of the last three denoised (phi_2 d1 - phi_3 d2; phi_2 d1
    only on the second step, none on the first), plus sigma_(i+1) sqrt(1 - e^(-2 eta h)) z;
    the last step returns D. ``sde_eta`` 0 is the deterministic DPM-Solver++(3M)."""
    x, sigmas = tf.convert_to_tensor(x, tf.float32), as_grid(sigmas)
    n, nxt, eta = tf.shape(sigmas)[0], next_sigmas(sigmas), tf.cast(sde_eta, tf.float32)
    h_all = tf.math.log(sigmas) - tf.math.log(tf.maximum(nxt, 1e-30))

    def body(i, state):
        x, d_1, d_2 = state  # the denoised of the last two steps
        sigma, sigma_next, h = sigmas[i], nxt[i], h_all[i]
        denoised = denoised_at(model, x, sigma)

        def step():
            h_eta = h * (eta + 1.0)
            x_new = tf.exp(-h_eta) * x - tf.math.expm1(-h_eta) * denoised
            phi_2 = tf.math.expm1(-h_eta) / h_eta + 1.0
            phi_3 = phi_2 / h_eta - 0.5
            r0 = h_all[tf.maximum(i - 1, 0)] / h
            r1 = h_all[tf.maximum(i - 2, 0)] / h
            d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
            third = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1), (d1_0 - d1_1) / (r0 + r1)
            x_new += tf.case([(i >= 2, lambda: phi_2 * third[0] - phi_3 * third[1]),
                              (i == 1, lambda: phi_2 * d1_0)],
                             default=lambda: tf.zeros_like(x))  # fmt: skip
            return plus_noise(x_new, _sde_noise(sigma_next, eta * h),
                              step_noise(seed, i, tf.shape(x)))  # fmt: skip

        x = tf.cond(i < n - 1, step, lambda: denoised)
        return i + 1, (after_step(callback, i, sigma, x), denoised, d_1)

    zeros = tf.zeros_like(x)
    _, (x, *_) = tf.while_loop(lambda i, _: i < n, body, (tf.constant(0), (x, zeros, zeros)))
    return SamplerOutput(x, n)


def _dpm_eps(model, x, t):
    """The noise prediction eps(x, t) = (x - D(x; sigma)) / sigma at sigma = e^(-t)."""
    sigma = tf.exp(-t)
    return (x - denoised_at(model, x, sigma)) / sigma


def _dpm_low_high(model, x, s, t, eps):
    """DPM-Solver's second-order step (r1 = 1/3) and third-order step (r1 = 1/3, r2 = 2/3)
    from t = -log sigma to t'' = t + h, sharing eps at t and at t + h/3: 2 new calls."""
    h = t - s
    sig = lambda u: tf.exp(-u)
    s1, s2 = s + h / 3.0, s + 2.0 * h / 3.0
    u1 = x - sig(s1) * tf.math.expm1(h / 3.0) * eps
    eps_1 = _dpm_eps(model, u1, s1)
    base = x - sig(t) * tf.math.expm1(h) * eps
    low = base - sig(t) * 1.5 * tf.math.expm1(h) * (eps_1 - eps)
    r2h = 2.0 * h / 3.0
    u2 = (x - sig(s2) * tf.math.expm1(r2h) * eps
          - sig(s2) * 2.0 * (tf.math.expm1(r2h) / r2h - 1.0) * (eps_1 - eps))  # fmt: skip
    eps_2 = _dpm_eps(model, u2, s2)
    high = base - sig(t) * 1.5 * (tf.math.expm1(h) / h - 1.0) * (eps_2 - eps)
    return low, high


def dpm_adaptive(model, x, sigmas, *, seed, callback=None, rtol=0.05, atol=0.0078,
                 h_init=0.05, denoise=True):  # fmt: skip
    """DPM-Solver adaptive (Lu et al. 2022, order 3; k-diffusion's dpm_solver_adaptive with
    its defaults): steps in t = -log sigma from sigma_1 to sigma_N, each an embedded pair of
    orders 2 and 3 (3 calls); the step is accepted when the error of the pair, the RMS of
    (x_2 - x_3) / max(atol, rtol max(|x_2|, |x_prev|)) over the batch, gives the I-controller
    factor 1 + atan(err^(-1/3) - 1) >= 0.81, and h is multiplied by that factor either way.
    With ``denoise`` a last call returns D(x; sigma_N). Calls: 3 per attempted step (+1)."""
    del seed
    x, sigmas = tf.convert_to_tensor(x, tf.float32), as_grid(sigmas)
    t_end = -tf.math.log(sigmas[-1])
    rtol, atol = tf.cast(rtol, tf.float32), tf.cast(atol, tf.float32)

    def body(k, s, x, x_prev, h, calls):
        t = tf.minimum(t_end, s + h)
        low, high = _dpm_low_high(model, x, s, t, _dpm_eps(model, x, s))
        delta = tf.maximum(atol, rtol * tf.maximum(tf.abs(low), tf.abs(x_prev)))
        err = tf.sqrt(tf.reduce_mean(tf.square((low - high) / delta)))
        factor = 1.0 + tf.atan((1.0 / (err + 1e-8)) ** (1.0 / 3.0) - 1.0)
        ok = factor >= 0.81
        if callback is not None:
            high = tf.cond(ok, lambda: after_step(callback, k, tf.exp(-s), high), lambda: high)
        return (k + tf.cast(ok, tf.int32), tf.where(ok, t, s), tf.where(ok, high, x),
                tf.where(ok, low, x_prev), h * factor, calls + 3)  # fmt: skip

    state = (tf.constant(0), -tf.math.log(sigmas[0]), x, x, tf.cast(h_init, tf.float32),
             tf.constant(0))  # fmt: skip
    _, _, x, _, _, calls = tf.while_loop(
        lambda k, s, *_: (s < t_end - 1e-5) & (k < 100_000), body, state
    )
    if denoise:
        x, calls = denoised_at(model, x, sigmas[-1]), calls + 1
    return SamplerOutput(x, calls)


ETA = Option("eta", float, 1.0, "euler_ancestral, dpm2_ancestral, dpmpp_2s_ancestral: noise of "
             "each step (0: no noise)", 0.0, 1.0, True)  # fmt: skip
SDE_ETA = Option("sde_eta", float, 1.0, "dpmpp_2m_sde, dpmpp_3m_sde: noise of each step "
                 "(0: the ODE solver; every eta >= 0 keeps the marginals, above 1 with more "
                 "Langevin noise)", 0.0, None, True)  # fmt: skip
SOLVER_TYPE = Option("solver_type", str, "midpoint", "dpmpp_2m_sde: the second-order "
                     "correction's form, midpoint or heun (k-diffusion's solver_type)",
                     choices=("midpoint", "heun"), static=True)  # fmt: skip
ADAPTIVE = (
    Option("rtol", float, 0.05, "dpm_adaptive: relative tolerance", 0.0),
    Option("atol", float, 0.0078, "dpm_adaptive: absolute tolerance (data units)", 0.0),
    Option("h_init", float, 0.05, "dpm_adaptive: first step in log sigma", 0.0),
    DENOISE,
)
LMS_ORDER = Option("lms_order", int, 4, "lms: derivatives combined", 1, 4, True, static=True)
ENTRIES = (
    Sampler("euler", euler, (), "perturbed", lambda n, p: n, False,
            "Euler on the probability-flow ODE"),
    Sampler("euler_ancestral", euler_ancestral, (ETA,), "perturbed", lambda n, p: n, True,
            "Euler ancestral (eta)"),
    Sampler("dpm2", dpm2, (), "perturbed", lambda n, p: 2 * n - 1, False,
            "DPM2 (midpoint in log sigma)", on_grid=lambda p: False),
    Sampler("lms", lms, (LMS_ORDER,), "perturbed", lambda n, p: n, False,
            "linear multistep of order lms_order"),
    Sampler("dpmpp_2m", dpmpp_2m, (), "perturbed", lambda n, p: n, False,
            "DPM-Solver++(2M)"),
    Sampler("dpm2_ancestral", dpm2_ancestral, (ETA,), "perturbed", lambda n, p: 2 * n - 1,
            True, "DPM2 ancestral (eta)", on_grid=lambda p: False),
    Sampler("dpmpp_2s_ancestral", dpmpp_2s_ancestral, (ETA,), "perturbed",
            lambda n, p: 2 * n - 1, True, "DPM-Solver++(2S) ancestral (eta)",
            on_grid=lambda p: False),
    Sampler("dpmpp_2m_sde", dpmpp_2m_sde, (SDE_ETA, SOLVER_TYPE), "perturbed", lambda n, p: n,
            True, "DPM-Solver++(2M) SDE (sde_eta, solver_type)"),
    Sampler("dpmpp_3m_sde", dpmpp_3m_sde, (SDE_ETA,), "perturbed", lambda n, p: n, True,
            "DPM-Solver++(3M) SDE (sde_eta)"),
    Sampler("dpm_adaptive", dpm_adaptive, ADAPTIVE, "perturbed", lambda n, p: None, False,
            "DPM-Solver adaptive, order 3, steps in log sigma",
            on_grid=lambda p: False),
)  # fmt: skip
registry.register_builtins(ENTRIES)
