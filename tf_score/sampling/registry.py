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

from tf_score.config import MAX_COUNT
from tf_score.networks.contract import grid_on_levels
from tf_score.registries import Registry

#: the largest int option (and count) a solver takes: the config's largest count
INT32_MAX = MAX_COUNT


class SamplerError(ValueError):
    """A sampler or one of its options is invalid (raised before any sampling)."""


class SamplerOutput(NamedTuple):
    """What every solver returns."""

    samples: tf.Tensor
    #: network evaluations per sample (int32 scalar)
    num_evals: tf.Tensor


@dataclasses.dataclass(frozen=True)
class Option:
    """One solver option: its type, default and allowed values. A name is one flag and one
    served input; solvers that take an option of the same name each check it by their own
    ``Option``."""

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
    def upper(self) -> float | None:
        """The largest value allowed: ``high``, and for an int at most 2**31 - 1 (the solvers
        count in int32; a larger count would wrap around)."""
        if self.kind is int:
            return min(self.high, INT32_MAX) if self.high is not None else INT32_MAX
        return self.high

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
        parts += [f"<= {self.upper:.10g}"] if self.upper is not None else []
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
        return self.upper is None or v <= self.upper

    def graph_checks(self, value) -> list:
        """In-graph assertions of a served value (a float or int tensor), each failing as one
        line naming the option (``graph_require``)."""
        ok = tf.constant(True)
        if self.kind is float:
            ok = tf.math.is_finite(value)
        if self.low is not None:
            low = tf.cast(self.low, value.dtype)
            ok &= (value >= low) if self.low_closed else (value > low)
        if self.upper is not None:
            ok &= value <= tf.cast(self.upper, value.dtype)
        return [graph_require(ok, f"{self.name} must be {self.allowed()}", value)]


def graph_require(condition, message: str, value=None):
    """An in-graph check that fails as one line, ``assertion failed: [MESSAGE, got] [VALUE]``
    (TF Serving returns it with the node's name), not the data dump of ``tf.debugging``'s
    comparisons. Returns the op, for a control dependency."""
    data = [message] if value is None else [message + ", got", value]
    return tf.debugging.Assert(tf.reduce_all(condition), data, summarize=4)


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


_SOLVERS = Registry("sampler", SamplerError)
#: the registered solvers by name
SAMPLERS: dict[str, Sampler] = _SOLVERS.entries


def register(entry: Sampler, replace: bool = False, builtin: bool = False) -> Sampler:
    """Add ``entry`` to the registry (``replace``: over one of the same name). Two solvers may
    each have an option of the same name; each is validated by its own schema."""
    if entry.start not in STARTS:
        raise SamplerError(f"start must be one of {', '.join(STARTS)}, got {entry.start!r}")
    others = all_options()
    for o in entry.options:  # one name is one flag and one served input: one type
        kinds = {other.kind for other in others.get(o.name, ()) if other is not o}
        if kinds - {o.kind}:
            raise SamplerError(f"option {o.name!r} is another solver's, of another type")
    return _SOLVERS.register(entry, replace, builtin)


def register_builtins(entries) -> None:
    """Register the library's own solvers (``solvers``, ``denoiser_solvers``)."""
    for entry in entries:
        register(entry, replace=True, builtin=True)


unregister = _SOLVERS.unregister
get = _SOLVERS.get


def builtin_names() -> tuple[str, ...]:
    """The library's own solvers, whatever plugins are registered."""
    return tuple(_SOLVERS.builtin)


def all_options(builtin_only: bool = False) -> dict[str, list[Option]]:
    """Every registered option name -> its options, one per solver that takes it (in
    registration order; ``builtin_only``: of the library's own solvers)."""
    entries = _SOLVERS.builtin.values() if builtin_only else SAMPLERS.values()
    out: dict[str, list[Option]] = {}
    for entry in entries:
        for o in entry.options:
            if o not in out.setdefault(o.name, []):
                out[o.name].append(o)
    return out


#: the grid sizes of ``evaluations_table``
TABLE_SIZES = (10, 20, 40)


