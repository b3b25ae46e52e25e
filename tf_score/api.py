"""The Python API of a run: train into a workdir, load it, generate, inpaint, export.

    from tf_score import config

    from tf_score import api

    cfg = config.from_flat(dict(dataset="two_mode", num_steps=500, sigma_max=20.0))
    api.train(cfg, "/tmp/toy")                       # writes config.json, resumes if present
    run = api.load("/tmp/toy")                       # config, EMA models, step, score
    digits = api.load_pretrained("mnist_edm_cond")   # a trained model shipped in the box
    out = api.generate(run, 1000, seed=0, sampler="heun")
    api.export(run, "/tmp/export")                   # SavedModel for TF Serving

A workdir describes itself (``families.workdir``); whoever trained it (this API or
``run_train.py``), anything can load it. Each call goes to the run's model family
(``families.registry``: score networks, VAEs, the classifier, and any a plugin registers).
"""

from __future__ import annotations

import os

from tf_score import config as config_lib
from tf_score import data
from tf_score.config import ConfigError, ExperimentConfig, ExportConfig
from tf_score.export import savedmodel as export_lib
from tf_score.families import evaluate as evaluations  # api.evaluate is the call
from tf_score.families import outputs
from tf_score.families import pretrained as pretrained_models
from tf_score.families.registry import check, of
from tf_score.families.run import (  # noqa: F401  (the API's calls and types, defined there)
    Generated,
    NonFiniteSamplesError,
    Run,
    RunError,
    generate,
    generate_from,
    inpaint,
    sampler_config,
)
from tf_score.families.workdir import (  # noqa: F401  (the API's calls, defined there)
    check_resume,
    check_writable,
    config_path,
    native_bfloat16,
    read_config,
)


def train(cfg: ExperimentConfig, workdir: str, strategy=None, progress: bool = True,
          restart_from_scratch: bool = False):  # fmt: skip
    """Train (or resume) ``cfg`` in ``workdir`` as its family trains (``families.registry``):
    checks, loads the data, writes ``config.json`` (chief only), trains. Returns the family's
    result (``loop.TrainResult``; ``classifier.ClassifierResult``). A workdir whose checkpoints
    are all unusable (damaged, orphaned, set aside) is refused unless
    ``restart_from_scratch``: then they are kept aside and training starts at step 0."""
    check(cfg)  # the family's train checks the workdir (``workdir.check_resume``) first
    return of(cfg).train(cfg, workdir, strategy, progress, restart_from_scratch)


def load(workdir: str, checkpoint: str | None = None, data_dir: str | None = None,
         posthoc_sigma_rel: float = 0.0) -> Run:  # fmt: skip
    """Load a trained workdir of any family: its config and the EMA weights of the newest
    good checkpoint (or ``checkpoint``, a prefix); ``posthoc_sigma_rel``: the post-hoc EMA of
    that width instead (``families.workdir.restore``). A config.json that lacks a field its
    family's training records is refused, naming the field."""
    from tf_score.families import workdir as workdirs  # the module; ``workdir`` is the path

    cfg = read_config(workdir, data_dir)
    entry = of(cfg)
    workdirs.check_trained_fields(workdir, cfg, entry.trained_fields)
    return entry.load(workdir, cfg, checkpoint, posthoc_sigma_rel)


#: the trained models shipped with tf_score
pretrained_names = pretrained_models.names


def load_pretrained(name: str, data_dir: str | None = None) -> Run:
    """A trained model shipped with tf_score (``pretrained_names()`` lists them) as a ``Run``,
    as ``load`` gives a workdir's, once its weights file matches the checksum in its
    provenance (``families.pretrained``); ``data_dir``: where its data set lives, for
    evaluation."""
    return pretrained_models.load(name, data_dir)


