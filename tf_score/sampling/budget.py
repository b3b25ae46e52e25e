"""The one budget of every request (served, ``api.generate``, ``run_sample.py``): work in
network evaluations scaled by the network's measured cost, and the memory a generation needs.

Work. One network evaluation of one example costs

    units = max(1, ceil(FLOPs / REFERENCE_FLOPS)),

its FLOPs counted on the traced graph (``tf.compat.v1.profiler``). Below one MFLOP the
per-call overhead, not the arithmetic, sets the time (measured on 2 cores: the toys at 35k
and 380k FLOPs take 8 and 15 us per example evaluation; the 195,841-parameter MNIST ResNet at
76 MFLOPs 0.7 ms, 84 times the first toy, and costs 76 units). A request does num_samples x
evaluations x units of work; one cap (``ExportConfig.export_max_evaluations``, checked in
the export's graph, and ``EvalConfig.max_evaluations`` for generation) then allows every
network about the same time, whatever its size.

Memory. A generation keeps its samples (``KEEP_COPIES`` float32 copies: the batches, their
concatenation, the images written) and runs a batch at a time: ``SOLVER_COPIES`` copies of a
sample for the solver's state, plus the network's live tensors at its peak for one example
(measured on the same graph). ``check_generation`` refuses what would not fit in the memory
available, with the largest num_samples that would.
"""

from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tf_score.networks import contract
from tf_score.sampling import registry
from tf_score.sampling.registry import SamplerError

#: FLOPs of one evaluation that cost one unit of work (smaller networks cost one too)
REFERENCE_FLOPS = 1_000_000
#: float32 copies of every sample kept by a generation
KEEP_COPIES = 3
#: float32 copies of a sample the solvers hold per example of a batch (state, start, noise,
#: denoised, derivatives, the multistep solvers' history)
SOLVER_COPIES = 16
#: the executor holds more than the graph-order peak of the network's tensors: measured 1.45x
#: on the EDM toy MLP under Heun (1.05x on the NCSN toy MLP, 0.5x on the MNIST ResNet)
NETWORK_MARGIN = 1.5


class BudgetError(SamplerError):
    """A request over the work or memory budget (raised before any work)."""


class Cost(NamedTuple):
    """The measured cost of one evaluation of one example."""

    flops: int
    #: bytes of the tensors that depend on the inputs, live together at the peak
    peak_bytes: int

    @property
    def units(self) -> int:
        return max(1, math.ceil(self.flops / REFERENCE_FLOPS))

    def describe(self) -> str:
        return f"{self.units} per evaluation of this network: {self.flops / 1e6:.3g} MFLOPs"


def _peak_example_bytes(graph, inputs) -> int:
    """Bytes of the live tensors that depend on ``inputs`` at the peak of one run of ``graph``
    (ops in creation order, a topological order; a tensor is freed after its last reader)."""
    ops = graph.get_operations()
    downstream = {t.op.name for t in inputs}
    last = {}
    for i, op in enumerate(ops):
        if any(t.op.name in downstream for t in op.inputs):
            downstream.add(op.name)
        for t in op.inputs:
            last[t.name] = i
    live, total, peak = {}, 0, 0
    for i, op in enumerate(ops):
        if op.name in downstream:
            for t in op.outputs:
                n = t.shape.num_elements()
                if n and (t.dtype.is_floating or t.dtype.is_integer or t.dtype.is_bool):
                    live[t.name] = n * t.dtype.size
                    total += live[t.name]
        peak = max(peak, total)
        for t in op.inputs:
            if last.get(t.name) == i and t.name in live:
                total -= live.pop(t.name)
    return peak


def graph_cost(fn, *specs: tf.TensorSpec) -> Cost:
    """FLOPs and peak live bytes of ``fn`` traced on ``specs`` (one example: batch 1)."""
    graph = tf.function(fn).get_concrete_function(*specs).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # the v1 profiler warns of its own deprecation on every call
    try:
        flops = tf.compat.v1.profiler.profile(graph, options=options).total_float_ops
    finally:
        logger.setLevel(level)
    inputs = [t for t in graph.inputs if t.dtype != tf.resource]
    return Cost(int(flops), _peak_example_bytes(graph, inputs))