def evaluations_table(sizes=TABLE_SIZES) -> str:
    """The built-in solvers' network evaluations per sample on grids of ``sizes`` sigmas with
    their default options, as a markdown table computed from the entries (docs/glossary.md
    holds it; the entry is the one statement of a solver's count)."""
    head = " / ".join(str(n) for n in sizes)
    lines = [f"| solver | start | stochastic | evaluations on {head} sigmas |", "|---|---|---|---|"]
    for name in builtin_names():
        entry = _SOLVERS.builtin[name]
        counts = [entry.evaluations(n, entry.resolve()) for n in sizes]
        text = "adaptive (counted as it runs)" if None in counts else " / ".join(map(str, counts))
        noisy = "yes" if entry.stochastic else "no"
        lines.append(f"| `{name}` | {entry.start} | {noisy} | {text} |")
    return "\n".join(lines)


def options_of(config, name: str | None = None) -> dict:
    """Solver ``name``'s options (default: the config's sampler) from a ``config.
    SamplerConfig``: the values given that it takes, its defaults for the rest, validated by
    its schema (SamplerError); values of other solvers' options are left for them."""
    entry = get(name or config.sampler)
    given = {k: v for k, v in config.values if k in entry.option_names()}
    return entry.resolve(given)


def check_value(name: str, value):
    """``value`` of sampler option ``name`` as one of the registered solvers that take it
    accepts it (the first that does); SamplerError naming the option otherwise."""
    known = all_options()
    if name not in known:
        raise SamplerError(
            f"{name!r} is neither a config field nor an option of a registered solver "
            f"(options: {', '.join(sorted(known))}; a plugin's? load it with --plugins)"
        )
    errors = []
    for o in known[name]:
        try:
            return o.check(value)
        except SamplerError as e:
            errors.append(e)
    raise errors[0]


def check_config(config) -> None:
    """SamplerError unless the config's sampler is registered, its options fit its schema and
    every other value given is an option of a registered solver that accepts it."""
    options_of(config)
    own = get(config.sampler).option_names()
    for name, value in config.values:
        if name not in own:
            check_value(name, value)


# --- starts and seeds -------------------------------------------------------------------------


class SampleSpace(NamedTuple):
    """Where samples live: their shape (without the batch), the data's range (Langevin chains
    start uniform on it) and mean per channel (the deterministic solvers start at mean +
    sigma_1 z; None: the middle of the range is not used, a uniform draw is)."""

    shape: tuple[int, ...]
    data_range: tuple[float, float] = (0.0, 1.0)
    data_mean: tuple[float, ...] | None = None
    #: per class, the mean per channel (a class-conditional model's labelled starts)
    class_means: tuple[tuple[float, ...], ...] | None = None


def uniform_start(shape, seed, sigmas, space: SampleSpace, labels=None, share=1.0):
    """x0 ~ U[low, high]^shape on the data's range (NCSN starts from U[0, 1] images)."""
    del sigmas, labels, share
    low, high = space.data_range
    return uniform(shape, seed, low, high)


def perturbed_start(shape, seed, sigmas, space: SampleSpace, labels=None, share=1.0):
    """x0 = u + sigma_1 z: "like the data, perturbed to the first level". u is the data's mean
    when known, else uniform on the range; a labelled sample's (``labels`` [B]) moves
    ``share`` of the way to its class's mean (``contract.Guided.class_share``).
    The deterministic solvers carry x0 to the data without mixing, so its centre matters: a
    start 3 units off the two-mode toy's mean moves its mode weight from 0.80 to 0.79 at
    sigma_1 = 80 and to 0.75 at 20, even with the exact score; a class 8 units from the
    data's mean ends 8 / 80 = 0.1 off. The same z for any u."""
    s_u, s_z = split(seed)
    if labels is not None and space.class_means and space.data_mean is not None:
        mean = tf.constant(np.asarray(space.data_mean, np.float32))
        means = tf.gather(tf.constant(np.asarray(space.class_means, np.float32)), labels) - mean
        shift = tf.reshape(means, [-1] + [1] * (len(space.shape) - 1) + [len(space.data_mean)])
        u = mean + tf.cast(share, tf.float32) * shift
    elif space.data_mean is None:
        u = uniform_start(shape, s_u, sigmas, space)
    else:
        u = tf.constant(np.asarray(space.data_mean, np.float32))
    sigma_1 = tf.cast(sigmas, tf.float32)[0]
    return u + sigma_1 * normal(shape, s_z)


