"""The solver registry: a ``Sampler`` entry is the whole solver.

Every solver has one signature,

    fn(model, x, sigmas, *, seed, callback=None, **options) -> SamplerOutput

with ``model`` answering ``score(x, sigma)`` / ``denoise(x, sigma)`` (``networks.contract``),
``x`` the start drawn from the entry's ``start`` distribution, ``sigmas`` the decreasing grid
sigma_1 > ... > sigma_N (float32 [N]) and ``seed`` a stateless seed [2]. ``callback(i, sigma,
x)``, if given, runs inside the compiled loop after step i (``py_callback`` reaches Python).

The entry also holds the option schema (``Option``: defaults, types, ranges; the same schema
validates flags, API calls and served requests), the evaluation count as a function of the
grid and the options, whether the calls stay on the grid's sigmas, and whether the solver is
stochastic. ``register`` adds one; nothing else needs to change for it to be usable through
the API, ``run_sample.py`` (``--sampler``, ``--sampler_options``) and an export.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tf_score.networks.contract import grid_on_levels


class SamplerError(ValueError):
    """A sampler or one of its options is invalid (raised before any sampling)."""


class SamplerOutput(NamedTuple):
    """What every solver returns."""

    samples: tf.Tensor
    #: network evaluations per sample (int32 scalar)
    num_evals: tf.Tensor


@dataclasses.dataclass(frozen=True)
class Option:
    """One solver option: its type, default and allowed values. Names are unique across
    solvers (a flag, a config field and a served input each); solvers share an option by
    listing the same ``Option``."""

    name: str
    kind: type
    default: object
    help: str
    low: float | None = None
    high: float | None = None
    #: True: low itself is allowed
    low_closed: bool = False
    choices: tuple[str, ...] | None = None
    #: a further rule: (predicate of the value, what it allows in words)
    rule: tuple[Callable, str] | None = None
    #: a Python value when the solver is traced (it shapes the graph): fixed in an export
    static: bool = False

    @property
    def servable(self) -> bool:
        """Float and int options that do not shape the graph are inputs of an exported
        solver; the others are fixed when it is exported."""
        return self.kind in (float, int) and not self.static

    def allowed(self) -> str:
        if self.rule:
            return self.rule[1]
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is bool:
            return "true or false"
        parts = [f"{'>=' if self.low_closed else '>'} {self.low:g}"] if self.low is not None else []
        parts += [f"<= {self.high:g}"] if self.high is not None else []
        word = "an integer" if self.kind is int else "a finite number"
        return word + (" " + " and ".join(parts) if parts else "")

    def check(self, value):
        """``value`` converted to ``kind``; SamplerError naming the option otherwise."""
        bad = SamplerError(f"sampler option {self.name} must be {self.allowed()}, got {value!r}")
        if self.kind is bool:
            if not isinstance(value, bool | np.bool_):
                raise bad
            return bool(value)
        if self.kind is str:
            if value not in (self.choices or ()):
                raise bad
            return str(value)
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise bad
        if self.kind is int and float(value) != int(value):
            raise bad
        v = self.kind(value)
        if not math.isfinite(v) or not self._in_range(v) or (self.rule and not self.rule[0](v)):
            raise bad
        return v

    def _in_range(self, v) -> bool:
        if self.low is not None and (v < self.low or (v == self.low and not self.low_closed)):
            return False
        return self.high is None or v <= self.high

    def graph_checks(self, value) -> list:
        """In-graph assertions of a served value (a float or int tensor)."""
        msg = f"{self.name} must be {self.allowed()}"
        checks = []
        if self.kind is float:
            checks.append(tf.debugging.assert_all_finite(value, message=msg))
        if self.low is not None:
            low = tf.cast(self.low, value.dtype)
            op = (
                tf.debugging.assert_greater_equal
                if self.low_closed
                else tf.debugging.assert_greater
            )
            checks.append(op(value, low, message=msg))
        if self.high is not None:
            checks.append(
                tf.debugging.assert_less_equal(value, tf.cast(self.high, value.dtype), message=msg)
            )
        return checks


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A registered solver (see the module docstring)."""

    name: str
    fn: Callable[..., SamplerOutput]
    options: tuple[Option, ...]
    #: "uniform" (U on the data range, Langevin) or "perturbed" (data mean + sigma_1 z)
    start: str
    #: (number of grid sigmas N, options) -> model calls per sample (None: adaptive)
    evaluations: Callable[[int, dict], int | None]
    stochastic: bool
    help: str
    #: options -> whether every model call is at a sigma of the grid (False: between levels
    #: of a level-conditioned model, which costs it 2 network evaluations per call)
    on_grid: Callable[[dict], bool] = lambda options: True
    #: (grid as numpy, options) -> raises SamplerError when the options do not fit the grid
    validate: Callable | None = None

    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def resolve(self, options: dict | None = None) -> dict:
        """Every option of this solver: the defaults, updated by ``options`` (validated;
        tensors are left for ``Option.graph_checks``)."""
        options = dict(options or {})
        unknown = set(options) - set(self.option_names())
        if unknown:
            raise SamplerError(
                f"sampler {self.name!r} takes options {', '.join(self.option_names()) or 'none'}"
                f"; not {', '.join(sorted(unknown))}"
            )
        out = {}
        for o in self.options:
            value = options.get(o.name, o.default)
            out[o.name] = value if tf.is_tensor(value) else o.check(value)
        return out


