"""Stop signals: SIGINT / SIGTERM ask a training loop to stop and save, or end a sampling
command within moments (``exit_on_interrupt``)."""

from __future__ import annotations

import os
import signal
import sys
import threading

from absl import logging


class StopSignals:
    """While active (main thread only): SIGINT / SIGTERM ask the loop to stop and save.

    Python runs signal handlers only between bytecodes, not while a compiled loop or a
    collective is running, so the first signal takes effect at the end of the current loop
    of steps. A second SIGINT exits the process at once (exit code 130, no save; the last
    checkpoint stays): a watcher thread sees it through ``signal.set_wakeup_fd`` even while
    the main thread is inside TensorFlow.
    """

    def __init__(self, exit_message: str | None = None):
        self.signum = None
        self._previous = {}
        self._wakeup = None
        #: set: the first SIGINT / SIGTERM exits at once with this message (nothing to save)
        self._exit_message = exit_message

    def _exit_now(self, signum):
        name = signal.Signals(signum).name
        print(f"\n{name}: {self._exit_message}", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    def _handle(self, signum, frame):
        if self._exit_message is not None:
            self._exit_now(signum)
        if self.signum is None:
            self.signum = signum
            logging.warning(
                "%s: stopping after the current loop of steps and saving a checkpoint "
                "(Ctrl-C again to stop now without saving)",
                signal.Signals(signum).name,
            )

    def _watch(self, fd):
        seen = 0
        try:
            while data := os.read(fd, 64):  # b"" (EOF) once __exit__ closes the write end
                stops = [b for b in data if b in (signal.SIGINT, signal.SIGTERM)]
                if self._exit_message is not None and stops:
                    self._exit_now(stops[0])
                seen += sum(b == signal.SIGINT for b in data)
                if seen >= 2:
                    logging.warning("second SIGINT: exiting now; the last checkpoint stays")
                    os._exit(128 + signal.SIGINT)
        finally:
            os.close(fd)

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except ValueError:
            os.close(read_fd)
            os.close(write_fd)
            return self
        self._wakeup = (write_fd, previous_fd)
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            if handler is not None:  # None: installed from C, cannot be restored
                signal.signal(sig, handler)
        if self._wakeup:
            write_fd, previous_fd = self._wakeup
            signal.set_wakeup_fd(previous_fd)
            os.close(write_fd)  # EOF ends the watcher, which closes the read end
        return False


def exit_on_interrupt(message: str) -> StopSignals:
    """A context in which Ctrl-C (SIGINT) or SIGTERM ends the process within moments, even
    inside a long compiled sampling loop, printing ``message`` (exit code 128 + signal)."""
    return StopSignals(exit_message=message)
