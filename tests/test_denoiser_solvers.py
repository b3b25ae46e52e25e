"""The k-diffusion / diffusers solvers on the exact denoiser of a Gaussian, where the
probability-flow ODE is solved in closed form: x_0 - mu = C / sqrt(C^2 + sigma_max^2) (x - mu)
for data N(mu, C^2 I). Each deterministic solver's error falls with the number of steps at its
published order (slope fitted on 10, 20, 40, 80 karras sigmas from 10 to 0.002; measured:
euler 1.01, heun 2.15, dpm2 2.14, dpmpp_2m 2.21, lms 3.22, where order 4 holds only
asymptotically after its lower-order start). Every registered solver's reported evaluation
count equals a call counter on the model."""

import numpy as np
import pytest
import tensorflow as tf

from tf_score import noise, sampling
from tf_score.networks import contract

MU, C = 0.7, 1.3
SMAX, SMIN = 10.0, 0.002
SPACE = sampling.SampleSpace((4,), (0.0, 1.0), (MU,))


def _score(x, sigma):
    return -(x - MU) / (C**2 + contract.expand_like(sigma, x) ** 2)


GAUSSIAN = contract.ScoreFunction(_score)


def _error(name, n_sigmas):
    """RMS distance of 256 x 4 samples from the exact ODE solution of the same starts."""
    sig = noise.karras_sigmas(SMAX, SMIN, n_sigmas)
    out = sampling.draw(name, GAUSSIAN, sig, 256, 0, SPACE)
    init_seed, _ = sampling.batch_seeds(tf.constant([0, 0]))
    x0 = sampling.registry.perturbed_start([256, 4], init_seed, tf.constant(sig), SPACE).numpy()
    exact = MU + C / np.sqrt(C**2 + SMAX**2) * (x0 - MU)
    return float(np.sqrt(np.mean((out.samples.numpy() - exact) ** 2)))


@pytest.mark.parametrize(
    "name, order", [("euler", 1), ("heun", 2), ("dpm2", 2), ("dpmpp_2m", 2), ("lms", 3)]
)
def test_deterministic_solvers_converge_at_their_order(name, order):
    """Fitted slope of log error against log N within 0.3 of the order (lms: at least 3)."""
    ns = [10, 20, 40, 80]
    errors = [_error(name, n) for n in ns]
    assert all(np.diff(errors) < 0), errors
    slope = -np.polyfit(np.log(ns), np.log(errors), 1)[0]
    if name == "lms":
        assert slope >= order, (slope, errors)
    else:
        assert abs(slope - order) < 0.3, (slope, errors)


def _ancestral_sd(sig, eta=1.0):
    """The sd Euler ancestral must give on the Gaussian: its variance map, step by step
    (V <- V (1 + (down - s) s / (C^2 + s^2))^2 + up^2, float64)."""
    s = np.append(np.asarray(sig, np.float64), 0.0)
    v = C**2 + s[0] ** 2
    for i in range(len(s) - 1):
        up = min(s[i + 1], eta * np.sqrt(s[i + 1] ** 2 * (s[i] ** 2 - s[i + 1] ** 2) / s[i] ** 2))
        down = np.sqrt(s[i + 1] ** 2 - up**2)
        v = v * (1 + (down - s[i]) * s[i] / (C**2 + s[i] ** 2)) ** 2 + up**2
    return np.sqrt(v)


def test_euler_ancestral_samples_what_its_step_gives_on_the_gaussian():
    """Euler ancestral (eta 1) on 40 karras sigmas: 2048 x 4 samples have mean mu and the sd
    of its own variance map (1.19 at 40 sigmas, 1.27 at 160: first order towards C = 1.3),
    within 4 standard errors; eta outside [0, 1] is refused by the schema."""
    sig = noise.karras_sigmas(SMAX, SMIN, 40)
    x = sampling.draw("euler_ancestral", GAUSSIAN, sig, 2048, 3, SPACE).samples.numpy().ravel()
    n = x.size
    assert abs(x.mean() - MU) < 4 * C / np.sqrt(n), x.mean()
    assert abs(x.std() - _ancestral_sd(sig)) < 4 * C / np.sqrt(2 * n), (x.std(), _ancestral_sd(sig))
    assert _ancestral_sd(noise.karras_sigmas(SMAX, SMIN, 160)) > _ancestral_sd(sig)
    with pytest.raises(sampling.SamplerError, match="eta must be"):
        sampling.draw("euler_ancestral", GAUSSIAN, sig, 8, 3, SPACE, eta=1.5)


class _Counting(contract.ScoreModel):
    """The exact Gaussian score, counting its calls in a variable (in the compiled loop)."""

    def __init__(self):
        self.calls = tf.Variable(0, dtype=tf.int32, trainable=False)

    def score(self, x, sigma):
        self.calls.assign_add(1)
        with tf.control_dependencies([self.calls]):
            return _score(tf.cast(x, tf.float32), contract.per_example_sigma(x, sigma))


@pytest.mark.parametrize("name", sorted(sampling.registry.BUILTINS))
def test_every_solver_reports_the_calls_it_makes(name):
    """num_evals of sampling.draw equals the model's call counter (a continuous model: one
    network evaluation per call), and the registry's evaluations() says the same in advance."""
    model = _Counting()
    sig = noise.karras_sigmas(SMAX, SMIN, 6) if name != "langevin" else np.float32([1.0, 0.5])
    options = {"langevin_steps": 7} if name == "langevin" else {}
    if name == "annealed_langevin":
        options = {"n_steps_each": 3, "step_lr": 1e-4}
    out = sampling.draw(name, model, sig, 16, 0, SPACE, **options)
    counted = int(model.calls.numpy())
    assert int(out.num_evals) == counted, (name, int(out.num_evals), counted)
    entry = sampling.get(name)
    advance = entry.evaluations(len(sig), entry.resolve(options))
    assert advance is None or advance == counted, (name, advance, counted)
