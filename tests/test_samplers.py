"""Samplers against known distributions with exact scores (the TFP Langevin test pattern).

Tolerances: moment checks allow 5 standard errors of the estimate plus the sampler's known
discretisation bias (for unadjusted Langevin on a Gaussian, a relative variance bias of
about a / (2 lambda_min)); mode weights allow about 3 standard errors.

Every solver is called on the one signature ``fn(model, x, sigmas, *, seed, callback=None,
**options)`` with a contract model (``networks.contract``): exact scores as
``ScoreFunction``, level-conditioned ``lambda x, levels`` scores as ``LevelScoreModel``.
"""

import numpy as np
import pytest
import tensorflow as tf

from tf_score import data, noise, sampling
from tf_score.evaluation import metrics
from tf_score.networks import contract
from tf_score.noise import geometric_sigmas
from tf_score.sampling import registry, solvers

MEAN = np.array([1.0, -2.0], np.float32)
COV = np.array([[1.0, 0.6], [0.6, 2.0]], np.float32)
PREC = np.linalg.inv(COV).astype(np.float32)

#: the exact score of N(MEAN, COV) at every sigma (an unperturbed target)
GAUSSIAN = contract.ScoreFunction(lambda x, sigma: -(x - MEAN) @ PREC.T, name="gaussian")

_COMPILED: dict = {}


def solve(solver, model, x0, sigmas, seed, jit=False, **options):
    """``solver`` as one ``tf.function`` (one per solver and compile mode, so a replay runs
    the same compiled loop), on the grid as Python floats (as ``sampling.draw`` passes it:
    known when traced) from the explicit start ``x0``."""
    key = (solver, bool(jit))
    if key not in _COMPILED:
        _COMPILED[key] = tf.function(solver, jit_compile=bool(jit))
    grid = tuple(float(v) for v in np.atleast_1d(np.asarray(sigmas, np.float32)))
    x0 = tf.convert_to_tensor(x0, tf.float32)
    # Python values (numpy scalars would become tensors; static options must stay Python)
    options = {k: v.item() if isinstance(v, np.generic) else v for k, v in options.items()}
    return _COMPILED[key](model, x0, grid, seed=tf.constant(seed, tf.int32), **options)


def uniform_start(shape, seed, low=0.0, high=1.0):
    """x0 ~ U[low, high]^shape (the Langevin solvers' start)."""
    return registry.uniform_start(shape, seed, None, sampling.SampleSpace((2,), (low, high)))


def perturbed_gaussian_score(sigmas):
    """The exact score of N(MEAN, COV + sigma_i^2 I) at level i, as a level-conditioned
    "network" ``(x, levels) -> s``."""
    precs = tf.constant(
        np.stack([np.linalg.inv(COV + s**2 * np.eye(2)) for s in sigmas]), tf.float32
    )
    return lambda x, levels: -tf.einsum("bij,bj->bi", tf.gather(precs, levels), x - MEAN)


def perturbed_gaussian(sigmas):
    return contract.LevelScoreModel(perturbed_gaussian_score(sigmas), sigmas)


def assert_moments(x, mean, cov, rel_bias=0.0):
    n = len(x)
    emp_mean, emp_cov = x.mean(0), np.cov(x.T)
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(emp_mean - mean) < 5 * se_mean), (emp_mean, mean)
    # sd of a sample covariance entry: sqrt((C_ij^2 + C_ii C_jj) / n)
    se_cov = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / n)
    assert np.all(np.abs(emp_cov - cov) < 5 * se_cov + rel_bias * np.abs(cov)), (emp_cov, cov)


def test_langevin_matches_gaussian_moments():
    n, a = 10_000, 0.01
    x0 = uniform_start([n, 2], [0, 1], -5.0, 5.0)
    out = solve(
        solvers.langevin, GAUSSIAN, x0, [1.0], [0, 2], langevin_step_size=a, langevin_steps=2000
    )
    # the one output type of every solver: no snapshots field any more (see the callback test)
    assert int(out.num_evals) == 2000 and out._fields == ("samples", "num_evals")
    lam_min = np.linalg.eigvalsh(COV).min()
    assert_moments(out.samples.numpy(), MEAN, COV, rel_bias=a / lam_min)


