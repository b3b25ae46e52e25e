"""Conditioning wrappers around any registered solver.

Inpainting by replacement (NCSN; Song et al. 2021, appendix I): the pixels where
``mask == 1`` are known, ``x_obs``. Every model call sees them replaced by the observation
perturbed to the sigma of the call, x_obs + sigma z (z drawn once per sigma), so the free
pixels are sampled from p_sigma(free | observed) by whatever solver runs; the chain starts
from the solver's own start in the free pixels and the result keeps x_obs where observed.
"""

from __future__ import annotations

import tensorflow as tf

from tf_score.networks.contract import ScoreModel, expand_like, per_example_sigma
from tf_score.sampling import registry


class Inpainted(ScoreModel):
    """``model`` with the observed pixels of every input replaced by x_obs + sigma z, z from
    ``fold_in(seed, bits of sigma)``: one draw per sigma (the batch shares one sigma)."""

    def __init__(self, model, x_obs, mask, seed):
        self.model = model
        self.levels = getattr(model, "levels", None)
        self.x_obs = tf.convert_to_tensor(x_obs, tf.float32)
        self.mask = tf.cast(tf.broadcast_to(mask, tf.shape(self.x_obs)), tf.float32)
        self.seed = seed

    def clamp(self, x, sigma):
        bits = tf.bitcast(tf.cast(sigma[0], tf.float32), tf.int32)
        z = registry.normal(tf.shape(self.x_obs), registry.fold(self.seed, bits))
        observed = self.x_obs + expand_like(sigma, x) * z
        return self.mask * observed + (1.0 - self.mask) * x

    def score(self, x, sigma):
        x = tf.cast(x, tf.float32)
        sigma = per_example_sigma(x, sigma)
        return tf.cast(self.model.score(self.clamp(x, sigma), sigma), tf.float32)

    def network_calls(self, off_grid: bool = True) -> int:
        return self.model.network_calls(off_grid)


def inpaint(made: registry.Plan, x_obs, mask, seed, space, jit=False, bind=None):
    """Fill ``mask == 0`` of ``x_obs`` [B, ...] by the draw ``made`` (``registry.plan``: the
    solver, its options, the grid, the model), seeded by ``made.seeds(seed)`` as
    ``registry.draw`` is; ``bind``: the labels (and weight) of a ``contract.Guided`` model.
    Returns ``SamplerOutput``."""
    x_obs = tf.convert_to_tensor(x_obs, tf.float32)
    mask = tf.cast(tf.broadcast_to(mask, tf.shape(x_obs)), tf.float32)
    _, chain_seed = made.seeds(seed)
    obs_seed = registry.fold(chain_seed, -1)
    view = None if bind is None else made.model.bind(*bind)
    x0 = mask * x_obs + (1.0 - mask) * made.start(tf.shape(x_obs), seed, space, view)
    model = made.model if bind is None else made.model.bind(*bind)
    wrapped = Inpainted(model, x_obs, mask, obs_seed)
    out = made.run(x0, seed, jit=jit, model=wrapped)
    return registry.SamplerOutput(mask * x_obs + (1.0 - mask) * out.samples, out.num_evals)
