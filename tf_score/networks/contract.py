"""The one model contract: every score model answers, for data-unit x [B, ...] and a float
sigma per example [B] (a scalar is broadcast),

    denoise(x, sigma) = E[x_0 | x_sigma = x]                       (the denoiser D)
    score(x, sigma)   = grad_x log p_sigma(x) = (D(x; sigma) - x) / sigma^2   (Tweedie)

Continuous-sigma denoisers (``preconditioning.Denoiser``) implement it directly. A network
conditioned on the discrete levels of its training schedule (NCSN: ``net(x, levels)``) is
wrapped by ``LevelScoreModel``, which maps sigma onto those levels, the way k-diffusion's
``DiscreteSchedule`` wraps discrete-time models; so every solver runs on every model.
``ScoreFunction`` wraps a plain ``fn(x, sigma)`` (exact scores of known distributions).

``network_calls(off_grid)`` is the cost of one contract call in network evaluations: 1 for a
continuous model; for a level-conditioned one 1 at its levels and 2 between them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf


def per_example_sigma(x, sigma) -> tf.Tensor:
    """sigma as float32 [B] for x [B, ...] (a scalar is broadcast)."""
    return tf.broadcast_to(tf.cast(sigma, tf.float32), tf.shape(x)[:1])


def expand_like(sigma, x) -> tf.Tensor:
    """sigma [B] reshaped to broadcast against x [B, ...]."""
    return tf.reshape(sigma, [-1] + [1] * (len(x.shape) - 1))


class ScoreModel:
    """Base of the contract: subclasses define ``score`` or ``denoise`` (each gives the other)."""

    #: the discrete levels the model is defined on (None: continuous in sigma)
    levels = None

    def score(self, x, sigma) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        sigma = per_example_sigma(x, sigma)
        return (self.denoise(x, sigma) - x) / expand_like(tf.square(sigma), x)

    def denoise(self, x, sigma) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        sigma = per_example_sigma(x, sigma)
        return x + expand_like(tf.square(sigma), x) * self.score(x, sigma)

    def network_calls(self, off_grid: bool = True) -> int:
        del off_grid
        return 1


class ScoreFunction(ScoreModel):
    """The contract around a callable ``score_fn(x, sigma [B]) -> s`` (an exact score)."""

    def __init__(self, score_fn: Callable, name: str = "score_function"):
        self._fn = score_fn
        self.name = name

    def score(self, x, sigma) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        return tf.cast(self._fn(x, per_example_sigma(x, sigma)), tf.float32)


class LevelScoreModel(ScoreModel):
    """A score network conditioned on level indices, ``network(x, levels int32 [B])``, trained
    on the decreasing ``levels`` sigma_1 > ... > sigma_L, as a model of any sigma: at one of
    its levels the network's own output (1 evaluation); between two levels the scores of both,
    linear in log sigma (2 evaluations); outside [sigma_L, sigma_1] clamped to the end level
    (adaptive solvers probe past the end, even sigma <= 0, where log sigma is NaN)."""

    def __init__(self, network: Callable, levels):
        self.network = network
        self.levels = np.asarray(levels, np.float32)
        self._log_levels = tf.math.log(tf.constant(self.levels))

    def _at(self, x, index):
        return tf.cast(self.network(x, index), tf.float32)

    def _log_sigma(self, sigma):
        return tf.math.log(tf.clip_by_value(sigma, self.levels[-1], self.levels[0]))

    def _between(self, x, t):
        """Scores linear in log sigma between the two levels around t = log sigma [B]."""
        log_s, last = self._log_levels, len(self.levels) - 1
        # i with log_s[i] >= t >= log_s[i + 1]
        above = tf.reduce_sum(tf.cast(log_s[None, :] > t[:, None], tf.int32), axis=-1)
        i = tf.clip_by_value(above - 1, 0, last - 1)
        log_i, log_j = tf.gather(log_s, i), tf.gather(log_s, i + 1)
        w = expand_like(tf.math.divide_no_nan(log_i - t, log_i - log_j), x)
        return (1.0 - w) * self._at(x, i) + w * self._at(x, i + 1)

    def _nearest(self, sigma):
        """(index of the level equal to each sigma, whether every sigma is one)."""
        at_level = tf.equal(sigma[:, None], tf.constant(self.levels)[None, :])
        nearest = tf.argmax(tf.cast(at_level, tf.int32), axis=1, output_type=tf.int32)
        return nearest, tf.reduce_all(tf.reduce_any(at_level, axis=1))

    def score(self, x, sigma) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        sigma = per_example_sigma(x, sigma)
        if len(self.levels) == 1:
            return self._at(x, tf.zeros(tf.shape(x)[:1], tf.int32))
        nearest, on_grid = self._nearest(sigma)
        # one sigma for the batch: the log of the scalar, broadcast (a vector's log may differ
        # from the scalar's in the last bit, and solvers share one sigma)
        shared = tf.reduce_all(tf.equal(sigma, sigma[0]))
        t = tf.where(shared, tf.fill(tf.shape(sigma), self._log_sigma(sigma[0])),
                     self._log_sigma(sigma))  # fmt: skip
        # exactly at a level: one call (near one, the interpolation is as smooth as elsewhere)
        return tf.cond(on_grid, lambda: self._at(x, nearest), lambda: self._between(x, t))

    def at_levels(self) -> ScoreModel:
        """This model for solvers that call it only at its levels (``registry.plan`` checks
        that statically): the network's call alone, no branch to interpolate."""
        if not hasattr(self, "_at_levels"):
            self._at_levels = _AtLevels(self)
        return self._at_levels

    def network_calls(self, off_grid: bool = True) -> int:
        return 2 if off_grid and len(self.levels) > 1 else 1


class _AtLevels(ScoreModel):
    """A ``LevelScoreModel`` called only at its levels (see ``LevelScoreModel.at_levels``)."""

    def __init__(self, model: LevelScoreModel):
        self.model, self.levels = model, model.levels

    def score(self, x, sigma) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        nearest, _ = self.model._nearest(per_example_sigma(x, sigma))
        return self.model._at(x, nearest)

    def network_calls(self, off_grid: bool = True) -> int:
        return 1


def grid_on_levels(model, sigmas) -> bool:
    """Whether every sigma of the grid is one of the model's levels (continuous: always)."""
    levels = getattr(model, "levels", None)
    if levels is None:
        return True
    sig = np.asarray(sigmas, np.float32)
    return bool(np.all(np.isin(sig, np.asarray(levels, np.float32))))