def test_annealed_langevin_matches_gaussian_moments():
    """Each level targets N(m, C + sigma_i^2 I); the last one (sigma_L = 0.1) is checked.

    a_L = eps = 3e-3 and T = 500 give ~3 relaxation times at the last level; the
    discretisation bias a / (2 lambda_min) is 0.2%.
    """
    sigmas = geometric_sigmas(3.0, 0.1, 6)
    x0 = uniform_start([10_000, 2], [1, 1], -5.0, 5.0)
    out = solve(
        solvers.annealed_langevin,
        perturbed_gaussian(sigmas),
        x0,
        sigmas,
        [1, 2],
        step_lr=3e-3,
        n_steps_each=500,
        denoise=False,
    )
    target = COV + sigmas[-1] ** 2 * np.eye(2)
    assert_moments(out.samples.numpy(), MEAN, target, rel_bias=0.01)
    assert int(out.num_evals) == 3000


def test_samplers_are_reproducible_and_seed_dependent():
    sigmas = geometric_sigmas(5.0, 0.1, 4)
    model = perturbed_gaussian(sigmas)
    x0 = uniform_start([64, 2], [3, 3])
    run = lambda s: solve(
        solvers.annealed_langevin, model, x0, sigmas, s, step_lr=1e-3, n_steps_each=10
    )
    a, b, c = run([5, 6]).samples.numpy(), run([5, 6]).samples.numpy(), run([5, 7]).samples
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c.numpy())