_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def network_cost(model, shape) -> Cost:
    """The cost of one network evaluation of a contract ``model`` on one example of ``shape``
    (a level-conditioned model at one of its levels; a guided model's own network: the
    evaluations count both of guidance's; measured once per model)."""
    model = contract.unguided(model)
    view = model.at_levels() if hasattr(model, "at_levels") else model  # one key per network
    if view not in _COSTS:
        specs = (tf.TensorSpec([1, *shape], tf.float32), tf.TensorSpec([1], tf.float32))
        _COSTS[view] = graph_cost(lambda x, sigma: view.denoise(x, sigma), *specs)
    return _COSTS[view]


def work_message(cost: Cost, cap: int, what: str = "num_samples x network evaluations") -> str:
    """The refusal of work (``what``) over ``cap``, as the export's graph and ``generate``
    say it."""
    per = f" x cost ({cost.describe()})" if cost.units > 1 else ""
    return f"{what}{per} must be <= {cap}"


def check_work(num_samples: int, evaluations: int, cost: Cost, cap: int) -> None:
    """BudgetError unless num_samples x ``evaluations`` (per sample) x units <= ``cap``."""
    work = num_samples * evaluations * cost.units
    if cap and work > cap:
        most = cap // (evaluations * cost.units)
        fix = f"ask for at most --num_samples={most}" if most else "even one sample is over it"
        raise BudgetError(
            f"--num_samples={num_samples} x {evaluations} network evaluations is {work} units "
            f"of work; {work_message(cost, cap)} (--max_evaluations): {fix}, or use fewer steps"
        )


def available_memory() -> int | None:
    """Bytes of memory this process can still take: MemAvailable, or the cgroup's limit less
    its use when smaller (None: unknown here)."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        found.append(int(info["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def check_generation(num_samples: int, batch_size: int, shape, cost: Cost, calls: int,
                     available: int | None = None) -> None:  # fmt: skip
    """BudgetError unless ``num_samples`` of ``shape`` drawn ``batch_size`` at a time (0: all
    at once) by a solver calling ``calls`` networks together fit in ``available`` bytes
    (default ``available_memory()``); the message names the largest num_samples that fits."""
    available = available_memory() if available is None else available
    if available is None:
        return
    sample = 4 * int(np.prod(shape))
    keep = KEEP_COPIES * sample
    run = SOLVER_COPIES * sample + int(NETWORK_MARGIN * calls * cost.peak_bytes)
    batch = min(batch_size or num_samples, num_samples)
    need = num_samples * keep + batch * run
    if need <= available:
        return
    most = available // (keep + run) if not batch_size else (available - batch * run) // keep
    hint = " (or a smaller --sample_batch_size)" if batch_size else ""
    if not batch_size and len(shape) == 3:
        hint = " or draw them in batches with --sample_batch_size"
    raise BudgetError(
        f"--num_samples={num_samples} needs about {_gb(need)} of memory ({_gb(num_samples * keep)}"
        f" for the samples kept, {_gb(batch * run)} for a batch of {batch}), more than the "
        f"{_gb(available)} available here: ask for at most --num_samples={max(int(most), 0)}" + hint
    )


def check_draw(made: registry.Plan, space, num_samples: int, batch_size: int = 0,
               max_evaluations: int = 0) -> Cost:  # fmt: skip
    """Before a generation of ``num_samples`` by the draw ``made`` (``registry.plan``):
    BudgetError unless they fit in memory and (with ``max_evaluations``) their work is within
    it. Returns the network's cost (an adaptive solver's work is known only as it runs:
    ``check_work`` it after)."""
    cost = network_cost(made.model, tuple(space.shape))
    check_generation(num_samples, batch_size, tuple(space.shape), cost, made.per_call)
    evaluations = made.evaluations
    if max_evaluations and evaluations is not None:
        check_work(num_samples, int(evaluations), cost, max_evaluations)
    return cost
