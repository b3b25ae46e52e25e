import numpy as np
import pytest

from tf_score import noise
from tf_score.noise import geometric_sigmas, grids


def test_geometric_endpoints_and_constant_ratio():
    s = geometric_sigmas(1.0, 0.01, 10)
    assert s.dtype == np.float32 and s.shape == (10,)
    np.testing.assert_allclose([s[0], s[-1]], [1.0, 0.01], rtol=1e-6)
    ratios = s[1:] / s[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-5)
    np.testing.assert_allclose(ratios[0], 0.01 ** (1 / 9), rtol=1e-5)


def test_single_level():
    np.testing.assert_allclose(geometric_sigmas(0.1, 0.1, 1), [0.1])


@pytest.mark.parametrize(
    "args, match",
    [
        ((1.0, 2.0, 10), "sigma_max must be > sigma_min"),
        ((1.0, 1.0, 10), "sigma_max must be > sigma_min"),
        ((1.0, 0.0, 10), "sigma_min must be > 0"),
        ((1.0, -1.0, 10), "sigma_min must be > 0"),
        ((1.0, 0.1, 0), "num_levels must be an integer >= 1"),
        ((1.0, 0.1, 2.5), "num_levels must be an integer >= 1"),
        ((1.0, 0.1, 1), "must equal sigma_min"),
    ],
)
def test_invalid_schedules_name_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        geometric_sigmas(*args)


# --- NCSNv2 rules ----------------------------------------------------------------------------


def test_ncsnv2_rules_reproduce_the_papers_cifar10_choices():
    """D = 3072, sigma 50 -> 0.01: the paper uses L = 232 and, at T = 5, eps = 6.2e-6.
    The gamma rule gives L = 220 (5% fewer levels; the paper rounded up its choice), and the
    eps rule on the paper's 232-level schedule gives 6.18e-6. Tolerance: 10%."""
    levels = noise.num_levels_for(3072, 50.0, 0.01)
    assert abs(levels - 232) / 232 < 0.1, levels
    eps = noise.step_size_for(5, noise.geometric_sigmas(50.0, 0.01, 232))
    assert abs(eps - 6.2e-6) / 6.2e-6 < 0.1, eps
    # The rule's defining property holds at the solution, and more dimensions need a finer
    # ladder (gamma closer to 1).
    gamma = noise.level_ratio_for_dim(3072)
    root = np.sqrt(2 * 3072)
    phi = grids._phi
    assert phi(root * (gamma - 1) + 3 * gamma) - phi(root * (gamma - 1) - 3 * gamma) == (
        pytest.approx(0.5, abs=1e-9)
    )
    assert noise.level_ratio_for_dim(784) > gamma > noise.level_ratio_for_dim(12288) > 1.0


def test_sigma_begin_is_the_largest_pairwise_distance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    brute = max(np.linalg.norm(a - b) for a in x for b in x)
    assert noise.sigma_max_from_data(x) == pytest.approx(brute, rel=1e-9)
    # above max_examples a seeded subset gives a lower bound
    sub = noise.sigma_max_from_data(x, max_examples=50)
    assert sub <= brute and sub == noise.sigma_max_from_data(x, max_examples=50)
    with pytest.raises(ValueError, match="at least 2"):
        noise.sigma_max_from_data(x[:1])