def test_snapshots_through_the_solver_callback_and_denoise():
    """Snapshots are no solver output any more: a callback (``sampling.py_callback``) sees the
    chain after every level of annealed Langevin, which with the start are the old
    ``snapshots`` [L + 1, B, ...] (what ``api.generate(..., snapshots=True)`` stacks)."""
    sigmas = geometric_sigmas(5.0, 0.5, 4)
    score = perturbed_gaussian_score(sigmas)
    model = contract.LevelScoreModel(score, sigmas)
    x0 = uniform_start([128, 2], [4, 4])
    seen = []
    callback = sampling.py_callback(lambda i, sigma, x: seen.append((i, sigma, x)))
    out = solve(
        solvers.annealed_langevin, model, x0, sigmas, [1, 1], callback=callback,
        step_lr=1e-2, n_steps_each=5, denoise=False,
    )  # fmt: skip
    snapshots = np.stack([x0.numpy(), *(x for _, _, x in seen)])
    assert snapshots.shape == (5, 128, 2)
    assert [int(i) for i, _, _ in seen] == [0, 1, 2, 3]
    np.testing.assert_array_equal([s for _, s, _ in seen], sigmas)
    np.testing.assert_array_equal(snapshots[0], x0.numpy())
    np.testing.assert_array_equal(snapshots[-1], out.samples.numpy())
    # the callback only observes: without it, the same chain
    plain = solve(
        solvers.annealed_langevin, model, x0, sigmas, [1, 1],
        step_lr=1e-2, n_steps_each=5, denoise=False,
    )  # fmt: skip
    np.testing.assert_array_equal(plain.samples.numpy(), out.samples.numpy())
    den = solve(solvers.annealed_langevin, model, x0, sigmas, [1, 1], step_lr=1e-2, n_steps_each=5)
    assert int(den.num_evals) == 4 * 5 + 1
    levels = tf.fill([128], 3)
    expected = out.samples + sigmas[-1] ** 2 * score(out.samples, levels)
    np.testing.assert_allclose(den.samples.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_xla_compiled_loop_is_reproducible_and_correct():
    """XLA draws a different (valid) Philox stream than the TF kernels, so compare statistics."""
    n, a = 10_000, 0.02
    x0 = uniform_start([n, 2], [0, 9], -5.0, 5.0)
    run = lambda: solve(
        solvers.langevin, GAUSSIAN, x0, [1.0], [0, 1], jit=True,
        langevin_step_size=a, langevin_steps=1000,
    ).samples.numpy()  # fmt: skip
    x = run()
    np.testing.assert_array_equal(x, run())
    lam_min = np.linalg.eigvalsh(COV).min()
    assert_moments(x, MEAN, COV, rel_bias=a / lam_min)


def test_bad_arguments():
    """Options are validated by the registry's schema before any sampling."""
    space = sampling.SampleSpace((2,))
    bad_step = "langevin_step_size must be a finite number > 0"
    with pytest.raises(sampling.SamplerError, match=bad_step):
        sampling.draw(
            "langevin", GAUSSIAN, [1.0], 2, 0, space, langevin_step_size=0.0, langevin_steps=10
        )
    with pytest.raises(sampling.SamplerError, match="n_steps_each must be an integer >= 1"):
        sampling.draw("annealed_langevin", GAUSSIAN, [1.0], 2, 0, space, n_steps_each=0)
    with pytest.raises(sampling.SamplerError, match="unknown sampler 'leapfrog'; choose one of"):
        sampling.draw("leapfrog", GAUSSIAN, [1.0], 2, 0, space)
    with pytest.raises(sampling.SamplerError, match="takes options step_lr"):
        sampling.draw("annealed_langevin", GAUSSIAN, [1.0], 2, 0, space, snr=0.1)
    assert registry.SamplerError is sampling.SamplerError


@pytest.mark.slow
def test_two_mode_plain_vs_annealed_with_exact_scores():
    """The NCSN demonstration with exact scores (REFERENCE settings, n = 4000).

    Expected: plain ~0.52 (the uniform start's basin split, shifted slightly by the weights),
    annealed ~0.78 (measured 0.781 +- 0.002 over 6 x 5000 samples). SE at n = 4000 is ~0.008;
    bands are about +-3 SE.
    """
    toy = data.get_toy("two_mode")
    sigmas = geometric_sigmas(20.0, 1.0, 10)
    x0 = uniform_start([4000, 2], [0, 1], -8.0, 8.0)
    exact_p = contract.ScoreFunction(lambda x, sigma: toy.score(x))  # p itself at every sigma
    plain = solve(solvers.langevin, exact_p, x0, sigmas, [0, 2], langevin_step_size=0.05)
    annealed = solve(
        solvers.annealed_langevin, contract.ScoreFunction(toy.score), x0, sigmas, [0, 3],
        step_lr=0.05, denoise=False,
    )  # fmt: skip
    w_plain, _ = metrics.mode_weight(plain.samples.numpy())
    w_annealed, _ = metrics.mode_weight(annealed.samples.numpy())
    assert 0.49 < w_plain < 0.55, w_plain
    assert 0.755 < w_annealed < 0.805, w_annealed


# --- faster samplers: exact scores of an isotropic Gaussian, where every step is linear ------

MU, C = np.array([1.0, -2.0], np.float32), 1.0  # data N(MU, C^2 I)
FAST_SIGMAS = geometric_sigmas(20.0, 0.05, 30)


def _iso_score(x, levels):
    s2 = tf.gather(tf.constant(FAST_SIGMAS), levels)[:, None] ** 2
    return -(x - MU) / (C**2 + s2)


ISO = contract.LevelScoreModel(_iso_score, FAST_SIGMAS)


def _start(n, seed):
    """x0 ~ N(MU, (C^2 + sigma_1^2) I): the data perturbed to the first level."""
    z = tf.random.stateless_normal([n, 2], seed, alg="philox")
    return MU + np.sqrt(C**2 + FAST_SIGMAS[0] ** 2) * z


def _assert_var(x, var, mean=MU):
    """Mean and per-coordinate variance within 5 standard errors (n samples)."""
    n = len(x)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / n)), (x.mean(0), mean)
    assert np.all(np.abs(x.var(0) - var) < 5 * var * np.sqrt(2 / n)), (x.var(0), var)


