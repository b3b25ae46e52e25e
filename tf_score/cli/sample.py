"""Sample a trained run, plot, evaluate or export: flags -> one tf_score.api call -> a report.

    python run_sample.py --workdir=runs/toy_mixture                 # samples.npz + samples.png
    python run_sample.py --workdir=runs/toy_mixture --evaluate      # the two-mode comparison
    python run_sample.py --workdir=runs/mnist_cpu --sampler=heun --metrics=fid,kid \
        --classifier=runs/mnist_classifier                          # FID/KID with the floor
    python run_sample.py --workdir=runs/mnist_vae_ssm --evaluate      # VAE: AIS test NLL

The run is rebuilt from workdir/config.json and the EMA weights of the latest checkpoint; its
sampler settings are the workdir's, except those given on the command line; the evaluation
and export settings are this command's. Installed, the command is also ``tf-score-sample``
and ``python -m tf_score sample``.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import app

import tf_score.cli.definitions as F
from tf_score.cli import console, report


def _grid(n) -> str:
    rho = f", rho {n.rho:g}" if n.schedule == "karras" else ""
    return f"{n.schedule}, {n.num_levels} levels, sigma {n.sigma_max:g} -> {n.sigma_min:g}{rho}"


def _load(workdir, pretrained=None):
    """The run (of ``workdir``, or the ``pretrained`` model) with this command's settings over
    its own (``F.sample_config``: the sampler's, the evaluation and export sections, a
    continuous model's sampling grid), every flag checked before a weight is read."""
    from tf_score import api  # loaded with the run, after the flags
    from tf_score.families import pretrained as shipped  # beside api.load_pretrained

    data_dir = F.FLAGS["data_dir"].value if F.FLAGS["data_dir"].present else None
    if pretrained and (workdir or F.FLAGS.checkpoint or F.FLAGS.posthoc_sigma_rel):
        raise app.UsageError("--pretrained is a trained model already: give no --workdir, "
                             "--checkpoint or --posthoc_sigma_rel with it")  # fmt: skip
    where = shipped.directory(pretrained) if pretrained else workdir
    cfg = F.sample_config(api.read_config(where, data_dir), F.typed(sys.argv))
    if F.FLAGS.checkpoint and F.FLAGS.posthoc_sigma_rel:
        raise app.UsageError("--checkpoint and --posthoc_sigma_rel: give one of them")
    if pretrained:
        run = api.load_pretrained(pretrained, data_dir)
    else:
        run = api.load(workdir, F.FLAGS.checkpoint, data_dir, F.FLAGS.posthoc_sigma_rel)
    if cfg.noise != run.config.noise:
        print(f"sampling grid: {_grid(cfg.noise)} (trained run's: {_grid(run.config.noise)})")
    return dataclasses.replace(run, config=cfg)


def _check_request(run) -> None:
    """Everything this command asks of the run is what its family answers (one line naming
    the flag otherwise), before any work."""
    from tf_score import api  # loaded with the run, after the flags

    entry, cfg = api.of(run), run.config
    asked = sorted(F.typed(sys.argv) & F.sampler_flags())
    if asked:
        entry.refuse(cfg, "solvers", f"--{asked[0]}")
    evaluate = F.FLAGS.evaluate and not cfg.evaluation.bits_per_dim
    for request, flag, given in (
        ("bits_per_dim", "--bits_per_dim", cfg.evaluation.bits_per_dim),
        ("evaluate", "--evaluate", evaluate), ("metrics", "--metrics", cfg.evaluation.metrics),
        ("inpaint", "--inpaint", F.FLAGS.inpaint),
        ("export", "--export_dir", cfg.export.export_dir),
        ("guidance", "--labels", cfg.evaluation.labels),
        ("guidance", "--guidance", cfg.evaluation.guidance != 1.0),
    ):  # fmt: skip
        if given:
            entry.refuse(cfg, request, flag)
    if cfg.evaluation.metrics and F.FLAGS.inpaint:
        raise app.UsageError("--metrics measures samples, not --inpaint: give one of them")


def _main(run) -> None:
    from tf_score import api  # loaded with the run, after the flags

    _check_request(run)
    if run.config.export.export_dir:
        path = F.export(run, run.config)
        print(f"exported step {run.step} for TF Serving: {path}")
        return
    shipped = os.path.join("runs", "pretrained", os.path.basename(run.workdir))
    out_dir = F.FLAGS.output_dir or (shipped if run.read_only else run.workdir)
    api.check_writable(out_dir, "--output_dir")  # before any work: nothing computed is lost
    common = dict(seed=F.FLAGS.seed, jit=F.FLAGS.jit, progress=F.FLAGS.progress)
    if run.config.evaluation.bits_per_dim or F.FLAGS.evaluate:
        result, action = api.evaluate(run, out_dir, **common), "evaluate"
    else:
        action = "inpaint" if F.FLAGS.inpaint else "images" if run.config.is_image else "toy"
        result = api.sample(run, out_dir, snapshots=F.FLAGS.snapshots, inpainting=F.FLAGS.inpaint,
                            metrics_file=F.FLAGS.metrics_file, **common)  # fmt: skip
    report.report(run, out_dir, result, action)


def _overview(workdirs: list[str], out_dir: str) -> None:
    """The toys' picture, and where a newcomer looks next."""
    from tf_score import api  # loaded with the run, after the flags

    try:
        for w in workdirs:  # each is a run, and every flag's value is valid, before any work
            F.sample_config(api.read_config(w), typed_names=set())
    except api.RunError as e:
        raise api.RunError(f"--overview: {e}") from e
    api.check_writable(out_dir, "--output_dir")
    path = api.toy_overview(workdirs, os.path.join(out_dir, "overview.png"))
    print(f"\nthe picture: {path}")
    spec = ",".join(f"{os.path.basename(os.path.normpath(w))}:{w}/tb" for w in workdirs)
    print(f"training curves: tensorboard --logdir_spec={spec}")
    for w in workdirs:
        export = os.path.join(w, "export")
        for name in sorted(os.listdir(export)) if os.path.isdir(export) else []:
            print(f"serve the export: tensorflow_model_server --rest_api_port=8501 "
                  f"--model_name={name} --model_base_path=$PWD/{export}/{name}  "
                  "(docker and requests: docs/serving.md)")  # fmt: skip


def main(argv):
    console.configure()
    with F.one_line_usage_errors():
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        from tf_score import api, config, sampling  # the library, once the flags are parsed
        from tf_score.families import evaluate  # (with it)
        from tf_score.training import signals  # (with it)

        try:
            F.load_plugins()
            with signals.exit_on_interrupt("stopped (results are written only when complete)"):
                if F.FLAGS.overview:
                    _overview(F.FLAGS.overview, F.FLAGS.output_dir or ".")
                else:
                    _main(_load(F.FLAGS.workdir, F.FLAGS.pretrained))
        except (
            config.ConfigError,
            api.RunError,
            evaluate.EvaluationError,
            sampling.SamplerError,
        ) as e:
            raise app.UsageError(str(e)) from e


def run() -> None:
    """The command (``tf_score.cli.sample``, once ``cli.start`` has run): the flags, then
    ``main``."""
    from absl import flags

    flags.register_multi_flags_validator(
        ["workdir", "overview", "pretrained"],
        lambda f: bool(f["workdir"] or f["overview"] or f["pretrained"]),
        message="--workdir is required (or --pretrained=NAME: a model shipped with tf_score; "
        "or --overview=W1,W2: the toys' picture)",
    )  # fmt: skip
    # Ctrl-C while the flags are parsed: one line (main reports the rest)
    F.run(main, F.sample_flags())
