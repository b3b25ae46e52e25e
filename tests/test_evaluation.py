"""Direct tests of ``tf_score.evaluation`` (metrics and the probability-flow likelihood) and
of ``families.evaluate``'s two-mode evaluations on copies of the committed toy workdirs,
against closed forms and brute-force re-computations. (FID 2x2 closed form, KID's cubic
kernel, the two-sample test's size and the Gaussian ODE likelihood: test_metrics.py,
test_samplers.py.)"""

import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tf_score import api, config, data
from tf_score.evaluation import likelihood, metrics
from tf_score.families import evaluate
from tf_score.families.run import Run

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "a4ac31d")


def _load_copy(tmp_path, name):
    shutil.copytree(os.path.join(DATA, name), tmp_path / name)
    return api.load(str(tmp_path / name))


def test_mode_weight_is_the_fraction_above_the_diagonal_with_the_binomial_se():
    """7 of 10 points with x1 + x2 > 0 (one exactly on x1 + x2 = 0 counts as the light
    mode): w = 0.7, se = sqrt(0.7 * 0.3 / 10) (exact); one mode only: w = 1, se = 0."""
    x = np.array(
        [[5, 5], [4, 6], [1, 0], [0.1, 0], [3, -2], [9, -8], [6, 6], [-5, -5], [-1, 1], [-4, -6]]
    )
    w, se = metrics.mode_weight(x)
    assert w == pytest.approx(0.7, abs=1e-12)
    assert se == pytest.approx(math.sqrt(0.7 * 0.3 / 10), rel=1e-12)
    assert metrics.mode_weight(np.full((4, 2), 3.0)) == (1.0, 0.0)


def _mmd_brute(x, y, h):
    k = lambda a, b: math.exp(-np.sum((a - b) ** 2) / (2 * h * h))
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_mmd_rbf_is_the_unbiased_estimate_and_the_gaussian_closed_form():
    """On 15 vs 11 points mmd_rbf equals the brute-force unbiased MMD^2 (rel 1e-9), with the
    median bandwidth it is invariant to rescaling both samples (rel 1e-9); for N(0, I) vs
    N(delta, I) in 2-D with h = 1 it estimates 2 c (1 - exp(-|delta|^2 / (2 (h^2 + 2)))),
    c = h^2 / (h^2 + 2), within 3 SE (SE 0.0096 measured at n = 2000), and grows with the shift."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(15, 2)), rng.normal(size=(11, 2)) + 0.7
    assert metrics.mmd_rbf(x, y, bandwidth=0.8) == pytest.approx(_mmd_brute(x, y, 0.8), rel=1e-9)
    assert metrics.mmd_rbf(3.0 * x, 3.0 * y) == pytest.approx(metrics.mmd_rbf(x, y), rel=1e-9)
    n, c = 2000, 1.0 / 3.0
    a = rng.normal(size=(n, 2))
    vals = []
    for shift in (0.0, 0.5, 1.0, 2.0):
        b = rng.normal(size=(n, 2)) + np.array([shift, 0.0])
        vals.append(metrics.mmd_rbf(a, b, bandwidth=1.0))
        want = 2 * c * (1 - math.exp(-(shift**2) / 6.0))
        assert abs(vals[-1] - want) < 0.03, (shift, vals[-1], want)
    assert vals == sorted(vals) and vals[-1] > 10 * abs(vals[0])


def test_two_sample_test_p_is_the_permutation_count_of_its_own_relabellings():
    """kernel_two_sample_test equals a brute-force loop over the same relabellings
    (rng.permutation(n + m)[:n] of default_rng(seed)): the statistic to rel 1e-9 and p exactly
    (1 + #{perm >= observed}) / (1 + P); the same seed repeats; a 4 sd shift has the smallest
    p, 1 / (1 + P); fewer than 2 points is a ValueError."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 2)), rng.normal(size=(9, 2)) + 0.3
    perms, seed = 60, 7
    stat, p = metrics.kernel_two_sample_test(x, y, num_permutations=perms, seed=seed, bandwidth=1.3)
    z = np.concatenate([x, y])
    assert stat == pytest.approx(_mmd_brute(x, y, 1.3), rel=1e-9)
    r, count = np.random.default_rng(seed), 0
    for _ in range(perms):
        mask = np.zeros(len(z), bool)
        mask[r.permutation(len(z))[:12]] = True
        count += _mmd_brute(z[mask], z[~mask], 1.3) >= stat - 1e-12
    assert p == (1 + count) / (1 + perms)
    assert (stat, p) == metrics.kernel_two_sample_test(x, y, perms, seed=seed, bandwidth=1.3)
    far = metrics.kernel_two_sample_test(x, y + 4.0, num_permutations=perms, seed=seed)
    assert far[1] == 1 / (1 + perms)
    with pytest.raises(ValueError, match="at least 2 points"):
        metrics.kernel_two_sample_test(x[:1], y)


def test_frechet_distance_of_commuting_covariances_is_the_sum_of_root_differences():
    """For C1 = Q diag(a) Q^T, C2 = Q diag(b) Q^T (d = 10, random rotation Q) the distance is
    ||mu1 - mu2||^2 + sum (sqrt a - sqrt b)^2 (rel 1e-8), also with a rank-deficient C1
    (three zero variances) where a general sqrtm of C1 C2 is unstable."""
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    a, b = rng.uniform(0.1, 4.0, 10), rng.uniform(0.1, 4.0, 10)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    for a_ in (a, np.where(np.arange(10) < 3, 0.0, a)):
        want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a_) - np.sqrt(b)) ** 2)
        c1, c2 = q @ np.diag(a_) @ q.T, q @ np.diag(b) @ q.T
        assert metrics.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(want, rel=1e-8)
        diag = metrics.frechet_distance(mu1, np.diag(a_), mu2, np.diag(b))
        assert diag == pytest.approx(want, rel=1e-8)