def test_heun_is_the_exact_linear_map_and_nearly_transports_to_the_data():
    """On a Gaussian each Heun step is x - MU <- m_k (x - MU) with a known m_k: the samples
    must equal that map per sample; on the 30-level grid the map's variance is within 5% of
    the data's (the probability-flow ODE is exact; Heun's error is the discretisation)."""
    x0 = _start(4000, [1, 2])
    grid = np.append(FAST_SIGMAS.astype(np.float64), 0.0)
    m = 1.0
    for k in range(len(FAST_SIGMAS)):
        s, t = grid[k], grid[k + 1]
        d = s / (C**2 + s**2)  # -d (x - MU) is dx/dsigma, up to sign conventions
        if t > 0:
            m *= 1 + (t - s) * 0.5 * (d + t / (C**2 + t**2) * (1 + (t - s) * d))
        else:
            m *= 1 + (t - s) * d
    out = solve(solvers.heun, ISO, x0, FAST_SIGMAS, [0, 0])
    assert int(out.num_evals) == 2 * 30 - 1
    np.testing.assert_allclose(out.samples.numpy(), MU + m * (x0.numpy() - MU), atol=2e-4)
    assert abs(m**2 * (C**2 + FAST_SIGMAS[0] ** 2) - C**2) < 0.05
    # coarser grids: fewer evaluations, the first and last levels kept
    np.testing.assert_array_equal(solvers.heun_levels(30, 5), [0, 7, 14, 22, 29])
    assert int(solve(solvers.heun, ISO, x0, FAST_SIGMAS, [0, 0], heun_steps=10).num_evals) == 19


def test_predictor_corrector_matches_its_recursion_and_the_corrector_helps():
    n = 20000
    x0 = _start(n, [3, 4])
    # predictor only: x - MU <- (1 - d/(C^2 + s^2)) (x - MU) + sqrt(d) z, no noise at the end
    v = C**2 + FAST_SIGMAS[0] ** 2
    grid = np.append(FAST_SIGMAS.astype(np.float64), 0.0)
    for k in range(len(FAST_SIGMAS)):
        d = grid[k] ** 2 - grid[k + 1] ** 2
        v = (1 - d / (C**2 + grid[k] ** 2)) ** 2 * v + (d if k < len(FAST_SIGMAS) - 1 else 0)
    pred = solve(solvers.predictor_corrector, ISO, x0, FAST_SIGMAS, [5, 6], n_corrector=0)
    assert int(pred.num_evals) == 30
    _assert_var(pred.samples.numpy(), v)
    assert v > 1.15 * C**2  # the predictor alone overshoots on this grid ...
    pc = solve(solvers.predictor_corrector, ISO, x0, FAST_SIGMAS, [5, 6], n_corrector=2)
    assert int(pc.num_evals) == 90
    # ... and two Langevin corrector steps (snr 0.16) per level bring it within 6% + 5 SE
    x = pc.samples.numpy()
    assert np.all(np.abs(x.var(0) - C**2) < 0.06 + 5 * np.sqrt(2 / n)), x.var(0)
    assert np.all(np.abs(x.mean(0) - MU) < 5 * np.sqrt(1.0 / n))


