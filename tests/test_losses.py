"""Every loss against its closed form on Gaussian data with a linear (Gaussian) score model.

Data x ~ N(m, C) in D = 3; model s(x) = -P (x - mu). Monte Carlo means are compared with the
closed forms within 4 standard errors (stated per test), with fixed seeds.
"""

import numpy as np
import pytest
import tensorflow as tf

from tf_score import losses

D = 3
M = np.array([0.5, -1.0, 2.0], np.float32)
L_CHOL = np.array([[1.0, 0, 0], [0.3, 0.8, 0], [-0.2, 0.4, 1.2]], np.float32)
C = L_CHOL @ L_CHOL.T
P = np.array([[1.2, 0.2, 0.0], [0.1, 0.9, -0.3], [0.0, 0.2, 0.7]], np.float32)
MU = np.array([0.2, -0.5, 1.5], np.float32)
N = 200_000


def data(n=N, seed=0):
    z = tf.random.stateless_normal([n, D], seed=[seed, 1])
    return M + z @ L_CHOL.T


def linear_score(p=P, mu=MU):
    p = tf.convert_to_tensor(p)
    return lambda x, *_: -(x - mu) @ tf.transpose(p)


def exact_sm_closed_form(p=P, mu=MU, cov=C, mean=M):
    d = (mean - mu)[:, None]
    return float(-np.trace(p) + 0.5 * np.trace(p.T @ p @ (cov + d @ d.T)))


def assert_mc_close(per_example, expected, n_se=4.0):
    v = per_example.numpy()
    se = v.std() / np.sqrt(len(v))
    assert abs(v.mean() - expected) < n_se * se + 1e-4, (v.mean(), expected, se)


def test_exact_sm_matches_closed_form():
    assert_mc_close(losses.exact_sm(linear_score(), data()), exact_sm_closed_form())


@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
@pytest.mark.parametrize("fn", [losses.ssm, losses.ssm_vr])
def test_sliced_sm_is_unbiased_for_exact_sm(fn, projection):
    per_example = fn(linear_score(), data(), seed=[3, 4], projection=projection)
    assert per_example.shape == (N,)
    assert_mc_close(per_example, exact_sm_closed_form())


def test_ssm_vr_has_lower_variance_and_particles_reduce_it():
    x = data(20_000)
    plain = losses.ssm(linear_score(), x, seed=[1, 2]).numpy().var()
    vr = losses.ssm_vr(linear_score(), x, seed=[1, 2]).numpy().var()
    vr4 = losses.ssm_vr(linear_score(), x, seed=[1, 2], n_particles=4).numpy().var()
    assert vr < plain and vr4 < vr


def test_ssm_gradient_matches_exact_sm_gradient():
    """Second-order autodiff through the sliced term: d/dP of SSM-VR == d/dP of exact SM."""
    x = data(50_000)
    p = tf.Variable(P)
    with tf.GradientTape(persistent=True) as tape:
        exact = tf.reduce_mean(losses.exact_sm(lambda y: -(y - MU) @ tf.transpose(p), x))
        sliced = tf.reduce_mean(
            losses.ssm_vr(lambda y: -(y - MU) @ tf.transpose(p), x, seed=[5, 6], n_particles=8)
        )
    g_exact, g_sliced = tape.gradient(exact, p).numpy(), tape.gradient(sliced, p).numpy()
    # The trace term's gradient is exact in expectation; 8 particles x 50k keep MC error ~1%.
    np.testing.assert_allclose(g_sliced, g_exact, atol=0.03 * np.abs(g_exact).max())


def test_dsm_matches_closed_form():
    sigma = 0.7
    a = -P
    d = (M - MU)[:, None]
    b = sigma * a + np.eye(D) / sigma
    expected = 0.5 * (np.trace(a.T @ a @ (C + d @ d.T)) + np.trace(b.T @ b))
    assert_mc_close(losses.dsm(linear_score(), data(), sigma, seed=[7, 8]), float(expected))


