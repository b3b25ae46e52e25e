"""The command lines: ``run_train`` (run_train.py, ``tf-score-train``, ``python -m tf_score
train``; the command is ``cli.train``) and ``run_sample`` (run_sample.py, ``tf-score-sample``,
``python -m tf_score sample``; ``cli.sample``).

absl lives here and in the two scripts only; the library takes an ``ExperimentConfig``.
This module imports nothing heavy: each command first guards Ctrl-C and filters
TensorFlow's C++ log (``start``), then loads the flags and, with them, TensorFlow.
"""

from __future__ import annotations

import importlib
import sys

from tf_score.cli import console, startup

#: the commands of ``python -m tf_score``
COMMANDS = ("train", "sample")


def start() -> None:
    """Before TensorFlow is imported: Ctrl-C is one line (``startup``), TensorFlow's C++ log
    shows only if asked for (``console``)."""
    startup.guard()
    console.before_tensorflow(sys.argv)


def _run(command) -> None:
    """``command.run()``; its docstring is the help text (absl's usage reads ``__main__``'s,
    which a console script or ``python -m`` lacks)."""
    main = sys.modules.get("__main__")
    if main is not None and not (getattr(main, "__doc__", None) or "").strip():
        main.__doc__ = command.__doc__
    command.run()


def run_train() -> None:
    """Train a model: flags -> ExperimentConfig -> api.train (``cli.train``)."""
    start()
    _run(importlib.import_module("tf_score.cli.train"))  # after start: it loads TensorFlow


def run_sample() -> None:
    """Sample, evaluate or export a trained run (``cli.sample``)."""
    start()
    _run(importlib.import_module("tf_score.cli.sample"))  # after start: it loads TensorFlow


def main(argv: list[str] | None = None) -> None:
    """``python -m tf_score COMMAND [flags]``: one of ``COMMANDS``, its flags after it."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        got = f"got {argv[1]!r}" if len(argv) > 1 else "no command given"
        print(f"usage: python -m tf_score {{{','.join(COMMANDS)}}} [flags] "
              f"(--help after the command lists its flags); {got}", file=sys.stderr)  # fmt: skip
        sys.exit(2)
    sys.argv = [f"{argv[0]} {argv[1]}", *argv[2:]]
    main_module = sys.modules.get("__main__")
    if main_module is not None:
        main_module.__doc__ = None  # the command's help, not this dispatcher's (``_run``)
    {"train": run_train, "sample": run_sample}[argv[1]]()