def test_the_sigma_corrector_step_is_its_recursion_and_bounds_a_denoiser_error():
    """corrector_step="sigma": a = 2 (snr sigma_i)^2, so each corrector step is linear, x - MU
    <- (1 - a / (C^2 + s^2)) (x - MU) + sqrt(2 a) z, and the variance follows that recursion
    (5 SE). With a denoiser error b (the score exact + b / sigma^2, as a learned D = D* + b
    gives), the same noise moves every sample by the recursion's b-term, 0.0665 for
    b = 0.01 on this grid (to 1e-3). The published snr rule, a = 2 (snr |z| / |s|)^2, pulls
    by ~ 2 snr^2 |z|^2 / |b / sigma^2| along b per step where b / sigma^2 dominates |s|:
    0.25 (measured), what shifted the learned toy's light mode on 200 levels."""
    n, snr, b = 20000, 0.16, np.array([0.01, 0.0], np.float32)
    grid = np.append(FAST_SIGMAS.astype(np.float64), 0.0)
    m, v = 0.0, C**2 + grid[0] ** 2
    for k in range(len(FAST_SIGMAS)):
        s2, a, d = grid[k] ** 2, 2 * (snr * grid[k]) ** 2, grid[k] ** 2 - grid[k + 1] ** 2
        m, v = (1 - a / (C**2 + s2)) * m + a * b[0] / s2, (1 - a / (C**2 + s2)) ** 2 * v + 2 * a
        last = k == len(FAST_SIGMAS) - 1
        m, v = (
            (1 - d / (C**2 + s2)) * m + d * b[0] / s2,
            (1 - d / (C**2 + s2)) ** 2 * v + d * (not last),
        )

    def biased(x, levels):
        return _iso_score(x, levels) + b / tf.gather(tf.constant(FAST_SIGMAS), levels)[:, None] ** 2

    x0 = _start(n, [3, 4])
    shift = {}
    for rule in solvers.CORRECTOR_STEPS:
        x, xb = (solve(solvers.predictor_corrector, model, x0, FAST_SIGMAS, [5, 6],
                       corrector_step=rule).samples.numpy()
                 for model in (ISO, contract.LevelScoreModel(biased, FAST_SIGMAS)))  # fmt: skip
        shift[rule] = (xb - x).mean(0)
        if rule == "sigma":
            _assert_var(x, v)
            np.testing.assert_allclose(xb - x, np.broadcast_to([m, 0.0], x.shape), atol=1e-3)
    assert abs(m - 0.0665) < 5e-4 and shift["snr"][0] > 3 * m, shift


def test_ancestral_predictor_matches_its_recursion_and_keeps_the_levels_noise():
    """The ancestral predictor adds sigma_(i+1) sqrt(d_i) / sigma_i z, which is exact for a
    point mass; on this unit-variance Gaussian it contracts (variance 0.82 on this grid, its
    exact linear recursion) where reverse diffusion expands (> 1.15, test above)."""
    n = 20000
    x0 = _start(n, [3, 4])
    v = C**2 + FAST_SIGMAS[0] ** 2
    grid = np.append(FAST_SIGMAS.astype(np.float64), 0.0)
    for k in range(len(FAST_SIGMAS)):
        d = grid[k] ** 2 - grid[k + 1] ** 2
        v = (1 - d / (C**2 + grid[k] ** 2)) ** 2 * v + grid[k + 1] ** 2 * d / grid[k] ** 2
    assert 0.80 < v < 0.83
    out = solve(
        solvers.predictor_corrector, ISO, x0, FAST_SIGMAS, [5, 6], n_corrector=0,
        predictor="ancestral",
    )  # fmt: skip
    assert int(out.num_evals) == 30
    _assert_var(out.samples.numpy(), v)
    # an unknown predictor is refused by the schema, before sampling
    assert solvers.PREDICTORS == ("reverse_diffusion", "ancestral")
    with pytest.raises(sampling.SamplerError, match="predictor must be one of reverse_diffusion"):
        sampling.draw(
            "predictor_corrector", ISO, FAST_SIGMAS, 2, 0, sampling.SampleSpace((2,)),
            predictor="euler",
        )  # fmt: skip


def test_consistent_annealed_sampling_matches_its_recursion():
    n = 20000
    x0 = _start(n, [7, 8])
    sig = FAST_SIGMAS.astype(np.float64)
    eps = 1.5 * (1 - sig[1] / sig[0]) * sig[-1] ** 2  # above the consistency minimum
    eta = eps / sig[-1] ** 2
    nxt = np.append(sig[1:], 0.0)
    v = C**2 + sig[0] ** 2
    for i in range(len(sig)):
        added = max(nxt[i] ** 2 - ((1 - eta) * sig[i]) ** 2, 0.0)
        v = (1 - eta * sig[i] ** 2 / (C**2 + sig[i] ** 2)) ** 2 * v + added
    seed = [9, 10]
    out = solve(solvers.consistent_annealed, ISO, x0, FAST_SIGMAS, seed, cas_eta=eta, denoise=False)
    assert int(out.num_evals) == 30
    _assert_var(out.samples.numpy(), v)
    # the grid-dependent minimum is checked before any step (here eagerly, the direct call)
    with pytest.raises(sampling.SamplerError, match="cas_eta must be >="):
        solvers.consistent_annealed(ISO, x0, FAST_SIGMAS, seed=tf.constant(seed), cas_eta=eta / 3)
    # cas_eta = 0 is the smallest consistent eta
    assert solvers.consistent_eta(sig) == pytest.approx(1 - sig[1] / sig[0])