def test_dsm_minimiser_is_the_perturbed_score():
    """Fitting (P, mu) by DSM at sigma recovers the score of N(m, C + sigma^2 I)."""
    sigma = 0.5
    p = tf.Variable(np.eye(D, dtype=np.float32))
    mu = tf.Variable(np.zeros(D, np.float32))
    opt = tf.keras.optimizers.Adam(0.02)

    @tf.function
    def step(k):
        seed = tf.stack([k, 9])
        x = M + tf.random.stateless_normal([4096, D], seed=seed) @ L_CHOL.T
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(
                losses.dsm(lambda y: -(y - mu) @ tf.transpose(p), x, sigma, seed=seed + 1)
            )
        opt.apply_gradients(zip(tape.gradient(loss, [p, mu]), [p, mu], strict=True))

    for k in range(1500):
        step(tf.constant(k))
    p_star = np.linalg.inv(C + sigma**2 * np.eye(D))
    np.testing.assert_allclose(p.numpy(), p_star, atol=0.05)
    np.testing.assert_allclose(mu.numpy(), M, atol=0.05)


def _perturbed_gaussian_score(sigmas):
    """Exact score of N(m, C + sigma_i^2 I), as a noise-conditional score_fn."""
    precisions = tf.constant(
        np.stack([np.linalg.inv(C + s**2 * np.eye(D)) for s in sigmas]), tf.float32
    )
    return lambda x, levels: -tf.einsum("bij,bj->bi", tf.gather(precisions, levels), x - M)


def test_anneal_dsm_at_the_optimum_matches_closed_form_per_level():
    """At the true perturbed score, E[DSM_i] = 1/2 (D / sigma^2 - tr((C + sigma^2 I)^-1))."""
    sigmas = np.array([3.0, 1.0, 0.3], np.float32)
    x = data()
    levels = losses.sample_levels(N, 3, seed=[1, 1])
    per_example = losses.anneal_dsm(_perturbed_gaussian_score(sigmas), x, sigmas, levels, [2, 2])
    for i, s in enumerate(sigmas):
        prec = np.linalg.inv(C + s**2 * np.eye(D))
        expected = s**2 * 0.5 * (D / s**2 - np.trace(prec))
        assert_mc_close(tf.boolean_mask(per_example, levels == i), expected)


def test_sample_levels_is_uniform():
    levels = losses.sample_levels(100_000, 10, seed=[0, 3]).numpy()
    counts = np.bincount(levels, minlength=10)
    assert levels.min() == 0 and levels.max() == 9
    # each count ~ Binomial(1e5, 0.1): sd ~ 95
    assert np.all(np.abs(counts - 10_000) < 400)


@pytest.mark.parametrize("vr", [True, False])
def test_anneal_ssm_at_the_optimum_matches_closed_form(vr):
    """At the true perturbed score, exact SM = -1/2 tr(Sigma_sigma^-1), weighted by sigma^2."""
    sigmas = np.array([2.0, 0.5], np.float32)
    x = data()
    levels = losses.sample_levels(N, 2, seed=[4, 4])
    per_example = losses.anneal_ssm(
        _perturbed_gaussian_score(sigmas), x, sigmas, levels, [5, 5], variance_reduction=vr
    )
    for i, s in enumerate(sigmas):
        expected = s**2 * -0.5 * np.trace(np.linalg.inv(C + s**2 * np.eye(D)))
        assert_mc_close(tf.boolean_mask(per_example, levels == i), expected)


def test_losses_are_reproducible_for_a_seed():
    x = data(1000)
    a = losses.ssm(linear_score(), x, seed=[1, 2]).numpy()
    b = losses.ssm(linear_score(), x, seed=[1, 2]).numpy()
    c = losses.ssm(linear_score(), x, seed=[1, 3]).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_arguments():
    x = data(10)
    with pytest.raises(ValueError, match="projection must be one of"):
        losses.ssm(linear_score(), x, seed=[1, 2], projection="uniform")
    with pytest.raises(ValueError, match="n_particles must be >= 1"):
        losses.ssm_vr(linear_score(), x, seed=[1, 2], n_particles=0)
    with pytest.raises(ValueError, match=r"exact_sm needs x of shape \[B, D\]"):
        losses.exact_sm(lambda y: y, tf.zeros([2, 2, 2]))