def test_kid_of_sets_no_larger_than_the_subset_is_one_value_with_zero_spread():
    """Two sets of 30 with subset_size 100: subsets have min(100, 30, 30) = 30 points, so each
    is its whole set permuted, which the unbiased MMD^2 ignores: 10 subsets give the value of
    one (rel 1e-12) with std < 1e-12; with 40 points in one set its subsets vary (std > 0);
    a single point per set is a ValueError."""
    rng = np.random.default_rng(3)
    f1, f2 = rng.normal(size=(40, 6)), 0.5 + rng.normal(size=(30, 6))
    one, _ = metrics.kid_from_features(f1[:30], f2, num_subsets=1, subset_size=100)
    mean, std = metrics.kid_from_features(f1[:30], f2, num_subsets=10, subset_size=100, seed=5)
    assert mean == pytest.approx(one, rel=1e-12) and std < 1e-12 and one > 0
    assert metrics.kid_from_features(f1, f2, num_subsets=10, subset_size=100, seed=5)[1] > 1e-6
    with pytest.raises(ValueError, match="at least 2 points"):
        metrics.kid_from_features(f1[:1], f2)


def _t_two_sided_p(t, df):
    """1 - 2 int_0^|t| of Student's t density (df), by the trapezoid rule on 200001 points."""
    u = np.linspace(0.0, abs(t), 200_001)
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    f = np.exp(logc - (df + 1) / 2 * np.log1p(u * u / df))
    return 1.0 - 2.0 * float(np.sum((f[1:] + f[:-1]) * np.diff(u)) / 2)