def test_a_cas_eta_below_the_grids_minimum_is_a_sampler_error_through_draw():
    """The registry's path (``sampling.draw``: the API, the CLI) compiles the solver; the
    grid-dependent cas_eta check must still surface as ``SamplerError`` (a ValueError), as
    every other bad option does, not wrapped by autograph."""
    sig = FAST_SIGMAS.astype(np.float64)
    too_small = (1 - sig[1] / sig[0]) / 3
    with pytest.raises(sampling.SamplerError, match="cas_eta must be >="):
        sampling.draw(
            "consistent_annealed", ISO, FAST_SIGMAS, 2, 0, sampling.SampleSpace((2,)),
            cas_eta=float(too_small),
        )  # fmt: skip


#: options per registered sampler for the two-mode test (the rest are the library defaults)
TWO_MODE_OPTIONS = {
    "annealed_langevin": {"step_lr": 5e-4, "n_steps_each": 50},
    "langevin": {"langevin_step_size": 0.05, "langevin_steps": 600},
}


@pytest.mark.parametrize("name", sampling.builtin_names())
def test_every_registered_sampler_through_the_one_contract_on_the_two_mode_score(name):
    """Each registered sampler, called by name through ``sampling.draw`` (its own start, the
    seeding convention) on the exact noise-conditional score of the two-mode mixture as a
    level-conditioned model (``LevelScoreModel``: solvers off the grid, the ODE, see the
    log-sigma interpolation between levels, 2 network evaluations per call), on a 40-level
    grid 50 -> 0.1: the heavy mode's weight within 0.04 of 0.8 (SE at n = 4000 is 0.006);
    plain Langevin at the last level keeps the start's basin split (about 0.5).
    sigma_1 = 50, not 20: the deterministic samplers map their start (U[-8, 8]^2 + sigma_1 z,
    centred at 0, not at the data mean (3, 3)) onto the modes, and with sigma_1 = 20 that
    offset sent 26% of the chains to the light mode (measured 0.74 with Heun, CAS and the
    ODE); at 50 the start is within the noise of p_sigma_1."""
    toy = data.get_toy("two_mode")
    sigmas = geometric_sigmas(50.0, 0.1, 40)
    model = contract.LevelScoreModel(toy.conditional_score_fn(sigmas), sigmas)
    space = sampling.SampleSpace((2,), (-8.0, 8.0))
    options = TWO_MODE_OPTIONS.get(name, {})
    out = sampling.draw(name, model, sigmas, 4000, 0, space, **options)
    assert out.samples.shape == (4000, 2) and int(out.num_evals) > 0
    # network evaluations: the registry's count of model calls, x2 for calls between levels
    entry = sampling.get(name)
    resolved = entry.resolve(options)
    calls = entry.evaluations(len(sigmas), resolved)
    per_call = 1 if entry.on_grid(resolved) else 2
    if calls is None:  # the adaptive ODE: known afterwards
        assert int(out.num_evals) % per_call == 0
    else:
        assert int(out.num_evals) == calls * per_call, (int(out.num_evals), calls, per_call)
    w, _ = metrics.mode_weight(out.samples.numpy())
    if name == "langevin":
        assert 0.4 < w < 0.6, w
    else:
        assert abs(w - 0.8) < 0.04, w
    # the same seed replays; batch 1 of the same seed is another draw
    again = sampling.draw(name, model, sigmas, 4000, 0, space, **options)
    np.testing.assert_array_equal(out.samples.numpy(), again.samples.numpy())
    other = sampling.draw(name, model, sigmas, 8, [0, 1], space)
    assert not np.allclose(out.samples.numpy()[:8], other.samples.numpy())