STARTS = {"uniform": uniform_start, "perturbed": perturbed_start}

# --- seeds: one draw per batch, or one stream per sample ---------------------------------------
#
# A solver's seed is a stateless pair [2] (the batch convention: one draw of the whole batch)
# or a triple [3] (per sample: a key pair and the index of the batch's first sample; row r of
# every draw is sample first + r's own, Philox counters from that index, so a sample does not
# depend on the batch it is drawn in). ``fold``, ``split``, ``normal`` and ``uniform`` take
# either; the solvers draw through them (``solvers.step_noise``).

#: Philox in TensorFlow's RNG algorithm numbering (the stateless V2 ops)
_PHILOX = 1


def fold(seed, k):
    """``seed`` folded with ``k`` (a per-sample seed keeps its first-sample index)."""
    seed = tf.convert_to_tensor(seed)
    folded = tf.random.experimental.stateless_fold_in(seed[:2], k, alg="philox")
    return folded if seed.shape[0] == 2 else tf.concat([folded, seed[2:]], 0)


def split(seed):
    """Two independent seeds from ``seed`` (the batch convention's split, kept bit for bit)."""
    seed = tf.convert_to_tensor(seed)
    if seed.shape[0] == 2:
        return tuple(tf.unstack(tf.random.experimental.stateless_split(seed, 2, alg="philox")))
    return fold(seed, 0), fold(seed, 1)


def _rows(op, shape, seed):
    """A draw of ``shape`` [N, ...] whose row r comes from Philox counters that start at
    (first + r) x the row's length in 4-value blocks: the rows of any split are the same."""
    shape = tf.cast(shape, tf.int32)
    d = tf.reduce_prod(shape[1:])
    d4 = (d + 3) // 4 * 4
    key, _ = tf.raw_ops.StatelessRandomGetKeyCounter(seed=seed[:2])
    start = tf.cast(seed[2], tf.uint64) * tf.cast(d4 // 4, tf.uint64)
    counter = tf.stack([start, tf.constant(0, tf.uint64)])
    flat = op(shape=tf.stack([shape[0], d4]), key=key, counter=counter, alg=_PHILOX)
    return tf.reshape(flat[:, :d], shape)


def normal(shape, seed) -> tf.Tensor:
    """z ~ N(0, I) of ``shape`` from a batch seed [2] or a per-sample seed [3]."""
    seed = tf.convert_to_tensor(seed)
    if seed.shape[0] == 2:
        return tf.random.stateless_normal(shape, seed, alg="philox")
    return _rows(tf.raw_ops.StatelessRandomNormalV2, shape, seed)


def uniform(shape, seed, low=0.0, high=1.0) -> tf.Tensor:
    """U[low, high) of ``shape`` from a batch seed [2] or a per-sample seed [3]."""
    seed = tf.convert_to_tensor(seed)
    if seed.shape[0] == 2:
        return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high, alg="philox")
    return low + (high - low) * _rows(tf.raw_ops.StatelessRandomUniformV2, shape, seed)


def batch_seeds(seed, batch_index=0):
    """The batch convention (``seeding=batch``, every generation path before per-sample
    seeding): batch b of a run seeded s uses the pair (s, b); its start x0 is drawn from
    fold_in((s, b), 0) and its chain from fold_in((s, b), 1). A served ``seed`` input is the
    pair itself, so serving (s, 0) equals the first batch of seed s."""
    pair = tf.cast(seed, tf.int32)
    if pair.shape.rank == 0:
        pair = tf.stack([pair, tf.cast(batch_index, tf.int32)])
    fold_in = tf.random.experimental.stateless_fold_in
    return fold_in(pair, 0, alg="philox"), fold_in(pair, 1, alg="philox")


