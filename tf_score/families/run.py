"""A loaded run and sampling from it: what ``api`` returns and every family's evaluation
uses (``Run``, ``generate_from``)."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import weakref
from typing import NamedTuple

import numpy as np

from tf_score import sampling
from tf_score.config import (
    ConfigError,
    ExperimentConfig,
    SamplerConfig,
    check_count,
    check_guidance,
    check_labels,
    check_seed,
)
from tf_score.families import score_model
from tf_score.networks import contract
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
    #: a model shipped inside the package (``families.pretrained``): nothing is written into
    #: its workdir (outputs and caches go elsewhere)
    read_only: bool = False

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
    """``base`` with another sampler and/or options, which must be that sampler's
    (SamplerError naming the sampler or option otherwise)."""
    cfg = base.replace(**({"sampler": sampler} if sampler else {}), **options)
    sampling.get(cfg.sampler).resolve(options)
    return cfg


class NonFiniteSamplesError(RunError):
    """A sampler produced NaN or inf (a step size too large for the model, usually)."""


def _check_finite(x, name: str, options: dict, b: int) -> None:
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.isfinite(x).reshape(len(x), -1).all(1)))
        raise NonFiniteSamplesError(
            f"{name} diverged: {bad} of {len(x)} samples of batch {b} are not finite with "
            f"{options} (a smaller step size?); nothing is kept"
        )


@dataclasses.dataclass(frozen=True)
class Guidance:
    """What a generation is conditioned on and how it is guided (``contract.Guided``):
    ``labels`` (one class for all samples, one per sample, or None: unconditional), the
    weight ``guidance``, the ``guide`` (None: classifier-free; a weaker score ``Run`` or
    contract model: autoguidance; a noise-conditional classifier ``Run`` or model:
    classifier guidance) and the sigma ``interval`` (lo, hi) where guidance applies."""

    labels: object = None
    guidance: float = 1.0
    guide: object = None
    interval: tuple | None = None

    def labels_for(self, num_samples: int, model) -> np.ndarray | None:
        """int32 labels [num_samples] for ``model`` (or for its guiding classifier's classes),
        ConfigError naming labels if they do not fit."""
        if self.labels is None:
            return None
        guide = self.guide_model()
        owner = guide if contract.is_classifier(guide) else model
        num_classes = int(getattr(owner, "num_classes", 0) or 0)
        arr = check_labels(np.atleast_1d(np.asarray(self.labels)), num_classes)
        if arr.ndim != 1 or len(arr) not in (1, num_samples):
            got = arr.shape[0] if arr.ndim else 0
            raise ConfigError(f"labels: give one class for all samples or one per sample "
                              f"({num_samples}), got {got}")  # fmt: skip
        return np.broadcast_to(arr, [num_samples]).copy()

    def recipe(self, model):
        """The unbound ``contract.Guided`` recipe on ``model``, or ``model`` itself when
        nothing conditions it (ConfigError naming what does not fit)."""
        guide = self.guide_model()
        check_guidance(self.guidance, tuple(self.interval or ()))
        if self.labels is None and guide is None:
            if self.guidance != 1.0:
                raise ConfigError(f"guidance={self.guidance} needs labels (classifier-free "
                                  "guidance) or a guide model (autoguidance)")  # fmt: skip
            return model
        key = (self.labels is not None, float(self.guidance), id(guide),
               tuple(self.interval or ()))  # fmt: skip
        made = _RECIPES.setdefault(model, {})
        if key not in made:  # one recipe per model and guidance: a new one retraces the solver
            try:
                made[key] = contract.guide(model, key[0], self.guidance, guide,
                                           self.interval or None)  # fmt: skip
            except ValueError as e:
                raise ConfigError(str(e)) from e
        return made[key]

    def guide_model(self):
        """The guide under the contract: a score run's model, a classifier run's classifier
        (ConfigError if it is not noise-conditional), or the ``guide`` given."""
        if not isinstance(self.guide, Run):
            return self.guide
        if self.guide.family != "classifier":
            return self.guide.model
        found = self.guide.models["classifier"]
        if not contract.is_classifier(found):
            raise ConfigError(f"guide_workdir: {self.guide.workdir} holds a classifier of clean "
                              "images (network=conv); classifier guidance needs a noise-"
                              "conditional one (network=noisy_conv)")  # fmt: skip
        return found


#: the recipes made per model (a recipe holds its guide, so an id in a key stays its own)
_RECIPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class Request:
    """A generation checked before any work (``request``); ``generate_request`` runs it."""

    plan: sampling.Plan
    space: sampling.SampleSpace
    num_samples: int
    seed: int
    batch_size: int
    max_evaluations: int
    cost: budget.Cost
    #: int32 [num_samples], or None (unconditional)
    labels: np.ndarray | None = None


def request(
    model, sigmas, space, num_samples: int, seed: int, sampler: SamplerConfig,
    batch_size: int = 0, max_evaluations: int = 0, guidance: Guidance | None = None,
    seeding: str = "per_sample",
) -> Request:  # fmt: skip
    """Every check of a generation, once, before any work: the counts and the seed (ConfigError
    naming the argument), the labels and guidance, the sampler and its options
    (SamplerError), memory and the work cap ``max_evaluations`` (0: none;
    ``sampling.budget``: BudgetError), counting what the guided model really evaluates."""
    num_samples = check_count(num_samples, "num_samples", 1)
    batch_size = check_count(batch_size, "batch_size", 0)
    seed = check_seed(seed)
    max_evaluations = check_count(max_evaluations, "max_evaluations", 0, 2**63 - 1)
    guidance = guidance or Guidance()
    labels = guidance.labels_for(num_samples, model)
    made = sampling.plan(sampler.sampler, guidance.recipe(model), sigmas,
                         sampling.options_of(sampler), seeding)  # fmt: skip
    cost = budget.check_draw(made, space, num_samples, batch_size, max_evaluations)
    return Request(made, space, num_samples, seed, batch_size, max_evaluations, cost, labels)


def generate_request(req: Request, jit: bool = False, callback=None, progress: bool = False,
                     snapshots: bool = False) -> Generated:  # fmt: skip
    """The samples of a checked request in batches of ``req.batch_size`` (0: one batch); the
    batch from sample i is seeded (seed, i) per sample, or (seed, b) for batch b
    (``sampling.registry.SEEDINGS``); ``callback(i, sigma, x)`` sees the first batch's
    steps, and with ``snapshots`` they are kept: the first batch's start and its chain after
    every solver step. An adaptive solver's work is checked against the cap as it is known."""
    import tensorflow as tf
    from tqdm.auto import tqdm

    made, n = req.plan, req.num_samples
    bs, name, frames = req.batch_size or n, made.entry.name, []
    if snapshots:
        callback = sampling.py_callback(lambda i, s, x: frames.append(x))
    xs, evals, t0 = [], 0.0, time.time()
    starts = range(0, n, bs)
    bar = tqdm(starts, desc=name, unit="batch", disable=not progress or len(starts) < 2)
    for b, i in enumerate(bar):
        seed = tf.constant([req.seed, i if made.seeding == "per_sample" else b], tf.int32)
        count = min(bs, n - i)
        bind = None if req.labels is None else (tf.constant(req.labels[i : i + count]), None)
        shape = sampling.registry.batch_shape(count, req.space)
        x0 = made.start(shape, seed, req.space, None if bind is None else made.model.bind(*bind))
        if snapshots and b == 0:
            frames.append(x0.numpy())  # the first frame: the start, before the callback's
        out = made.run(x0, seed, callback=callback if b == 0 else None, jit=jit, bind=bind)
        xs.append(out.samples.numpy())
        _check_finite(xs[-1], name, made.options, b)
        evals += float(out.num_evals) * len(xs[-1])
        if req.max_evaluations:  # an adaptive solver's work is known only now
            done = i + len(xs[-1])
            budget.check_work(done, math.ceil(evals / done), req.cost, req.max_evaluations)
    kept = np.stack(frames) if snapshots else None
    return Generated(np.concatenate(xs), round(evals / n), time.time() - t0, kept)


def generate_from(
    model, sigmas, space, num_samples: int, seed: int, sampler: SamplerConfig,
    batch_size: int = 0, jit: bool = False, callback=None, progress: bool = False,
    max_evaluations: int = 0, guidance: Guidance | None = None, seeding: str = "per_sample",
) -> Generated:  # fmt: skip
    """``num_samples`` from a contract ``model`` with ``sampler`` on the grid ``sigmas``
    (``request``, then ``generate_request``): refused before any work if it would not fit in
    memory, or its work exceeds ``max_evaluations`` (0: no cap)."""
    req = request(model, sigmas, space, num_samples, seed, sampler, batch_size, max_evaluations,
                  guidance, seeding)  # fmt: skip
    return generate_request(req, jit=jit, callback=callback, progress=progress)


def generate(
    run: Run, num_samples: int, seed: int = 0, sampler: str | None = None, sigmas=None,
    batch_size: int = 0, jit: bool = False, snapshots: bool = False,
    progress: bool = False, max_evaluations: int = 0, labels=None, guidance: float = 1.0,
    guide=None, guidance_interval=None, seeding: str = "per_sample", **options,
) -> Generated:  # fmt: skip
    """Samples from a loaded score run with any registered sampler (default: the run's own,
    with its options; ``options`` override them, e.g. ``n_steps_each=10``) on the run's grid
    (or ``sigmas``). Images are in [0, 1] before clipping.

    A class-conditional run draws the classes ``labels`` (one for all samples or one per
    sample; None: unconditional) with classifier-free ``guidance`` w (1: none); ``guide``
    (a weaker ``Run`` of the same data, or a contract model) guides by autoguidance
    instead, and a noise-conditional classifier's run by classifier guidance (an
    unconditional run then takes labels too); ``guidance_interval`` (lo, hi): only there
    (``Guidance``).

    ``seeding``: per_sample (sample i of seed s is the same at any ``batch_size``, in
    ``run_sample.py``, TensorBoard and a served call seeded (s, i)) or batch (batch b seeded
    (s, b), as runs and exports made before per-sample seeding drew). ``snapshots``: the
    first batch after every solver step, through the solver callback. ``max_evaluations``:
    the work cap of ``request`` (``sampling.budget``; 0: none)."""
    cfg = sampler_config(run.config.sampler, sampler, **options)
    how = Guidance(labels, guidance, guide, guidance_interval)
    req = request(run.model, run.sigmas if sigmas is None else sigmas, run.space, num_samples,
                  seed, cfg, batch_size, max_evaluations, how, seeding)  # fmt: skip
    return generate_request(req, jit=jit, progress=progress, snapshots=snapshots)


def inpaint(run: Run, x_obs, mask, seed: int = 0, sampler: str | None = None,
            jit: bool = False, max_evaluations: int = 0, labels=None, guidance: float = 1.0,
            seeding: str = "per_sample", **options):  # fmt: skip
    """Fill ``mask == 0`` of images ``x_obs`` in [0, 1] with any registered sampler (default:
    the run's, with its options unless overridden), conditioned on ``labels`` and guided as
    ``generate`` is. Refused before any work, as ``generate`` is, if it would not fit in
    memory or its work exceeds ``max_evaluations`` (0: no cap). Returns ``SamplerOutput``."""
    import tensorflow as tf

    cfg = sampler_config(run.config.sampler, sampler, **options)
    req = request(run.model, run.sigmas, run.space, len(x_obs), seed, cfg, 0, max_evaluations,
                  Guidance(labels, guidance), seeding)  # fmt: skip
    bind = None if req.labels is None else (tf.constant(req.labels), None)
    first = 0 if seeding == "per_sample" else 1  # the batch convention's inpainting stream
    return sampling.inpaint(req.plan, x_obs, mask, tf.constant([req.seed, first], tf.int32),
                            run.space, jit=jit, bind=bind)  # fmt: skip
