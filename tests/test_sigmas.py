import numpy as np
import pytest

from tf_score.sigmas import geometric_sigmas


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
        ((1.0, 2.0, 10), "sigma_begin must be > sigma_end"),
        ((1.0, 1.0, 10), "sigma_begin must be > sigma_end"),
        ((1.0, 0.0, 10), "sigma_end must be > 0"),
        ((1.0, -1.0, 10), "sigma_end must be > 0"),
        ((1.0, 0.1, 0), "num_levels must be an integer >= 1"),
        ((1.0, 0.1, 2.5), "num_levels must be an integer >= 1"),
        ((1.0, 0.1, 1), "must equal sigma_end"),
    ],
)
def test_invalid_schedules_name_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        geometric_sigmas(*args)