def test_paired_difference_matches_the_manual_t_test():
    """n = 6 paired values: mean, se = sd(d, ddof=1) / sqrt(n), t = mean / se (rel 1e-12) and
    p against a numerical integral of the t density with 5 degrees of freedom (abs 1e-6);
    swapping a and b negates mean and t and keeps p."""
    a = np.array([1.2, 0.7, 2.5, 1.9, 0.3, 1.1])
    b = np.array([0.9, 0.8, 1.6, 1.0, 0.5, 0.2])
    d = a - b
    mean, se = d.mean(), math.sqrt(np.sum((d - d.mean()) ** 2) / 5) / math.sqrt(6)
    r = metrics.paired_difference(a, b)
    assert r["n"] == 6
    assert r["mean"] == pytest.approx(mean, rel=1e-12) and r["se"] == pytest.approx(se, rel=1e-12)
    assert r["t"] == pytest.approx(mean / se, rel=1e-12)
    assert r["p"] == pytest.approx(_t_two_sided_p(mean / se, 5), abs=1e-6)
    s = metrics.paired_difference(b, a)
    assert s["mean"] == pytest.approx(-mean) and s["t"] == pytest.approx(-r["t"])
    assert s["p"] == pytest.approx(r["p"], rel=1e-9)


def test_paired_difference_of_identical_values_is_not_significant():
    """Two models with identical per-example values (d = 0 everywhere) are not reported as
    different: p is not < 0.05 (1 or nan are acceptable; 0 is wrong)."""
    x = np.array([0.3, 1.7, 2.2, 0.9])
    r = metrics.paired_difference(x, x)
    assert r["mean"] == 0.0 and r["se"] == 0.0
    assert not r["p"] < 0.05, r


def test_ode_log_likelihood_of_the_two_mode_mixture_with_its_exact_score():
    """With the exact score of the two-mode mixture (non-Gaussian: a non-linear flow) and the
    exact p_10 as prior, the exact-trace ODE from sigma 0.5 to 10 gives log p_0.5(x) of 32
    points within 2e-3 nats at rtol = atol = 1e-5 (measured 2.4e-4); Hutchinson's estimate
    (one probe) is unbiased: its mean error over the 32 points is within 3 SE of 0."""
    toy = data.get_toy("two_mode")
    x = tf.constant(toy.sample(32, seed=[0, 1]).numpy() + 0.3)
    smin, smax = 0.5, 10.0
    exact = toy.log_prob(x, smin).numpy()
    prior = lambda y: toy.log_prob(y, smax)

    @tf.function
    def ll(x, exact_trace, seed):
        return likelihood.ode_log_likelihood(
            toy.score, x, smin, smax, prior, seed=seed, exact_trace=exact_trace
        )

    got, evals = ll(x, True, tf.constant([0, 0]))
    np.testing.assert_allclose(got.numpy(), exact, atol=2e-3)
    assert int(evals) > 20
    hutch, _ = ll(x, False, tf.constant([1, 2]))
    err = hutch.numpy() - exact
    assert abs(err.mean()) < 3 * err.std(ddof=1) / math.sqrt(len(err)), err
    assert err.std() > 1e-3  # a single probe is noisy here: the Jacobian is not diagonal


def test_two_mode_on_a_copied_workdir_reports_every_row_with_valid_values(tmp_path):
    """evaluate.two_mode on the toy NCSN workdir (2 batches of 64): every documented key,
    mode weights in [0, 1] with their binomial SE, p-values on the permutation grid
    k / 51, the learned annealed row is api.generate's samples (batch b seeded (seed, b),
    bit-exact), exact samples' weight near 0.8 (4 SE at n = 64)."""
    run = _load_copy(tmp_path, "toy_ncsn")
    r = evaluate.two_mode(run, num_samples=64, num_batches=2, seed=1, num_permutations=50)
    m = r.metrics
    assert m["checkpoint_step"] == 300 and m["num_samples_per_batch"] == 64
    assert m["num_batches"] == 2 and m["num_permutations"] == 50 and m["train_loss"] == "anneal_dsm"
    for key, _, _ in evaluate.TWO_MODE_ROWS:
        assert r.samples[key].shape == (128, 2)
        w, se = m[f"{key}_mode_weight"], m[f"{key}_mode_weight_se"]
        assert 0.0 <= w <= 1.0 and se == pytest.approx(math.sqrt(w * (1 - w) / 128))
        p = m[f"{key}_two_sample_p"]
        assert 0 < p <= 1 and (p * 51) == pytest.approx(round(p * 51))
        assert np.isfinite(m[f"{key}_mmd"])
    want = api.generate(run, 128, seed=1, sampler="annealed_langevin", batch_size=64)
    np.testing.assert_array_equal(r.samples["annealed_langevin"], want.samples)
    assert r.exact.shape == (64, 2)
    assert abs(m["exact_samples_mode_weight"] - 0.8) < 4 * math.sqrt(0.16 / 64)
    assert m["sample_seconds"] > 0 and np.isfinite(m["exact_vs_exact_mmd"])


