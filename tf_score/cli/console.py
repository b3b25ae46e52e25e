"""What the command lines print: tf_score's own lines; TensorFlow's logging when asked for.

``before_tensorflow(argv)`` runs before TensorFlow is imported. Unless the command line asks
for absl's INFO logging (``-v 0``, ``--verbosity=0`` or more), TensorFlow's C++ log is
filtered. TensorFlow 2.21 logs through absl's C++ logger before anything initialises it, so
``TF_CPP_MIN_LOG_LEVEL`` no longer hides those lines; the filter reads what C++ code writes to
file descriptor 2 and drops INFO and WARNING lines, absl's "before InitializeLog" notice, the
CPU-instructions banner and the ERROR lines in ``_KNOWN_NOISE`` (a CUDA probe on a machine
with no GPU; a oneDNN note printed even where it does not apply). Other ERROR and FATAL lines
pass. Python's own ``sys.stderr`` keeps writing to the terminal directly.

``configure()`` runs in ``main``, after absl has parsed the flags. Log records go
through ``tqdm.write``, so a line never breaks a progress bar. tf_score's own records show
as plain lines (warnings as ``warning: ...``). TensorFlow's Python records show from ERROR
up, other libraries' from WARNING up; with ``--verbosity=0`` or more every record shows,
with absl's prefix.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading

#: where tf_score's own log records come from (the library and this package)
_PACKAGE_DIRS = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,)


def requested_verbosity(argv: list[str]) -> int:
    """absl's ``--verbosity`` (alias ``-v``) as given in ``argv``; -1 (WARNING) if absent."""
    value = None
    for i, arg in enumerate(argv[1:], start=1):
        for name in ("--verbosity", "-v", "--v"):
            if arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
            elif arg == name and i + 1 < len(argv):
                value = argv[i + 1]
    try:
        return int(value) if value is not None else -1
    except ValueError:
        return -1  # absl's flag parser reports it, naming the flag


# absl's C++ log line: severity, date, time, thread, file:line]
_CPP_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] (.*)")
_DROPPED = (
    b"WARNING: All log messages before absl::InitializeLog() is called",
    b"This TensorFlow binary is optimized to use available CPU instructions",
    b"To enable the following instructions:",
)
_KNOWN_NOISE = (
    b"failed call to cuInit",  # no GPU here: TensorFlow runs on the CPU
    b"oneDNN supports DT_INT32 only on platforms with AVX-512",  # printed on AVX-512 too
)


def from_tensorflow(line: bytes) -> bool:
    """Whether a line is TensorFlow's C++ logging: an absl log line, absl's "before
    InitializeLog" notice or the CPU-instructions banner."""
    return line.startswith(_DROPPED) or _CPP_LINE.match(line) is not None


def _shown(line: bytes) -> bool:
    """Whether a line C++ code wrote to stderr reaches the terminal: anything but
    TensorFlow's logging, and its ERROR and FATAL lines that are not ``_KNOWN_NOISE``."""
    if not from_tensorflow(line):
        return True
    m = _CPP_LINE.match(line)
    return m is not None and m.group(1) in b"EF" and not any(n in m.group(2) for n in _KNOWN_NOISE)


def _pump(read_fd: int, out_fd: int) -> None:
    """Copy lines from ``read_fd`` to ``out_fd``, dropping those ``_shown`` refuses."""
    pending = b""
    while chunk := os.read(read_fd, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if _shown(line))
        if kept:
            os.write(out_fd, kept)
    if pending and _shown(pending):
        os.write(out_fd, pending)
    os.close(read_fd)


def before_tensorflow(argv: list[str]) -> None:
    """Filter TensorFlow's C++ log unless asked for (call before TensorFlow is imported)."""
    if requested_verbosity(argv) >= 0:
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)  # C++ writes to descriptor 2 go through the filter
    os.close(write_fd)
    sys.stderr = open(terminal, "w", buffering=1, closefd=False)  # the terminal, for the whole run
    pump = threading.Thread(target=_pump, args=(read_fd, terminal), daemon=True)
    pump.start()

    def restore():
        os.dup2(terminal, 2)  # closes the pipe's last write end: the pump drains and ends
        pump.join(timeout=2.0)

    atexit.register(restore)


class _Lines(logging.Handler):
    """Records as lines written above any tqdm progress bar."""

    def __init__(self, verbosity: int):
        from absl import logging as absl_logging

        super().__init__(logging.DEBUG)
        self.verbosity = verbosity
        self.absl_format = absl_logging.PythonFormatter()  # absl's prefix, when verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbosity >= 0:
            return True
        if record.pathname.startswith(_PACKAGE_DIRS):
            return record.levelno >= logging.INFO
        if record.name.startswith("tensorflow"):
            return record.levelno >= logging.ERROR
        return record.levelno >= logging.WARNING

    def format(self, record: logging.LogRecord) -> str:
        if self.verbosity >= 0:
            return self.absl_format.format(record)
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # a logging call must never raise
            self.handleError(record)


def configure() -> None:
    """Route every Python log record through one ``_Lines`` handler (call in ``main``, after
    absl has parsed the flags: it sets ``--verbosity`` to 0 when the flag is not given)."""
    from absl import flags
    from absl import logging as absl_logging

    flag = flags.FLAGS["verbosity"]
    verbosity = flag.value if flag.present else -1
    root, tf_logger = logging.getLogger(), logging.getLogger("tensorflow")
    for logger in (root, tf_logger):  # TensorFlow adds its own handler if root had none
        for h in list(logger.handlers):
            logger.removeHandler(h)
    tf_logger.propagate = True
    root.addHandler(_Lines(verbosity))
    root.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
    absl_logging.get_absl_logger().setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
