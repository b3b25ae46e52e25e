"""Distribution strategies, chosen in one place, and who writes what where.

``make_strategy`` turns the ``--strategy`` flag into a ``tf.distribute.Strategy``:

* ``default``: the default strategy (one device: the first GPU if any, else the CPU).
* ``mirrored``: ``MirroredStrategy`` over all local GPUs, or the ``devices`` listed.
* ``multi_worker_mirrored``: ``MultiWorkerMirroredStrategy``; the cluster and this process's
  role come from the ``TF_CONFIG`` environment variable (checked here, before TF starts).
* ``tpu``: ``TPUStrategy`` on the TPU at ``tpu`` (a Cloud TPU name, grpc://host:port, or
  ``local`` on a TPU VM).

Multi-worker runs share one ``workdir`` (a file system every worker sees: GCS, NFS). Only the
chief writes there; the others do the same work (saving may involve collectives) into a
temporary directory of their own that is deleted afterwards, the pattern of the
tf.distribute multi-worker guide.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import threading
import time

import tensorflow as tf

from tf_score.config import STRATEGIES


class StrategyError(ValueError):
    """A strategy cannot be set up as asked; the message names the flag or variable."""


def split_cpu(num_devices: int) -> list[str]:
    """Split the host CPU into ``num_devices`` logical devices (to run several replicas on a
    machine without accelerators). Must run before TensorFlow initialises its devices."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices
        )
    except RuntimeError as e:
        if len(tf.config.list_logical_devices("CPU")) != num_devices:
            raise StrategyError(
                f"--cpu_devices={num_devices}: TensorFlow's devices are already initialised"
            ) from e
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def tf_config() -> dict | None:
    """The parsed ``TF_CONFIG``, checked: a cluster with workers, and this task within it."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise StrategyError(f"TF_CONFIG is not valid JSON: {e}") from e
    cluster, task = cfg.get("cluster"), cfg.get("task")
    if not isinstance(cluster, dict) or not (cluster.get("worker") or cluster.get("chief")):
        raise StrategyError(
            'TF_CONFIG needs a "cluster" with a "worker" list (and optionally a "chief"), e.g. '
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise StrategyError(
            f'TF_CONFIG "task" must name a job of the cluster ({sorted(cluster)}), got {task!r}'
        )
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise StrategyError(
            f"TF_CONFIG task index {index!r} is not in [0, {len(cluster[task['type']])}) for "
            f'job "{task["type"]}"'
        )
    return cfg


def make_strategy(
    name: str = "default",
    devices: list[str] | None = None,
    tpu: str | None = None,
) -> tf.distribute.Strategy:
    """The strategy for ``--strategy=name``; see the module docstring. (A multi-worker run's
    collectives wait for their peers; ``CollectiveWatchdog`` is the training loop's limit.)"""
    if name not in STRATEGIES:
        raise StrategyError(f"--strategy must be one of {STRATEGIES}, got {name!r}")
    if name != "mirrored" and devices:
        raise StrategyError("--devices is for --strategy=mirrored")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if devices:

            def key(name):
                spec = tf.DeviceSpec.from_string(name if name.startswith("/") else f"/{name}")
                return (spec.device_type or "").upper(), spec.device_index or 0

            local = tf.config.list_logical_devices()
            known = {key(d.name): d.name for d in local}
            bad = [d for d in devices if key(d) not in known]
            if bad:
                raise StrategyError(
                    f"--devices: no such device(s) {bad}; this machine has "
                    f"{sorted(d.name for d in local)}"
                )
            # canonical names, so "CPU:0" and "/cpu:0" share one cached strategy
            return _mirrored(tuple(known[key(d)] for d in devices))
        return _mirrored(None)
    if name == "multi_worker_mirrored":
        if tf_config() is None:
            raise StrategyError(
                "--strategy=multi_worker_mirrored needs TF_CONFIG describing the cluster and "
                "this worker's role (see the README's multi-machine section)"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    # tpu
    if not tpu:
        raise StrategyError(
            "--strategy=tpu needs --tpu: a Cloud TPU name, grpc://host:port, or local (a TPU VM)"
        )
    if tpu.startswith("grpc://"):
        _probe(tpu)  # TF would wait forever on an unreachable address
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as e:
        raise StrategyError(
            f"--strategy=tpu: no TPU at --tpu={tpu!r} ({type(e).__name__}: {e})"
        ) from e
    return tf.distribute.TPUStrategy(resolver)


@functools.cache
def _mirrored(devices: tuple[str, ...] | None) -> tf.distribute.MirroredStrategy:
    # One MirroredStrategy per device set and process: each new one starts its collective keys
    # from the same base, and collectives of a second strategy then collide with the first's
    # ("Shape mismatch in the collective instance ..."), e.g. when a notebook trains twice.
    return tf.distribute.MirroredStrategy(list(devices) if devices else None)


def _probe(address: str, timeout: float = 10.0) -> None:
    import socket

    host, _, port = address.removeprefix("grpc://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise StrategyError(f"--tpu={address}: cannot connect ({e})") from e


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """True on the worker that writes checkpoints, summaries and exports.

    That is the "chief" task, or worker 0 when the cluster has no chief; single-process
    strategies are always chief.
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type or resolver.task_type == "chief":
        return True
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True  # one client process drives every TPU host
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` spans several worker processes. TensorFlow has no public way to
    ask: the private ``_in_multi_worker_mode``, whose answer tests/test_faults.py's two-worker
    runs pin (a lost worker stops the other only when it is True)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.extended._in_multi_worker_mode()
    )


def task_name(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "local"
    return f"{resolver.task_type}{resolver.task_id}"


@contextlib.contextmanager
def write_dir(path: str, strategy: tf.distribute.Strategy):
    """``path`` on the chief; elsewhere a fresh temporary directory, deleted on exit."""
    if is_chief(strategy):
        yield path
        return
    tmp = tempfile.mkdtemp(prefix=f"tf_score_{task_name(strategy)}_")
    try:
        yield os.path.join(tmp, os.path.basename(os.path.normpath(path)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class CollectiveWatchdog:
    """The ``--collective_timeout`` of a multi-worker run: one thread for the whole run.

    While a call with collectives runs (``watching``), the thread reads ``progress()`` (the
    step counter) every ``poll`` seconds. If it has not moved for ``timeout`` seconds, a peer
    is taken to be lost and this process's pending collectives are aborted: the call raises
    ``tf.errors.DeadlineExceededError``. A call watched with ``first=True`` (the one that
    traces and compiles) is given until its first step before the clock starts. ``abort``
    (message) is what fires (default: the collectives' abort below).

    TensorFlow's own limit, ``CommunicationOptions(timeout_seconds=...)``, starts a sleeping
    thread for every collective it launches: a model stepping hundreds of times a second with
    a timeout of minutes piles up tens of thousands of threads, and the process aborts when it
    cannot start another. Aborting the collectives has no public API; this calls the eager
    context's ``abort_collective_ops``, as ``MultiWorkerMirroredStrategy``'s own health check
    does (tests/test_faults_cluster.py's stalled-worker run pins it).
    """

    def __init__(self, timeout: float, progress, poll: float | None = None, abort=None):
        self.timeout = timeout
        self._progress = progress
        self._abort = abort or _abort_collectives
        self._poll = poll if poll is not None else min(1.0, timeout / 10)
        self._lock = threading.Lock()
        self._watched = False
        self._last = None  # progress() when last seen to move
        self._since = None  # when it did (monotonic s); None: the clock has not started
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="collective-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watching(self, first: bool = False):
        """Watch the collectives of the calls inside; ``first``: the clock starts at the
        first step (tracing and compiling are not waiting for a peer)."""
        last = self._progress()
        with self._lock:
            self._last, self._since = last, None if first else time.monotonic()
            self._watched = True
        try:
            yield
        finally:
            with self._lock:
                self._watched = False

    def close(self) -> None:
        self._closed.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._closed.wait(self._poll):
            if not self._watched:
                continue
            value = self._progress()  # outside the lock: a read may wait for the step
            with self._lock:
                now = time.monotonic()
                if value != self._last:
                    self._last, self._since = value, now
                if not self._watched or self._since is None or now - self._since < self.timeout:
                    continue
                self._watched = False
            self._abort(f"no step for {self.timeout:g} s (--collective_timeout): a peer is lost")


def _abort_collectives(message: str) -> None:
    """Fail this process's pending and future collectives with DeadlineExceededError."""
    from tensorflow.python.eager import context  # no public API (CollectiveWatchdog)

    context.context().abort_collective_ops(tf.errors.DEADLINE_EXCEEDED, message)
