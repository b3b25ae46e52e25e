"""The registered solvers, each one function on the registry's signature

    fn(model, x, sigmas, *, seed, callback=None, **options) -> SamplerOutput

written as graph loops (``tf.while_loop``), never a Python loop at run time. ``model``
answers ``score(x, sigma)`` (``networks.contract``); ``num_evals`` counts model calls per
sample (``Plan.run`` turns them into network evaluations).

Update convention of the Langevin solvers (the "a" convention):

    x <- x + a * s(x) + sqrt(2 a) * z,     z ~ N(0, I),

Langevin dynamics for p when s = grad log p. NCSN's toy code writes the same step as
``x + (lr / 2) s + sqrt(lr) z``, so its "lr 0.1" is a = 0.05 here. Noise is stateless
(Philox) from ``fold_in(seed, step)``: a seed replays the same chain (for a given compile
mode; XLA's Philox stream differs from TensorFlow's). The chain state is float32 even when
the network computes in bfloat16.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_score.sampling import registry
from tf_score.sampling.registry import Option, Sampler, SamplerError, SamplerOutput

# --- helpers ------------------------------------------------------------------------------------


def step_noise(seed, step, shape):
    """z ~ N(0, I) of step ``step``, from a batch or a per-sample seed (``registry.normal``;
    Philox explicitly: "auto_select" may differ by device)."""
    return registry.normal(shape, registry.fold(seed, step))


def plus_noise(moved, noise_std, z):
    """``moved + noise_std * z``, kept a sum of two terms. Grappler otherwise merges ``x + drift
    + noise`` into one three-input AddN, which its memory optimizer, at large batch sizes,
    turns into a TemporaryVariable that collides between while-loop iterations
    (AlreadyExistsError; tensorflow/tensorflow#37740). The control dependency makes ``moved``
    unmergeable; the arithmetic is unchanged."""
    with tf.control_dependencies([moved]):
        noise = noise_std * z
    return moved + noise


def score_at(model, x, sigma):
    """The model's score at one sigma for the whole batch, float32."""
    return tf.cast(model.score(x, tf.fill(tf.shape(x)[:1], sigma)), tf.float32)


def after_step(callback, i, sigma, x):
    """``x``, after ``callback(i, sigma, x)`` has run (if any): its op must not be pruned."""
    if callback is None:
        return x
    done = callback(i, sigma, x)
    if done is None:
        return x
    with tf.control_dependencies(tf.nest.flatten(done)):
        return tf.identity(x)


def as_grid(sigmas) -> tf.Tensor:
    """The grid as a float32 constant (``Plan.run`` passes it as Python floats, so that
    its values are known when the solver is traced)."""
    if tf.is_tensor(sigmas):
        return tf.cast(sigmas, tf.float32)
    return tf.constant(np.asarray(sigmas, np.float32))


def next_sigmas(sigmas):
    """sigma_(i+1) for every i, with sigma_(N+1) = 0."""
    return tf.concat([sigmas[1:], tf.zeros([1], sigmas.dtype)], axis=0)


def _num(sigmas):
    return sigmas.shape[0] if sigmas.shape[0] is not None else tf.shape(sigmas)[0]


# --- options shared between solvers ------------------------------------------------------------

DENOISE = Option(
    "denoise", bool, True, "a final Tweedie step x + sigma_N^2 s(x, sigma_N)", static=True
)
STEP_LR = Option(
    "step_lr", float, 0.05, "annealed Langevin eps: a_i = eps sigma_i^2 / sigma_N^2", 0.0
)
N_STEPS_EACH = Option(
    "n_steps_each", int, 100, "annealed Langevin steps per level T", 1, low_closed=True
)


# --- Langevin -----------------------------------------------------------------------------------


def langevin(
    model, x, sigmas, *, seed, callback=None, langevin_step_size=0.05, langevin_steps=1000
):
    """Plain Langevin dynamics at the last sigma: ``langevin_steps`` steps of x <- x + a s(x,
    sigma_N) + sqrt(2a) z with a fixed a = ``langevin_step_size``."""
    x, sigmas = tf.convert_to_tensor(x, tf.float32), as_grid(sigmas)
    a = tf.cast(langevin_step_size, tf.float32)
    n_steps = tf.cast(langevin_steps, tf.int32)
    sigma, noise_scale = sigmas[-1], tf.sqrt(2.0 * a)

    def body(k, x):
        s = score_at(model, x, sigma)
        x = plus_noise(x + a * s, noise_scale, step_noise(seed, k, tf.shape(x)))
        return k + 1, after_step(callback, k, sigma, x)

    _, x = tf.while_loop(lambda k, _: k < n_steps, body, (tf.constant(0), x))
    return SamplerOutput(x, n_steps)


def annealed_langevin(
    model, x, sigmas, *, seed, callback=None, step_lr=0.05, n_steps_each=100, denoise=True
):
    """Annealed Langevin dynamics (NCSN, Song & Ermon 2019, Algorithm 1): for each level i,
    T = ``n_steps_each`` steps of x <- x + a_i s(x, sigma_i) + sqrt(2 a_i) z with
    a_i = eps sigma_i^2 / sigma_N^2 (eps = ``step_lr``), so that a_i / sigma_i^2 is the same at
    every level; with ``denoise`` a last Tweedie step x + sigma_N^2 s(x, sigma_N) (NCSNv2).
    The callback runs at the end of every level."""
    x, sigmas = tf.convert_to_tensor(x, tf.float32), as_grid(sigmas)
    eps, t_each = tf.cast(step_lr, tf.float32), tf.cast(n_steps_each, tf.int32)
    num_levels, sigma_last = _num(sigmas), sigmas[-1]

    def level_body(level, x):
        a = eps * tf.square(sigmas[level] / sigma_last)
        noise_scale = tf.sqrt(2.0 * a)

        def step_body(t, x):
            s = score_at(model, x, sigmas[level])
            z = step_noise(seed, level * t_each + t, tf.shape(x))
            return t + 1, plus_noise(x + a * s, noise_scale, z)

        _, x = tf.while_loop(lambda t, _: t < t_each, step_body, (tf.constant(0), x))
        return level + 1, after_step(callback, level, sigmas[level], x)

    _, x = tf.while_loop(lambda level, _: level < num_levels, level_body, (tf.constant(0), x))
    calls = tf.cast(num_levels, tf.int32) * t_each
    if denoise:
        x = x + tf.square(sigma_last) * score_at(model, x, sigma_last)
        calls += 1
    return SamplerOutput(x, calls)


# --- one step per level -------------------------------------------------------------------------


def consistent_eta(sigmas) -> float:
    """The smallest consistent eta of a grid: max_i (1 - sigma_(i+1) / sigma_i)."""
    sig = np.asarray(sigmas, np.float64)
    return float(np.max(1.0 - sig[1:] / sig[:-1])) if len(sig) > 1 else 1.0


def consistent_annealed(model, x, sigmas, *, seed, callback=None, cas_eta=0.0, denoise=True):
    """Consistent annealed sampling (Jolicoeur-Martineau et al. 2020), one step per level:
    x <- x + eta sigma_i^2 s(x, sigma_i) + sqrt(sigma_(i+1)^2 - (1 - eta)^2 sigma_i^2) z, with
    eta = ``cas_eta`` (0: the smallest consistent value, ``consistent_eta``), so a chain at
    noise sigma_i is at sigma_(i+1) after the step."""
    sig = tf.get_static_value(as_grid(sigmas))
    eta = _check_cas(sig, {"cas_eta": cas_eta})
    x, sigmas = tf.convert_to_tensor(x, tf.float32), as_grid(sigmas)
    eta = tf.constant(eta * float(sig[-1]) ** 2, tf.float32) / tf.square(sigmas[-1])
    num_levels, nxt = _num(sigmas), next_sigmas(sigmas)
    # after the step the noise left in x is (1 - eta) sigma_i; top it up to sigma_(i+1)
    noise_std = tf.sqrt(tf.maximum(tf.square(nxt) - tf.square((1.0 - eta) * sigmas), 0.0))

    def body(i, x):
        s = score_at(model, x, sigmas[i])
        x = plus_noise(
            x + eta * tf.square(sigmas[i]) * s, noise_std[i], step_noise(seed, i, tf.shape(x))
        )
        return i + 1, after_step(callback, i, sigmas[i], x)

    _, x = tf.while_loop(lambda i, _: i < num_levels, body, (tf.constant(0), x))
    calls = num_levels
    if denoise:  # the last step left (1 - eta) sigma_N of noise
        resid = (1.0 - eta) * sigmas[-1]
        x = x + tf.square(resid) * score_at(model, x, sigmas[-1])
        calls += 1
    return SamplerOutput(x, calls)


def _check_cas(sigmas, options) -> float:
    """The eta consistent annealed sampling uses on this grid; SamplerError if too small."""
    need = consistent_eta(sigmas)
    eta = float(options["cas_eta"]) or need
    if eta < need * (1 - 1e-6):
        raise SamplerError(f"sampler option cas_eta must be >= {need:.4g} for this grid, got {eta}")
    return eta


def _per_example_norm(t):
    return tf.norm(tf.reshape(t, [tf.shape(t)[0], -1]), axis=1)


PREDICTORS = ("reverse_diffusion", "ancestral")
CORRECTOR_STEPS = ("snr", "sigma")


def _corrector_step(rule, snr, sigma, z, g):
    """The Langevin corrector's step a at noise level ``sigma`` (``corrector_step``)."""
    if rule == "sigma":  # the snr rule where |s| is pure noise's, sqrt(d) / sigma
        return 2.0 * tf.square(snr * sigma)
    # one step for the batch, from its mean norms (per-example ratios are too noisy in low
    # dimension; the score SDE reference does the same)
    norm_z, norm_g = (tf.reduce_mean(_per_example_norm(t)) for t in (z, g))
    return 2.0 * tf.square(snr * norm_z / tf.maximum(norm_g, 1e-12))


def predictor_corrector(
    model, x, sigmas, *, seed, callback=None, snr=0.16, n_corrector=1, denoise=True,
    predictor="reverse_diffusion", corrector_step="snr",
):  # fmt: skip
    """Predictor-corrector sampling of the VE SDE (Song et al. 2021). At each level:
    ``n_corrector`` Langevin steps x <- x + a s + sqrt(2 a) z, then a predictor to
    sigma_(i+1): x <- x + d_i s + c_i z, d_i = sigma_i^2 - sigma_(i+1)^2, c_i = sqrt(d_i)
    (reverse_diffusion, Euler-Maruyama) or sigma_(i+1) sqrt(d_i) / sigma_i (ancestral: ends
    at exactly sigma_(i+1)'s noise). With ``denoise`` the last predictor step adds no noise.
    ``corrector_step``: ``snr``, the published a = 2 (snr ||z|| /
    ||s||)^2 (norms averaged over the batch), or ``sigma``, a = 2 (snr sigma_i)^2: the same
    where ||s|| is pure noise's, sqrt(d) / sigma_i, which an exact score's root-mean-square
    norm does not exceed (Fisher information), so in expectation not a larger step. Its drift
    is 2 snr^2 (D - x), a fixed fraction of the denoiser's move as in the predictor, where
    ``snr`` lets a learned denoiser's error e (s = (D - x) / sigma^2) pull x by about
    2 snr^2 ||z||^2 / ||e / sigma^2|| per step."""
    x, sigmas = tf.convert_to_tensor(x, tf.float32), as_grid(sigmas)
    snr, n_corrector = tf.cast(snr, tf.float32), tf.cast(n_corrector, tf.int32)
    num_levels, nxt, per_level = _num(sigmas), next_sigmas(sigmas), n_corrector + 1

    def level_body(i, x):
        def corrector(j, x):
            g = score_at(model, x, sigmas[i])
            z = step_noise(seed, i * per_level + j, tf.shape(x))
            a = _corrector_step(corrector_step, snr, sigmas[i], z, g)
            return j + 1, plus_noise(x + a * g, tf.sqrt(2.0 * a), z)

        _, x = tf.while_loop(lambda j, _: j < n_corrector, corrector, (tf.constant(0), x))
        var = tf.square(sigmas[i]) - tf.square(nxt[i])
        s = score_at(model, x, sigmas[i])
        z = step_noise(seed, i * per_level + n_corrector, tf.shape(x))
        keep_noise = tf.logical_or(i < num_levels - 1, tf.logical_not(tf.constant(bool(denoise))))
        std = nxt[i] * tf.sqrt(var) / sigmas[i] if predictor == "ancestral" else tf.sqrt(var)
        x = plus_noise(x + var * s, tf.cast(keep_noise, tf.float32) * std, z)
        return i + 1, after_step(callback, i, sigmas[i], x)

    _, x = tf.while_loop(lambda i, _: i < num_levels, level_body, (tf.constant(0), x))
    return SamplerOutput(x, num_levels * per_level)


# --- ODE and SDE solvers on sigma -----------------------------------------------------------


def heun_levels(num_levels: int, num_steps: int | None = None) -> np.ndarray:
    """``num_steps`` indices of a grid of ``num_levels``, evenly spaced, first and last kept."""
    if num_steps is None or num_steps >= num_levels:
        return np.arange(num_levels, dtype=np.int32)
    if num_steps < 2:
        raise SamplerError(f"sampler option heun_steps must be 0 or >= 2, got {num_steps}")
    return np.unique(np.round(np.linspace(0, num_levels - 1, num_steps))).astype(np.int32)


def _heun_grid(sigmas, heun_steps):
    return tf.gather(sigmas, heun_levels(int(sigmas.shape[0]), heun_steps or None))


def heun(model, x, sigmas, *, seed, callback=None, heun_steps=0):
    """Deterministic Heun integration of the probability-flow ODE dx/dsigma = -sigma s(x, sigma)
    (EDM, Karras et al. 2022, Algorithm 1 for sigma(t) = t) on ``heun_steps`` sigmas of the grid
    (0: all; ``heun_levels``) and then 0: a Heun step between sigmas, Euler on the last step
    (x + sigma^2 s, the Tweedie denoise). ``seed`` is unused."""
    del seed
    x, sigmas = tf.convert_to_tensor(x, tf.float32), as_grid(sigmas)
    grid = _heun_grid(sigmas, heun_steps)
    steps, nxt = tf.shape(grid)[0], next_sigmas(grid)

    def body(k, x):
        sigma, sigma_next = grid[k], nxt[k]
        d = -sigma * score_at(model, x, sigma)
        x_euler = x + (sigma_next - sigma) * d

        def second():
            s2 = score_at(model, x_euler, sigma_next)
            return x + (sigma_next - sigma) * 0.5 * (d - sigma_next * s2)

        x = tf.cond(k < steps - 1, second, lambda: x_euler)
        return k + 1, after_step(callback, k, sigma, x)

    _, x = tf.while_loop(lambda k, _: k < steps, body, (tf.constant(0), x))
    return SamplerOutput(x, 2 * steps - 1)


def _churn(sigmas, s_churn, s_tmin, s_tmax):
    """EDM's gamma_i = min(s_churn / N, sqrt(2) - 1) for s_tmin <= sigma_i <= s_tmax (0: no
    upper limit), else 0 (float64 arithmetic, then float32)."""
    f64 = tf.float64
    n = tf.cast(tf.shape(sigmas)[0], f64)
    s_tmin, s_tmax = tf.cast(s_tmin, tf.float32), tf.cast(s_tmax, tf.float32)
    in_range = (sigmas >= s_tmin) & ((sigmas <= s_tmax) | tf.equal(s_tmax, 0.0))
    gamma = tf.minimum(tf.cast(s_churn, f64) / n, np.sqrt(2.0) - 1.0)
    return tf.cast(tf.where(in_range, gamma, tf.zeros([], f64)), tf.float32)


def edm(model, x, sigmas, *, seed, callback=None, s_churn=0.0, s_noise=1.0, s_tmin=0.0, s_tmax=0.0):
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) on the grid, then 0: before
    step i the noise is raised to sigma_hat = sigma_i (1 + gamma_i) by adding
    sqrt(sigma_hat^2 - sigma_i^2) s_noise z (``_churn``); then a Heun step to sigma_(i+1)
    (Euler on the last, to 0). With s_churn = 0 it is the Heun sampler."""
    x, sigmas = tf.convert_to_tensor(x, tf.float32), as_grid(sigmas)
    gammas, s_noise = _churn(sigmas, s_churn, s_tmin, s_tmax), tf.cast(s_noise, tf.float32)
    steps, nxt = tf.shape(sigmas)[0], next_sigmas(sigmas)

    def body(k, x):
        sigma, sigma_next = sigmas[k], nxt[k]
        sigma_hat = sigma * (1.0 + gammas[k])
        z = step_noise(seed, k, tf.shape(x))
        x_hat = x + tf.sqrt(tf.maximum(tf.square(sigma_hat) - tf.square(sigma), 0.0)) * s_noise * z
        d = -sigma_hat * score_at(model, x_hat, sigma_hat)  # dx/dsigma = -sigma s
        x_euler = x_hat + (sigma_next - sigma_hat) * d

        def second():
            d2 = -sigma_next * score_at(model, x_euler, sigma_next)
            return x_hat + (sigma_next - sigma_hat) * 0.5 * (d + d2)

        x = tf.cond(k < steps - 1, second, lambda: x_euler)
        return k + 1, after_step(callback, k, sigma, x)

    _, x = tf.while_loop(lambda k, _: k < steps, body, (tf.constant(0), x))
    return SamplerOutput(x, 2 * steps - 1)


def ode(model, x, sigmas, *, seed, callback=None, ode_tol=1e-5, denoise=True):
    """The adaptive probability-flow ODE dx/dsigma = -sigma s(x, sigma) from sigma_1 to sigma_N
    by Dormand-Prince (``tfp.math.ode``, rtol = atol = ``ode_tol``), then with ``denoise`` the
    Tweedie step at sigma_N. Calls: every evaluation the solver makes (+1). ``seed`` is unused."""
    import tensorflow_probability as tfp  # heavy; only the ODE solvers need it

    del seed, callback
    x, sigmas = tf.convert_to_tensor(x, tf.float32), as_grid(sigmas)
    sigma_max, sigma_min = sigmas[0], sigmas[-1]
    solver = tfp.math.ode.DormandPrince(rtol=ode_tol, atol=ode_tol)

    def ode_fn(tau, y):  # tau = -sigma increases
        sigma = tf.maximum(-tau, sigma_min)
        return -tau * score_at(model, y, sigma)

    result = solver.solve(ode_fn, -sigma_max, x, solution_times=[-sigma_min])
    x = result.states[-1]
    # the solver's count leaves out its first evaluation (at sigma_1; counted by a call counter)
    calls = tf.cast(result.diagnostics.num_ode_fn_evaluations, tf.int32) + 1
    if denoise:
        x = x + tf.square(sigma_min) * score_at(model, x, sigma_min)
        calls += 1
    return SamplerOutput(x, calls)


# --- the registry entries ---------------------------------------------------------------------


def _o(name, kind, default, help_, low=None, high=None, closed=False, **kw) -> Option:
    return Option(name, kind, default, help_, low, high, closed, **kw)


LANGEVIN_OPTIONS = (
    _o("langevin_step_size", float, 0.05, "plain Langevin: the fixed step a", 0.0),
    _o("langevin_steps", int, 1000, "plain Langevin: steps at the last sigma", 0, closed=True),
)
CAS_ETA = _o(
    "cas_eta", float, 0.0, "consistent annealed eta (0: the smallest consistent value)",
    0.0, 1.0, True, static=True,
)  # fmt: skip
PC_OPTIONS = (
    _o("snr", float, 0.16, "predictor-corrector: corrector signal-to-noise ratio", 0.0),
    _o("n_corrector", int, 1, "predictor-corrector: corrector steps per level", 0, closed=True),
    DENOISE,
    _o("predictor", str, "reverse_diffusion", "predictor-corrector: reverse_diffusion or "
       "ancestral (ends each step at exactly the next level's noise)", choices=PREDICTORS,
       static=True),
    _o("corrector_step", str, "snr", "predictor-corrector: the corrector's step, snr "
       "(published: 2 (snr |z| / |s|)^2) or sigma (2 (snr sigma)^2: never larger for an exact "
       "score, safe where a learned score at small sigma is mostly error)",
       choices=CORRECTOR_STEPS, static=True),
)  # fmt: skip
HEUN_STEPS = _o(
    "heun_steps",
    int,
    0,
    "heun: sigmas of the grid used (0: all)",
    0,
    closed=True,
    static=True,
    rule=(lambda v: v == 0 or v >= 2, "0 (all levels) or >= 2"),
)
ODE_TOL = _o("ode_tol", float, 1e-5, "ode: rtol = atol of Dormand-Prince", 0.0, 1.0, static=True)
EDM_OPTIONS = (
    _o("s_churn", float, 0.0, "edm: stochasticity S_churn (0: Heun)", 0.0, closed=True),
    _o("s_noise", float, 1.0, "edm: noise inflation S_noise", 0.0),
    _o("s_tmin", float, 0.0, "edm: churn only for sigma >= s_tmin", 0.0, closed=True),
    _o("s_tmax", float, 0.0, "edm: churn only for sigma <= s_tmax (0: no limit)", 0.0, closed=True),
)


def _churn_free(options) -> bool:
    return not tf.is_tensor(options["s_churn"]) and float(options["s_churn"]) == 0.0


ENTRIES = (
    Sampler("annealed_langevin", annealed_langevin, (STEP_LR, N_STEPS_EACH, DENOISE), "uniform",
            lambda n, p: n * p["n_steps_each"] + int(p["denoise"]), True,
            "NCSN's annealed Langevin dynamics"),
    Sampler("langevin", langevin, LANGEVIN_OPTIONS, "uniform", lambda n, p: p["langevin_steps"],
            True, "plain Langevin dynamics at the last sigma"),
    Sampler("consistent_annealed", consistent_annealed, (CAS_ETA, DENOISE), "perturbed",
            lambda n, p: n + int(p["denoise"]), True,
            "consistent annealed sampling", validate=_check_cas),
    Sampler("predictor_corrector", predictor_corrector, PC_OPTIONS, "perturbed",
            lambda n, p: n * (1 + p["n_corrector"]), True,
            "VE predictor-corrector"),
    Sampler("heun", heun, (HEUN_STEPS,), "perturbed",
            lambda n, p: 2 * len(heun_levels(n, p["heun_steps"] or None)) - 1, False,
            "Heun's second-order ODE solver (EDM)"),
    Sampler("ode", ode, (ODE_TOL, DENOISE), "perturbed", lambda n, p: None, False,
            "the adaptive probability-flow ODE (Dormand-Prince)",
            on_grid=lambda p: False),
    Sampler("edm", edm, EDM_OPTIONS, "perturbed", lambda n, p: 2 * n - 1, True,
            "EDM's stochastic sampler (Heun with churn)",
            on_grid=_churn_free),
)  # fmt: skip
registry.register_builtins(ENTRIES)
