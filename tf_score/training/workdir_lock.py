"""One training process per workdir: ``workdir/LOCK`` names its holder (host, PID, start).

A second process that trains into the same workdir would interleave checkpoints and event
files; it stops at once with the holder's name instead. A lock whose process is gone (same
host, no process with that PID and start time) is stale and is taken over. In a multi-worker
run only the chief takes the lock (the workers write nowhere that is kept). On a non-local
filesystem (``gs://``, ``hdfs://``) there is no atomic create-if-absent here, so no lock.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket

import psutil

LOCK_FILE = "LOCK"


class WorkdirUnwritableError(RuntimeError):
    """The workdir (or its LOCK) cannot be created: read-only, no permission, no space."""


class WorkdirLockedError(RuntimeError):
    """Another live process holds the workdir."""


def _me() -> dict:
    p = psutil.Process()
    return {"host": socket.gethostname(), "pid": p.pid, "create_time": p.create_time()}


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot tell for another host: assume it is running
    try:
        p = psutil.Process(int(holder["pid"]))
        return abs(p.create_time() - float(holder["create_time"])) < 1.0
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False


def _describe(holder: dict) -> str:
    started = holder.get("create_time")
    when = (
        datetime.datetime.fromtimestamp(float(started)).isoformat(timespec="seconds")
        if started
        else "?"
    )
    return f"host {holder.get('host', '?')}, PID {holder.get('pid', '?')}, started {when}"


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}  # half-written or unreadable: treated as a holder that is gone


def acquire(workdir: str) -> str | None:
    """Take ``workdir/LOCK`` (the path; None on a non-local filesystem). Raises
    ``WorkdirLockedError`` naming the holder if a live process has it."""
    if "://" in workdir:
        return None
    path = os.path.join(workdir, LOCK_FILE)
    me = json.dumps(_me())
    for _ in range(3):
        try:
            os.makedirs(workdir, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder and _alive(holder):
                if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                    return None  # this process holds it already; the outer holder releases
                raise WorkdirLockedError(
                    f"{workdir} is in use by another training process ({_describe(holder)}); "
                    f"wait for it, or stop it, or use another --workdir (if that process is "
                    f"gone, delete {path})"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # stale: its process is gone
            continue
        except OSError as e:  # read-only file system, permissions, no space
            raise WorkdirUnwritableError(
                f"cannot write to workdir {workdir}: {e.strerror} ({e.filename}); pass "
                "--workdir=DIR somewhere you can write"
            ) from e
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return path
    raise WorkdirLockedError(f"could not take {path}: other processes keep taking it")


def release(path: str | None) -> None:
    """Remove the lock if this process still holds it."""
    if path is None:
        return
    holder = _read(path)
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def held(workdir: str, take: bool = True):
    """``acquire`` for the duration of the block (``take=False``: a no-op, for non-chiefs)."""
    path = acquire(workdir) if take else None
    try:
        yield path
    finally:
        release(path)