#: a stream constant of the per-sample seeds (the batch convention's keys are (s, b))
_PER_SAMPLE = 0x5EED


def sample_seeds(seed, first=0):
    """The per-sample convention (``seeding=per_sample``): sample i of a run seeded s is drawn
    from keys fold_in((s, 0x5EED), 0) (start) and fold_in((s, 0x5EED), 1) (chain) at row
    index i, whatever batch or served call it is in. ``seed`` is s, or the pair (s, first) a
    served call takes: its samples are first, first + 1, ... of seed s."""
    pair = tf.cast(seed, tf.int32)
    if pair.shape.rank == 0:
        pair = tf.stack([pair, tf.cast(first, tf.int32)])
    key = tf.stack([pair[0], tf.constant(_PER_SAMPLE, tf.int32)])
    fold_in = tf.random.experimental.stateless_fold_in
    return tuple(tf.concat([fold_in(key, k, alg="philox"), pair[1:]], 0) for k in (0, 1))


#: how a generation's seed gives its samples' seeds (``config.SEEDINGS``)
SEEDINGS = {"per_sample": sample_seeds, "batch": batch_seeds}


#: the most network evaluations one sample may take (the solvers count them in int32)
MAX_EVALUATIONS_PER_SAMPLE = MAX_COUNT


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything about a draw that is known before any work: the solver, its options
    (validated), the grid, the model the solver calls and what one of its calls costs."""

    entry: Sampler
    options: dict
    #: the grid sigma_1 > ... > sigma_N, float32
    grid: np.ndarray
    #: the model the solver calls: a level-conditioned model's at-levels view when every call
    #: is at one of its levels (one network trace instead of a branch of three)
    model: object
    #: network evaluations per model call (2 between a level-conditioned model's levels)
    per_call: int
    #: network evaluations per sample, known before the draw (None: adaptive, known after); a
    #: float64 tensor when an option is one (served), so that no count wraps
    evaluations: object = None
    #: how ``seed`` gives the samples' seeds: per_sample (``sample_seeds``: a batch's seed is
    #: (s, index of its first sample)) or batch (``batch_seeds``: (s, batch index))
    seeding: str = "per_sample"

    def seeds(self, seed):
        """(start seed, chain seed) of a batch seeded ``seed`` (``SEEDINGS[self.seeding]``)."""
        return SEEDINGS[self.seeding](seed)

    def start(self, shape, seed, space: SampleSpace, view=None) -> tf.Tensor:
        """The solver's start x0 of ``shape`` for a batch seeded ``seed`` (``seeds``); ``view``:
        the bound ``contract.Guided`` model of a labelled batch, whose classes move its
        start's centre (``perturbed_start``)."""
        init_seed, _ = self.seeds(seed)
        grid, labels = tf.constant(self.grid), getattr(view, "labels", None)
        share = 1.0 if labels is None else view.class_share(self.grid[0])
        return STARTS[self.entry.start](shape, init_seed, grid, space, labels, share)

    def run(self, x0, seed, callback=None, jit: bool = False, model=None,
            bind=None) -> SamplerOutput:  # fmt: skip
        """The solver from ``x0``, its chain seeded by ``seeds(seed)``; ``model``: a view
        of ``self.model`` to call instead (inpainting); ``bind``: the tensors that bind a
        ``contract.Guided`` model (labels [B], guidance []), given to ``model.bind`` inside
        the compiled solver, so that new labels do not retrace it. ``num_evals``: network
        evaluations."""
        _, chain_seed = self.seeds(seed)
        dtypes = {float: tf.float32, int: tf.int32}
        options = {  # servable options as tensors: new values do not retrace the solver
            o.name: tf.cast(self.options[o.name], dtypes[o.kind])
            if o.servable
            else self.options[o.name]
            for o in self.entry.options
        }
        grid_key = tuple(float(v) for v in self.grid)  # known at trace time (solvers.as_grid)
        out = _compiled(self.entry, jit)(
            model or self.model,
            x0,
            grid_key,
            bind,
            chain_seed,
            int(chain_seed.shape[0]),
            callback=callback,
            **options,
        )
        return SamplerOutput(out.samples, tf.cast(out.num_evals, tf.int32) * self.per_call)