def test_deterministic_samplers_started_at_the_data_mean_keep_the_mode_weight():
    """Heun on the exact two-mode score, EDM's grid 80 -> 0.01 (18 levels, 35 evaluations),
    n = 20480 (SE 0.003): started at the data's mean (3, 3) + sigma_1 z (the space's
    ``data_mean``, what training records) the heavy mode keeps 0.80 within 3 SE; the uniform
    start centred at 0 is 3 units off and loses more than 0.01 of it (measured 0.789 on a
    40-level grid), though sigma_1 = 80. The same z in both starts."""
    from tf_score.config import ExperimentConfig
    from tf_score.families import score_model

    toy = data.get_toy("two_mode")
    mean = score_model.data_mean(ExperimentConfig())
    np.testing.assert_allclose(mean, (3.0, 3.0), atol=1e-12)
    sigmas = noise.karras_sigmas(80.0, 0.01, 18)
    model = contract.LevelScoreModel(toy.conditional_score_fn(sigmas), sigmas)
    centred_space = sampling.SampleSpace((2,), (-8.0, 8.0), tuple(mean))
    uniform_space = sampling.SampleSpace((2,), (-8.0, 8.0))
    centred = sampling.draw("heun", model, sigmas, 20480, 0, centred_space)
    uniform = sampling.draw("heun", model, sigmas, 20480, 0, uniform_space)
    assert int(centred.num_evals) == 35
    w_centred, se = metrics.mode_weight(centred.samples.numpy())
    w_uniform, _ = metrics.mode_weight(uniform.samples.numpy())
    assert abs(w_centred - 0.8) < 3 * se, (w_centred, se)
    assert w_centred - w_uniform > 0.01, (w_centred, w_uniform)


def test_probability_flow_ode_samples_and_its_likelihood_is_exact_on_a_gaussian():
    """Continuous-sigma exact score of N(MU, C^2 I). The ODE carries N(MU, C^2 + 20^2) to the
    data (variance within 5 SE + 1%); log p_sigma_min(x) by the instantaneous change of
    variables matches the closed form to 1e-3 nats, with the exact trace and with Hutchinson's
    estimator (exact in expectation; here the Jacobian is diagonal, so exact per probe)."""
    import tensorflow_probability as tfp

    from tf_score.evaluation import likelihood

    tfd = tfp.distributions

    model = contract.ScoreFunction(
        lambda x, sigma: -(x - MU) / (C**2 + tf.square(sigma)[:, None]), name="iso"
    )
    smax, smin = 20.0, 0.01
    n = 4000
    x0 = MU + np.sqrt(C**2 + smax**2) * tf.random.stateless_normal([n, 2], [3, 4], alg="philox")
    out = solve(solvers.ode, model, x0, [smax, smin], [0, 0], ode_tol=1e-5)
    x = out.samples.numpy()
    assert np.all(np.abs(x.var(0) - C**2) < 5 * np.sqrt(2 / n) + 0.01), x.var(0)
    assert 20 < int(out.num_evals) < 1000  # adaptive: the solver's own count (+1 denoise)

    def gauss(scale):
        return tfd.MultivariateNormalDiag(MU, tf.fill([2], np.float32(scale)))

    pts = tf.constant(np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32) + MU)
    exact = gauss(np.sqrt(C**2 + smin**2)).log_prob(pts).numpy()
    prior = gauss(np.sqrt(C**2 + smax**2)).log_prob
    for kw in ({"exact_trace": True}, {"seed": tf.constant([1, 2])}):
        ll, evals = likelihood.ode_log_likelihood(model.score, pts, smin, smax, prior, **kw)
        np.testing.assert_allclose(ll.numpy(), exact, atol=1e-3)
        assert int(evals) > 10