def export(
    run: Run,
    export_dir: str,
    model_name: str | None = None,
    samplers: tuple[str, ...] | None = None,
    max_samples: int = ExportConfig.export_max_samples,
    max_evaluations: int = ExportConfig.export_max_evaluations,
) -> str:
    """Write the run's EMA models as a SavedModel for TF Serving to
    ``export_dir/<model_name>/<step>/`` (``model_name`` defaults to the workdir's name): for
    a score model ``serving_default`` samples with the run's sampler and its options and
    ``sample_<name>`` serves each of ``samplers`` (default: the run's) with its options as
    inputs (``export.savedmodel.export_score_model``); a VAE's endpoints are
    ``vae.export_vae``'s. Requests are capped. Returns the path."""
    entry = of(run)
    entry.refuse(run.config, "export", "--export_dir")
    name = config_lib.check_model_name(
        model_name or os.path.basename(os.path.normpath(run.workdir))
    )
    check_writable(export_dir, "--export_dir")
    path = export_lib.version_dir(export_dir, name, max(int(run.step), 1))
    return entry.export(run, path, samplers, max_samples, max_evaluations)


# --- sample and evaluate into a directory (what run_sample.py does) ------------------------------


def sample(
    run: Run, out_dir: str, seed: int = 0, jit: bool = False, snapshots: bool = False,
    inpainting: bool = False, progress: bool = False, metrics_file: str | None = None,
):  # fmt: skip
    """Samples of any family, with their figures, written into ``out_dir`` (settings: the
    run's ``sampler`` and ``evaluation`` sections): a toy's samples.npz / .png; an image
    model's samples (and snapshots, and FID / KID with ``evaluation.metrics``) or, with
    ``inpainting``, inpainted test images (the right half); a VAE's prior samples and
    reconstructions. Returns what ``families.outputs`` computed. Score models are conditioned
    and guided per the evaluation section (``labels``, ``guidance``, ``guide_*``)."""
    entry = of(run)
    entry.refuse(run.config, "samples", "sampling")
    if inpainting:
        entry.refuse(run.config, "inpaint", "--inpaint")
    guide = load_guide(run)
    extra = {"guide": guide} if guide is not None else {}
    return entry.sample(run, out_dir, seed, jit=jit, snapshots=snapshots, inpainting=inpainting,
                        progress=progress, metrics_file=metrics_file, **extra)  # fmt: skip


def load_guide(run: Run) -> Run | None:
    """The weaker run that guides ``run``'s samples by autoguidance, per its evaluation
    section: ``guide_workdir`` (default: the run's own) at ``guide_checkpoint`` or with the
    post-hoc EMA ``guide_sigma_rel``; None when none is set."""
    ev = run.config.evaluation
    if not (ev.guide_workdir or ev.guide_checkpoint or ev.guide_sigma_rel):
        return None
    of(run).refuse(run.config, "guidance", "--guide_workdir")
    return load(
        ev.guide_workdir or run.workdir,
        ev.guide_checkpoint,
        data_dir=run.config.data.data_dir,
        posthoc_sigma_rel=ev.guide_sigma_rel,
    )


def evaluate(run: Run, out_dir: str, seed: int = 0, jit: bool = False,
             progress: bool = False) -> dict:  # fmt: skip
    """The run's evaluation, written into ``out_dir`` (metrics.json or bits_per_dim.json and
    figures): the two-mode comparison of a toy, the AIS / IWAE likelihood of a VAE, or an
    image score model's bits/dim (``evaluation.bits_per_dim`` test images)."""
    entry = of(run)
    request = "bits_per_dim" if run.config.evaluation.bits_per_dim else "evaluate"
    entry.refuse(run.config, request, f"--{request}")
    return entry.evaluate(run, out_dir, seed, jit=jit, progress=progress)


def toy_overview(workdirs: list[str], path: str) -> str:
    """One PNG of the 2-D toy workdirs' evaluations (``evaluate`` wrote their panels), a row
    each: data, plain and annealed Langevin of an NCSN toy, the solvers of an EDM toy."""
    cfgs = [read_config(w) for w in workdirs]
    bad = [w for w, c in zip(workdirs, cfgs, strict=True) if not c.data.is_toy]
    if bad:
        raise ConfigError(f"the overview is of 2-D toy runs, not {', '.join(bad)}")
    extent = max(data.get_toy(c.data.dataset).extent for c in cfgs)
    try:
        return outputs.toy_overview(list(workdirs), path, extent)
    except evaluations.EvaluationError as e:
        raise RunError(str(e)) from e