def plan(name: str, model, sigmas, options: dict | None = None,
         seeding: str = "per_sample") -> Plan:  # fmt: skip
    """The ``Plan`` of solver ``name`` with ``options`` (the rest its defaults) on the grid
    ``sigmas`` for a contract ``model``, seeded by ``seeding``; SamplerError before any work
    if they do not fit, or a sample would take more than ``MAX_EVALUATIONS_PER_SAMPLE``
    network evaluations."""
    if seeding not in SEEDINGS:
        raise SamplerError(f"seeding must be one of {', '.join(SEEDINGS)}, got {seeding!r}")
    entry = get(name)
    resolved = entry.resolve(options)
    grid = np.asarray(tf.get_static_value(tf.convert_to_tensor(sigmas)), np.float32)
    if entry.validate is not None:
        entry.validate(grid, resolved)
    on_grid = grid_on_levels(model, grid) and entry.on_grid(resolved)
    view = model.at_levels() if on_grid and hasattr(model, "at_levels") else model
    per_call = int(model.network_calls(off_grid=not on_grid))
    as_counts = {k: tf.cast(v, tf.float64) if tf.is_tensor(v) else v for k, v in resolved.items()}
    calls = entry.evaluations(len(grid), as_counts)
    evaluations = None if calls is None else calls * per_call
    if evaluations is not None and not tf.is_tensor(evaluations):
        if evaluations > MAX_EVALUATIONS_PER_SAMPLE:
            raise SamplerError(
                f"sampler {name} with {resolved} on {len(grid)} sigmas takes {evaluations} "
                f"network evaluations per sample; at most {MAX_EVALUATIONS_PER_SAMPLE} are allowed"
            )
    return Plan(entry, resolved, grid, view, per_call, evaluations, seeding)


_COMPILED: dict = {}


def _compiled(entry: Sampler, jit: bool):
    """The solver as one ``tf.function`` (per solver function and compile mode)."""
    key = (entry.fn, bool(jit))
    if key not in _COMPILED:

        def solve(model, x0, grid, bind, seed, seed_size, **kwargs):
            # the seed's size says how it is read (``normal``): a retrace may have relaxed it
            seed = tf.ensure_shape(seed, [seed_size])
            model = model if bind is None else model.bind(*bind)
            return entry.fn(model, x0, grid, seed=seed, **kwargs)

        _COMPILED[key] = tf.function(solve, jit_compile=bool(jit), reduce_retracing=True)
    return _COMPILED[key]


def draw(
    name: str,
    model,
    sigmas,
    num_samples,
    seed,
    space: SampleSpace,
    callback=None,
    jit: bool = False,
    seeding: str = "per_sample",
    **options,
) -> SamplerOutput:
    """One batch of ``num_samples`` from solver ``name`` on the grid ``sigmas``: started by
    its entry's start, seeded by ``seeding`` (``SEEDINGS``; an int seed: samples 0 ..
    num_samples - 1, or batch 0); graph-compatible (``plan``, then its ``start`` and
    ``run``, as the export does). ``num_evals`` counts network evaluations per sample."""
    made = plan(name, model, sigmas, options, seeding)
    x0 = made.start(batch_shape(num_samples, space), seed, space, view=model)
    return made.run(x0, seed, callback=callback, jit=jit)


def batch_shape(num_samples, space: SampleSpace):
    """The shape of a batch of ``num_samples`` (an int, or a tensor in a served graph)."""
    if isinstance(num_samples, int):
        return [num_samples, *space.shape]
    return tf.concat([tf.reshape(tf.cast(num_samples, tf.int32), [1]), space.shape], 0)


def py_callback(fn: Callable) -> Callable:
    """A solver callback that calls ``fn(i, sigma, x)`` with numpy values (not for exports
    or XLA: it leaves the graph)."""

    def run(i, sigma, x):
        fn(i.numpy(), sigma.numpy(), x.numpy())
        return np.int32(0)

    def callback(i, sigma, x):
        return tf.py_function(run, [i, sigma, x], tf.int32)

    return callback
