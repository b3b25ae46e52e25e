"""Samplers against known distributions with exact scores (the TFP Langevin test pattern).

Tolerances: moment checks allow 5 standard errors of the estimate plus the sampler's known
discretisation bias (for unadjusted Langevin on a Gaussian, a relative variance bias of
about a / (2 lambda_min)); mode weights allow about 3 standard errors.
"""

import numpy as np
import pytest
import tensorflow as tf

from tf_score import data, metrics, samplers
from tf_score.sigmas import geometric_sigmas

MEAN = np.array([1.0, -2.0], np.float32)
COV = np.array([[1.0, 0.6], [0.6, 2.0]], np.float32)
PREC = np.linalg.inv(COV).astype(np.float32)


def gaussian_score(x):
    return -(x - MEAN) @ PREC.T


def perturbed_gaussian_score(sigmas):
    precs = tf.constant(
        np.stack([np.linalg.inv(COV + s**2 * np.eye(2)) for s in sigmas]), tf.float32
    )
    return lambda x, labels: -tf.einsum("bij,bj->bi", tf.gather(precs, labels), x - MEAN)


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
    x0 = samplers.uniform_init([n, 2], [0, 1], -5.0, 5.0)
    out = samplers.langevin(gaussian_score, x0, a, 2000, seed=tf.constant([0, 2]))
    assert int(out.num_evals) == 2000 and out.snapshots is None
    lam_min = np.linalg.eigvalsh(COV).min()
    assert_moments(out.samples.numpy(), MEAN, COV, rel_bias=a / lam_min)


def test_annealed_langevin_matches_gaussian_moments():
    """Each level targets N(m, C + sigma_i^2 I); the last one (sigma_L = 0.1) is checked.

    a_L = eps = 3e-3 and T = 500 give ~3 relaxation times at the last level; the
    discretisation bias a / (2 lambda_min) is 0.2%.
    """
    sigmas = geometric_sigmas(3.0, 0.1, 6)
    x0 = samplers.uniform_init([10_000, 2], [1, 1], -5.0, 5.0)
    out = samplers.annealed_langevin(
        perturbed_gaussian_score(sigmas),
        x0,
        sigmas,
        eps=3e-3,
        n_steps_each=500,
        seed=tf.constant([1, 2]),
    )
    target = COV + sigmas[-1] ** 2 * np.eye(2)
    assert_moments(out.samples.numpy(), MEAN, target, rel_bias=0.01)
    assert int(out.num_evals) == 3000


def test_samplers_are_reproducible_and_seed_dependent():
    sigmas = geometric_sigmas(5.0, 0.1, 4)
    score = perturbed_gaussian_score(sigmas)
    x0 = samplers.uniform_init([64, 2], [3, 3])
    run = lambda s: samplers.annealed_langevin(score, x0, sigmas, 1e-3, 10, tf.constant(s))
    a, b, c = run([5, 6]).samples.numpy(), run([5, 6]).samples.numpy(), run([5, 7]).samples
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c.numpy())


def test_snapshots_and_denoise():
    sigmas = geometric_sigmas(5.0, 0.5, 4)
    score = perturbed_gaussian_score(sigmas)
    x0 = samplers.uniform_init([128, 2], [4, 4])
    out = samplers.annealed_langevin(
        score, x0, sigmas, 1e-2, 5, tf.constant([1, 1]), snapshots=True
    )
    assert out.snapshots.shape == (5, 128, 2)
    np.testing.assert_array_equal(out.snapshots[0].numpy(), x0.numpy())
    np.testing.assert_array_equal(out.snapshots[-1].numpy(), out.samples.numpy())
    den = samplers.annealed_langevin(score, x0, sigmas, 1e-2, 5, tf.constant([1, 1]), denoise=True)
    assert int(den.num_evals) == 4 * 5 + 1
    labels = tf.fill([128], 3)
    expected = out.samples + sigmas[-1] ** 2 * score(out.samples, labels)
    np.testing.assert_allclose(den.samples.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_xla_compiled_loop_is_reproducible_and_correct():
    """XLA draws a different (valid) Philox stream than the TF kernels, so compare statistics."""
    n, a = 10_000, 0.02
    x0 = samplers.uniform_init([n, 2], [0, 9], -5.0, 5.0)
    run = lambda: samplers.langevin(
        gaussian_score, x0, a, 1000, tf.constant([0, 1]), jit_compile=True
    ).samples.numpy()
    x = run()
    np.testing.assert_array_equal(x, run())
    lam_min = np.linalg.eigvalsh(COV).min()
    assert_moments(x, MEAN, COV, rel_bias=a / lam_min)


def test_bad_arguments():
    x0 = tf.zeros([2, 2])
    with pytest.raises(ValueError, match="step_size must be > 0"):
        samplers.langevin(gaussian_score, x0, 0.0, 10, tf.constant([0, 0]))
    with pytest.raises(ValueError, match="n_steps_each must be >= 1"):
        samplers.annealed_langevin(lambda x, labels: x, x0, [1.0], 0.1, 0, tf.constant([0, 0]))


@pytest.mark.slow
def test_two_mode_plain_vs_annealed_with_exact_scores():
    """The NCSN demonstration with exact scores (REFERENCE settings, n = 4000).

    Expected: plain ~0.52 (the uniform start's basin split, shifted slightly by the weights),
    annealed ~0.78 (measured 0.781 +- 0.002 over 6 x 5000 samples). SE at n = 4000 is ~0.008;
    bands are about +-3 SE.
    """
    toy = data.get_toy("two_mode")
    sigmas = geometric_sigmas(20.0, 1.0, 10)
    x0 = samplers.uniform_init([4000, 2], [0, 1], -8.0, 8.0)
    plain = samplers.langevin(toy.score_fn(), x0, 0.05, 1000, tf.constant([0, 2])).samples
    annealed = samplers.annealed_langevin(
        toy.conditional_score_fn(sigmas), x0, sigmas, 0.05, 100, tf.constant([0, 3])
    ).samples
    w_plain, _ = metrics.mode_weight(plain.numpy())
    w_annealed, _ = metrics.mode_weight(annealed.numpy())
    assert 0.49 < w_plain < 0.55, w_plain
    assert 0.755 < w_annealed < 0.805, w_annealed
