"""Ctrl-C before a command's work starts: one line and exit 130, whatever is being imported.

A KeyboardInterrupt raised inside an import can be swallowed by a library's broad
``except`` (a CI run lost one and trained to the end), so until ``release`` a SIGINT exits
at once from its handler instead of raising. Nothing is written before the work starts.
"""

from __future__ import annotations

import os
import signal
import sys

MESSAGE = "interrupted during start-up; nothing written"


def _exit_now(signum, frame):
    print(MESSAGE, file=sys.stderr, flush=True)
    os._exit(130)


def guard() -> None:
    """Until ``release``, SIGINT prints MESSAGE and exits 130 (call first, before imports)."""
    signal.signal(signal.SIGINT, _exit_now)


def release() -> None:
    """SIGINT raises KeyboardInterrupt again (the work reports and saves what it must)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