def test_chain_target_is_p_for_plain_and_p_sigma_last_for_annealed_langevin(tmp_path):
    """The two-mode test's reference (n = 20,000 per case): plain Langevin's is p (mode sd 1);
    annealed Langevin's is p_sigma_L, mode sd sqrt(1 + sigma_L^2); with the final denoise it
    is Tweedie's E[x0 | x] of p_sigma_L, mode sd 1 / sqrt(1 + sigma_L^2) (Gaussian modes far
    apart); heavy-mode weight 0.8 in all three. Tolerances: 4 standard errors."""
    run = _load_copy(tmp_path, "toy_ncsn")
    toy, n = data.get_toy("two_mode"), 20_000
    s2 = float(run.sigmas[-1]) ** 2
    denoised = Run(run.workdir, run.config.replace(sampler={"denoise": True}), run.models, 0)
    for x, sd in [
        (evaluate.chain_target(toy, run, "langevin", n, 0), 1.0),
        (evaluate.chain_target(toy, run, "annealed_langevin", n, 0), math.sqrt(1 + s2)),
        (evaluate.chain_target(toy, denoised, "annealed_langevin", n, 0), 1 / math.sqrt(1 + s2)),
    ]:
        w, se = metrics.mode_weight(x)
        assert abs(w - 0.8) < 4 * se
        heavy = x[x.sum(1) > 0] - 5.0  # ~16,000 points, 2 coordinates: se = sd / sqrt(2 * 32,000)
        assert np.std(heavy) == pytest.approx(sd, abs=4 * sd / math.sqrt(2 * len(heavy) * 2))


def test_two_mode_fast_on_a_copied_workdir_and_non_toy_runs_are_refused(tmp_path):
    """evaluate.two_mode_fast on the toy EDM workdir (heun, edm; 2 seeds): per sampler the
    samples are api.generate's of seeds 0 and 1 pooled, with the registry's count (heun
    2 x 8 - 1 = 15), their mode weight and per-mode sds (exact), and one p per seed: the
    two-sample test of that seed's draw against exact samples; a run that is not a 2-D toy is
    an EvaluationError from both evaluations."""
    run = _load_copy(tmp_path, "toy_edm")
    r = evaluate.two_mode_fast(run, ("heun", "edm"), num_samples=64, num_seeds=2,
                               num_permutations=50)  # fmt: skip
    assert set(r.metrics["samplers"]) == {"heun", "edm"} and r.metrics["checkpoint_step"] == 300
    toy = data.get_toy("two_mode")
    for name, row in r.metrics["samplers"].items():
        draws = [api.generate(run, 64, seed=k, sampler=name) for k in (0, 1)]
        x = np.concatenate([d.samples for d in draws])
        np.testing.assert_array_equal(r.samples[name], x)
        assert row["num_evals"] == draws[0].num_evals
        assert (row["mode_weight"], row["mode_weight_se"]) == metrics.mode_weight(x)
        assert row["mode_sd"] == metrics.mode_sds(x)
        for k, d in enumerate(draws):
            exact = toy.sample(64, seed=tf.constant([k, 99991])).numpy()
            expected = metrics.kernel_two_sample_test(d.samples, exact, 50, seed=k)[1]
            assert row["two_sample_p"][k] == expected
    assert r.metrics["samplers"]["heun"]["num_evals"] == 15
    image = Run(str(tmp_path), config.from_flat(dict(dataset="mnist", network="resnet")), {}, 0)
    for fn in (evaluate.two_mode, evaluate.two_mode_fast):
        with pytest.raises(evaluate.EvaluationError, match="needs a 2-D toy run"):
            fn(image)
