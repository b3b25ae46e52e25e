"""A solver plugin as a user writes one: one function on the registry's signature and its
registry entry, registered when the module is imported (``run_sample.py --plugins=THIS_FILE``).

Euler's method on the probability-flow ODE dx/dsigma = -sigma s(x, sigma) with a step-size
multiplier, ``euler_scale`` (1: plain Euler): N network evaluations."""

import tensorflow as tf

from tf_score import sampling
from tf_score.sampling import solvers

EULER_SCALE = sampling.Option(
    "euler_scale", float, 1.0, "test_euler: step-size multiplier", 0.0, 2.0
)


def euler(model, x, sigmas, *, seed, callback=None, euler_scale=1.0):
    """x <- x + c (sigma_(i+1) - sigma_i) (-sigma_i s(x, sigma_i)), sigma_(N+1) = 0."""
    del seed
    x, sigmas = tf.convert_to_tensor(x, tf.float32), solvers.as_grid(sigmas)
    nxt, c = solvers.next_sigmas(sigmas), tf.cast(euler_scale, tf.float32)

    def body(i, x):
        d = -sigmas[i] * solvers.score_at(model, x, sigmas[i])
        x = x + c * (nxt[i] - sigmas[i]) * d
        return i + 1, solvers.after_step(callback, i, sigmas[i], x)

    _, x = tf.while_loop(lambda i, _: i < tf.shape(sigmas)[0], body, (tf.constant(0), x))
    return sampling.SamplerOutput(x, tf.shape(sigmas)[0])


ENTRY = sampling.register(
    sampling.Sampler(
        "test_euler", euler, (EULER_SCALE,), "perturbed", lambda n, o: n, False,
        "Euler on the probability-flow ODE: N evaluations",
    ),
    replace=True,
)  # fmt: skip


def half_eta_euler(model, x, sigmas, *, seed, callback=None, eta=2.0):
    """``euler`` with the step multiplied by eta / 2: an option named like the ancestral
    solvers' ``eta`` (in [0, 1], default 1), with its own range [0, 3] and default 2."""
    return euler(model, x, sigmas, seed=seed, callback=callback, euler_scale=eta / 2.0)


ETA_ENTRY = sampling.register(
    sampling.Sampler(
        "test_eta_euler", half_eta_euler,
        (sampling.Option("eta", float, 2.0, "test_eta_euler: twice the step multiplier", 0.0,
                         3.0, True),),
        "perturbed", lambda n, o: n, False, "Euler with a step multiplier named eta",
    ),
    replace=True,
)  # fmt: skip
