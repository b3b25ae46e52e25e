"""Train a model: flags -> ExperimentConfig -> tf_score.api.train(config, workdir).

    python run_train.py --flagfile=flags/presets/toy_mixture.cfg --workdir=runs/toy_mixture
    python run_train.py ... --evaluate        # then run_sample.py --evaluate, in this process
    tf-score-train ... / python -m tf_score train ...   # the same command, installed

Re-running with the same --workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import os
import sys

from absl import app, logging

import tf_score.cli.definitions as F
from tf_score.cli import console, report


def _fail(e: Exception, code: int = 2):
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(code)


def _print_result(result) -> None:
    print(result.summary(), flush=True)


def _newest_step(workdir: str | None) -> int:
    """The step of the newest complete checkpoint in ``workdir`` (-1: none; unread)."""
    from tf_score.training import checkpoints  # loaded with the run, after the flags

    if not workdir:
        return -1
    entries = checkpoints.inventory(os.path.join(workdir, "checkpoints"), verify=False).entries
    return max((e.step for e in entries if e.status == checkpoints.GOOD), default=-1)


def _interrupted(workdir: str, newest_before: int) -> None:
    """Ctrl-C outside the training loop (which saves and reports on its own): one line."""
    newest = _newest_step(workdir)
    if newest > newest_before:  # the loop ran and saved; what follows it did not finish
        message = (f"interrupted after training to step {newest} (checkpoint saved): run the "
                   "same command again for the final summaries and the export")  # fmt: skip
    else:
        message = "interrupted during start-up, before any training step; no checkpoint written"
    print(message, file=sys.stderr, flush=True)
    sys.exit(130)


def main(argv):
    console.configure()
    with F.one_line_usage_errors():
        newest = _newest_step(F.FLAGS.workdir)
        try:
            _train(argv)
        except KeyboardInterrupt:  # not TrainingInterrupted: _train reports that one
            _interrupted(F.FLAGS.workdir, newest)


def _train(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tf_score import api, config, data  # the library: loaded once the flags are parsed
    from tf_score.training import checkpoints, distribute, loop  # (with it)

    workdir = F.FLAGS.workdir
    try:
        F.load_plugins()
        cfg = F.experiment_config()
        _check_evaluate(cfg)
        api.check_resume(workdir, cfg)
    except (config.ConfigError, api.RunError) as e:
        raise app.UsageError(str(e)) from e
    try:
        # First: a multi-worker strategy must exist before any other TensorFlow work.
        strategy = F.strategy(cfg) if api.of(cfg).distributed else None
    except distribute.StrategyError as e:
        _fail(e)
    where = (
        f"{cfg.distribute.strategy}, {distribute.task_name(strategy)}" if strategy else "one device"
    )
    print(
        f"training {cfg.network.model} ({cfg.network.network}) on {cfg.data.dataset} for "
        f"{cfg.train.num_steps} steps ({where}) -> {workdir}",
        flush=True,
    )
    try:
        if cfg.export.export_dir and distribute.is_chief(strategy):
            api.check_writable(cfg.export.export_dir, "--export_dir")  # before training
        result = api.train(
            cfg,
            workdir,
            strategy,
            progress=F.FLAGS.progress,
            restart_from_scratch=F.FLAGS.restart_from_scratch,
        )
    except (
        config.ConfigError,
        api.RunError,
        data.DataUnavailableError,
        checkpoints.CheckpointError,
    ) as e:
        # Data and setting problems are reported before anything is written.
        _fail(e)
    except loop.NonFiniteLossError as e:
        logging.error("%s", e)
        _fail(e, 3)
    except loop.WorkerLostError as e:
        _fail(e, 4)
    except loop.TrainingInterrupted as e:
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        sys.exit(128 + int(e.signum))
    _print_result(result)
    if not distribute.is_chief(strategy):
        return
    if cfg.export.export_dir or F.FLAGS.evaluate:
        run = api.load(workdir)
    if cfg.export.export_dir:
        path = F.export(run, cfg)
        print(f"exported the EMA weights for TF Serving: {path}", flush=True)
    if F.FLAGS.evaluate:
        _evaluate(run)


def _check_evaluate(cfg) -> None:
    """--evaluate after training: what the family's runs answer (a toy's two-mode comparison,
    a VAE's test likelihood)."""
    from tf_score import api  # loaded with the run, after the flags

    if F.FLAGS.evaluate:
        api.of(cfg).refuse(cfg, "evaluate", "--evaluate after training")


def _evaluate(run) -> None:
    """run_sample.py --evaluate of the trained run, into its workdir, timed."""
    import dataclasses
    import time

    from tf_score import api  # loaded with the run, after the flags

    t0 = time.time()
    # this command's evaluation section and sampler settings (a workdir keeps only the run's)
    run = dataclasses.replace(run, config=F.sample_config(run.config, typed_names=set()))
    result = api.evaluate(run, run.workdir, seed=F.FLAGS.seed, jit=F.FLAGS.jit,
                          progress=F.FLAGS.progress)  # fmt: skip
    report.report(run, run.workdir, result, "evaluate")
    print(f"evaluated in {time.time() - t0:.1f} s", flush=True)


def run() -> None:
    """The command (``tf_score.cli.train``, once ``cli.start`` has run): the flags, then
    ``main``."""
    from absl import flags

    flags.mark_flag_as_required("workdir")
    # Ctrl-C while the flags are parsed: one line (main reports the rest)
    F.run(main, F.train_flags())