def test_level_score_model_is_linear_in_log_sigma_between_levels():
    sig = geometric_sigmas(10.0, 0.1, 5)  # 10, 3.16, 1, 0.316, 0.1

    def by_level(x, levels):  # a "network" whose output is its level index
        return tf.cast(levels, tf.float32)[:, None] + 0.0 * x

    model = contract.LevelScoreModel(by_level, sig)
    score = model.score
    x = tf.zeros([3, 2])
    for sigma, expected in [(10.0, 0.0), (1.0, 2.0), (0.1, 4.0), (np.sqrt(10.0), 1.0)]:
        np.testing.assert_allclose(score(x, sigma).numpy(), expected, atol=1e-5)
    mid = float(np.sqrt(sig[1] * sig[2]))  # halfway in log sigma between levels 1 and 2
    np.testing.assert_allclose(score(x, mid).numpy(), 1.5, atol=1e-5)
    np.testing.assert_allclose(score(x, 50.0).numpy(), 0.0)  # clamped outside the schedule
    np.testing.assert_allclose(score(x, 0.01).numpy(), 4.0)
    # Adaptive solvers probe past the end, even sigma <= 0: clamped too, not NaN (a NaN here
    # made the ODE solver loop forever on NaN step sizes).
    for past in (0.0, -0.05):
        np.testing.assert_allclose(score(x, past).numpy(), 4.0)
    # the contract's sigma per example: each row interpolated at its own sigma
    per_example = score(x, tf.constant([10.0, mid, 0.01])).numpy()
    np.testing.assert_allclose(per_example, [[0.0] * 2, [1.5] * 2, [4.0] * 2], atol=1e-5)
    # 2 network evaluations per call between levels (the ODE's count), 1 at a level
    assert model.network_calls(off_grid=True) == 2 and model.network_calls(off_grid=False) == 1


def test_a_diverging_sampler_is_an_error_and_keeps_nothing():
    """Langevin with a step of 1e30 overflows: ``api.generate_from`` (behind the CLI, the
    evaluations and the benchmarks) raises instead of returning NaN samples."""
    from tf_score import api, config
    from tf_score.families.run import NonFiniteSamplesError

    cfg = config.SamplerConfig().replace(
        sampler="langevin", langevin_step_size=1e30, langevin_steps=20
    )
    space = sampling.SampleSpace((2,))
    with pytest.raises(NonFiniteSamplesError, match="langevin diverged: 16 of 16 samples"):
        api.generate_from(GAUSSIAN, [1.0], space, 16, 0, cfg)
    ok = api.generate_from(
        GAUSSIAN, [1.0], space, 16, 0, api.sampler_config(cfg, langevin_step_size=0.01)
    )
    assert np.all(np.isfinite(ok.samples))


def test_annealed_langevin_at_a_large_batch_runs_twice_on_the_cpu_preset_network():
    """Regression: at batch 1024 on the CPU preset's ResNet, grappler merged the Langevin
    update x + a s + sqrt(2a) z into a three-input AddN, its memory optimizer turned that into
    a TemporaryVariable, and the second call failed with AlreadyExistsError
    (tensorflow/tensorflow#37740). The same chain twice gives the same samples. (Two levels
    fail as ten did without ``solvers.plus_noise``'s control dependency: checked.)"""
    from tf_score.networks.resnet import ConditionalResNet

    sigmas = geometric_sigmas(1.0, 0.01, 2)
    net = ConditionalResNet((28, 28, 1), sigmas, ngf=16, channel_mults=(1, 2, 2), num_blocks=2)
    net(tf.zeros([1, 28, 28, 1]), tf.zeros([1], tf.int32))  # built, as a loaded run's is
    model = contract.LevelScoreModel(net, sigmas)
    seed = tf.constant([0, 0])
    options = dict(step_lr=5e-5, n_steps_each=1, denoise=True)
    space = sampling.SampleSpace((28, 28, 1))
    first = sampling.draw("annealed_langevin", model, sigmas, 1024, seed, space, **options)
    second = sampling.draw("annealed_langevin", model, sigmas, 1024, seed, space, **options)
    assert int(first.num_evals) == 3
    np.testing.assert_array_equal(first.samples.numpy(), second.samples.numpy())
