"""A loaded run and sampling from it: what ``api`` returns and every family's evaluation
uses (``Run``, ``generate_from``)."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import NamedTuple

import numpy as np

from tf_score import sampling
from tf_score.config import ConfigError, ExperimentConfig, SamplerConfig
from tf_score.families import score_model
from tf_score.sampling import budget


class RunError(RuntimeError):
    """A workdir cannot be used as asked (no config, no checkpoint, other settings)."""


@dataclasses.dataclass
class Run:
    """A trained workdir: its config, EMA models and the checkpoint step they come from."""

    workdir: str
    config: ExperimentConfig
    models: dict
    step: int
    checkpoint: str | None = None

    @property
    def family(self) -> str:
        return self.config.network.model

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.config.data.data_shape)

    @property
    def sigmas(self) -> np.ndarray:
        return self.config.noise.sigmas()

    @functools.cached_property
    def model(self):
        """The EMA score model under the model contract (``score(x, sigma)``, ``denoise(x,
        sigma)``; score family only), made once: a new one would retrace the solvers."""

        if self.family != "score":
            raise RunError(f"{self.workdir} holds a {self.family} run, not a score model")
        return score_model.score_model(self.config, self.models["score"])

    @property
    def space(self):
        """The samples' shape, the data's range and mean (``sampling.SampleSpace``)."""

        return score_model.sample_space(self.config, self.data_shape)


class Generated(NamedTuple):
    samples: np.ndarray
    #: network evaluations per sample (mean over batches: the adaptive ODE's count varies)
    num_evals: int
    seconds: float
    #: chain at every level boundary of the first batch (annealed Langevin), or None
    snapshots: np.ndarray | None = None


def sampler_config(base: SamplerConfig, sampler: str | None = None, **options) -> SamplerConfig:
    """``base`` with another sampler and/or options (validated: ``ConfigError``)."""
    return base.replace(**({"sampler": sampler} if sampler else {}), **options)


class NonFiniteSamplesError(RunError):
    """A sampler produced NaN or inf (a step size too large for the model, usually)."""


def _check_finite(x, name: str, options: dict, b: int) -> None:
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.isfinite(x).reshape(len(x), -1).all(1)))
        raise NonFiniteSamplesError(
            f"{name} diverged: {bad} of {len(x)} samples of batch {b} are not finite with "
            f"{options} (a smaller step size?); nothing is kept"
        )


def generate_from(
    model, sigmas, space, num_samples: int, seed: int, sampler: SamplerConfig,
    batch_size: int = 0, jit: bool = False, callback=None, progress: bool = False,
    max_evaluations: int = 0,
) -> Generated:  # fmt: skip
    """``num_samples`` from a contract ``model`` with ``sampler`` on the grid ``sigmas`` in
    batches of ``batch_size`` (0: one batch); batch b is seeded (seed, b)
    (``sampling.batch_seeds``); ``callback(i, sigma, x)`` sees the first batch's steps.
    Refused before any work (``sampling.budget``) if it would not fit in memory, or its work
    exceeds ``max_evaluations`` (0: no cap)."""
    import tensorflow as tf
    from tqdm.auto import tqdm

    if num_samples < 1 or batch_size < 0:
        raise ConfigError(f"num_samples must be >= 1 and batch_size >= 0, got {num_samples}")
    bs, options = batch_size or num_samples, sampler.options()
    cost = budget.check_draw(sampler.sampler, model, sigmas, space, options, num_samples,
                             batch_size, max_evaluations)  # fmt: skip
    xs, evals, t0 = [], 0.0, time.time()
    starts = range(0, num_samples, bs)
    bar = tqdm(starts, desc=sampler.sampler, unit="batch", disable=not progress or len(starts) < 2)
    for b, i in enumerate(bar):
        out = sampling.draw(
            sampler.sampler, model, sigmas, min(bs, num_samples - i),
            tf.constant([seed, b], tf.int32), space, callback=callback if b == 0 else None,
            jit=jit, **options,
        )  # fmt: skip
        xs.append(out.samples.numpy())
        _check_finite(xs[-1], sampler.sampler, options, b)
        evals += float(out.num_evals) * len(xs[-1])
        if max_evaluations:  # an adaptive solver's count is known only now
            done = i + len(xs[-1])
            budget.check_work(done, math.ceil(evals / done), cost, max_evaluations)
    return Generated(np.concatenate(xs), round(evals / num_samples), time.time() - t0)


def generate(
    run: Run, num_samples: int, seed: int = 0, sampler: str | None = None, sigmas=None,
    batch_size: int = 0, jit: bool = False, snapshots: bool = False,
    progress: bool = False, max_evaluations: int = 0, **options,
) -> Generated:  # fmt: skip
    """Samples from a loaded score run with any registered sampler (default: the run's own,
    with its options; ``options`` override them, e.g. ``n_steps_each=10``) on the run's grid
    (or ``sigmas``). Images are in [0, 1] before clipping; the same seed gives the samples of
    ``run_sample.py``, the exported ``serving_default`` (served seed (seed, 0), one batch) and
    TensorBoard. ``snapshots``: the first batch after every solver step (each level of
    annealed Langevin), through the solver callback. ``max_evaluations``: the work cap of
    ``generate_from`` (``sampling.budget``; 0: none)."""

    cfg = sampler_config(run.config.sampler, sampler, **options)
    frames = []
    callback = sampling.py_callback(lambda i, s, x: frames.append(x)) if snapshots else None
    out = generate_from(
        run.model, run.sigmas if sigmas is None else sigmas, run.space, num_samples, seed,
        cfg, batch_size=batch_size, jit=jit, callback=callback,
        progress=progress, max_evaluations=max_evaluations,
    )  # fmt: skip
    if not snapshots:
        return out
    x0 = _start_of_first_batch(run, cfg, min(batch_size or num_samples, num_samples), seed)
    return out._replace(snapshots=np.stack([x0, *frames]))


def _start_of_first_batch(run: Run, cfg: SamplerConfig, n: int, seed: int) -> np.ndarray:
    """The first batch's start x0, as the solver drew it (the snapshots' first frame)."""
    import tensorflow as tf

    init_seed, _ = sampling.batch_seeds(tf.constant([seed, 0], tf.int32))
    start = sampling.registry.STARTS[sampling.get(cfg.sampler).start]
    return start([n, *run.data_shape], init_seed, tf.constant(run.sigmas), run.space).numpy()


def inpaint(run: Run, x_obs, mask, seed: int = 0, sampler: str | None = None,
            jit: bool = False, max_evaluations: int = 0, **options):  # fmt: skip
    """Fill ``mask == 0`` of images ``x_obs`` in [0, 1] with any registered sampler (default:
    the run's, with its options unless overridden). Refused before any work, as ``generate``
    is, if it would not fit in memory or its work exceeds ``max_evaluations`` (0: no cap).
    Returns ``SamplerOutput``."""
    import tensorflow as tf

    cfg = sampler_config(run.config.sampler, sampler, **options)
    budget.check_draw(cfg.sampler, run.model, run.sigmas, run.space, cfg.options(),
                      len(x_obs), 0, max_evaluations)  # fmt: skip
    return sampling.inpaint(
        cfg.sampler, run.model, x_obs, mask, run.sigmas, tf.constant([seed, 1], tf.int32),
        run.space, jit=jit, **cfg.options(),
    )  # fmt: skip