SAMPLERS: dict[str, Sampler] = {}


def register(entry: Sampler, replace: bool = False) -> Sampler:
    """Add ``entry`` to the registry (``replace``: over one of the same name). Its option names
    must be new or the very options other solvers list."""
    if entry.name in SAMPLERS and not replace:
        raise SamplerError(f"a sampler named {entry.name!r} is registered already")
    if entry.start not in STARTS:
        raise SamplerError(f"start must be one of {', '.join(STARTS)}, got {entry.start!r}")
    known = all_options()
    for o in entry.options:
        if o.name in known and known[o.name] != o:
            raise SamplerError(f"option {o.name!r} is another solver's, with other settings")
    SAMPLERS[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    SAMPLERS.pop(name, None)


def get(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise SamplerError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def all_options(builtin_only: bool = False) -> dict[str, Option]:
    """Every registered option by name (``builtin_only``: of the library's own solvers)."""
    entries = [s for s in SAMPLERS.values() if s.name in BUILTINS or not builtin_only]
    return {o.name: o for s in entries for o in s.options}


#: names of the library's own solvers (``solvers``); others come from plugins
BUILTINS: set[str] = set()


# --- starts and seeds -------------------------------------------------------------------------


class SampleSpace(NamedTuple):
    """Where samples live: their shape (without the batch), the data's range (Langevin chains
    start uniform on it) and mean per channel (the deterministic solvers start at mean +
    sigma_1 z; None: the middle of the range is not used, a uniform draw is)."""

    shape: tuple[int, ...]
    data_range: tuple[float, float] = (0.0, 1.0)
    data_mean: tuple[float, ...] | None = None


def uniform_start(shape, seed, sigmas, space: SampleSpace) -> tf.Tensor:
    """x0 ~ U[low, high]^shape on the data's range (NCSN starts from U[0, 1] images)."""
    del sigmas
    low, high = space.data_range
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high, alg="philox")


def perturbed_start(shape, seed, sigmas, space: SampleSpace) -> tf.Tensor:
    """x0 = u + sigma_1 z: "like the data, perturbed to the first level". u is the data's mean
    when known, else uniform on the range. The deterministic solvers carry x0 to the data
    without mixing, so its centre matters: a start 3 units off the two-mode toy's mean moves
    its mode weight from 0.80 to 0.79 at sigma_1 = 80 and to 0.75 at 20, even with the exact
    score. The same z for either u."""
    s_u, s_z = tf.unstack(tf.random.experimental.stateless_split(seed, 2, alg="philox"))
    if space.data_mean is None:
        u = uniform_start(shape, s_u, sigmas, space)
    else:
        u = tf.constant(np.asarray(space.data_mean, np.float32))
    sigma_1 = tf.cast(sigmas, tf.float32)[0]
    return u + sigma_1 * tf.random.stateless_normal(shape, s_z, alg="philox")


STARTS = {"uniform": uniform_start, "perturbed": perturbed_start}


def batch_seeds(seed, batch_index=0):
    """The seeding convention of every generation path (library, CLI, export, TensorBoard):
    batch b of a run seeded s uses the pair (s, b); its start x0 is drawn from
    fold_in((s, b), 0) and its chain from fold_in((s, b), 1). A served ``seed`` input is the
    pair itself, so serving (s, 0) equals the first batch of seed s."""
    pair = tf.cast(seed, tf.int32)
    if pair.shape.rank == 0:
        pair = tf.stack([pair, tf.cast(batch_index, tf.int32)])
    fold = tf.random.experimental.stateless_fold_in
    return fold(pair, 0, alg="philox"), fold(pair, 1, alg="philox")


def model_for(entry: Sampler, model, sigmas, options: dict):
    """``model``, or its at-levels view when every call of the solver is at one of a
    level-conditioned model's levels (one network trace instead of a branch of three)."""
    if hasattr(model, "at_levels") and grid_on_levels(model, sigmas) and entry.on_grid(options):
        return model.at_levels()
    return model


def network_evaluations(entry: Sampler, model, sigmas, options: dict, calls) -> tf.Tensor:
    """Network evaluations per sample of ``calls`` model calls: a level-conditioned model
    costs 2 per call between its levels (``contract.LevelScoreModel``)."""
    on_grid = grid_on_levels(model, sigmas) and entry.on_grid(options)
    return tf.cast(calls, tf.int32) * int(model.network_calls(off_grid=not on_grid))


_COMPILED: dict = {}


def _compiled(entry: Sampler, jit: bool):
    """The solver as one ``tf.function`` (per solver function and compile mode)."""
    key = (entry.fn, bool(jit))
    if key not in _COMPILED:
        _COMPILED[key] = tf.function(entry.fn, jit_compile=bool(jit), reduce_retracing=True)
    return _COMPILED[key]


def _as_tensors(entry: Sampler, options: dict) -> dict:
    """Servable options as tensors, so that new values do not retrace the solver."""
    dtypes = {float: tf.float32, int: tf.int32}
    return {
        o.name: tf.cast(options[o.name], dtypes[o.kind]) if o.servable else options[o.name]
        for o in entry.options
    }


def draw(
    name: str,
    model,
    sigmas,
    num_samples,
    seed,
    space: SampleSpace,
    callback=None,
    jit: bool = False,
    **options,
) -> SamplerOutput:
    """One batch of ``num_samples`` from solver ``name`` on the grid ``sigmas``: started by
    its entry's start, seeded by ``batch_seeds(seed)`` (an int is batch 0); graph-compatible
    (the export calls it). ``num_evals`` counts network evaluations per sample."""
    entry = get(name)
    resolved = entry.resolve(options)
    grid = np.asarray(tf.get_static_value(tf.convert_to_tensor(sigmas)), np.float32)
    if entry.validate is not None:
        entry.validate(grid, resolved)
    sigmas = tf.constant(grid)
    init_seed, chain_seed = batch_seeds(seed)
    if isinstance(num_samples, int):
        shape = [num_samples, *space.shape]
    else:
        shape = tf.concat([tf.reshape(tf.cast(num_samples, tf.int32), [1]), space.shape], 0)
    x0 = STARTS[entry.start](shape, init_seed, sigmas, space)
    fn = _compiled(entry, jit)
    grid_key = tuple(float(v) for v in grid)  # known at trace time (see solvers.as_grid)
    solver_model = model_for(entry, model, grid, resolved)
    out = fn(
        solver_model, x0, grid_key, seed=chain_seed, callback=callback,
        **_as_tensors(entry, resolved),
    )  # fmt: skip
    evals = network_evaluations(entry, model, grid, resolved, out.num_evals)
    return SamplerOutput(out.samples, evals)


def py_callback(fn: Callable) -> Callable:
    """A solver callback that calls ``fn(i, sigma, x)`` with numpy values (not for exports
    or XLA: it leaves the graph)."""

    def run(i, sigma, x):
        fn(i.numpy(), sigma.numpy(), x.numpy())
        return np.int32(0)

    def callback(i, sigma, x):
        return tf.py_function(run, [i, sigma, x], tf.int32)

    return callback
