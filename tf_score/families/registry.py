"""The model families: a ``Family`` entry is the whole family. It says how a run of the family
trains, loads, samples, evaluates and exports, which fields of config.json its training
records, and what a command may ask of one of its runs; ``api`` and the command lines call
the entry and never ask which family a run is.

    family = registry.get(cfg.network.model)
    result = family.train(cfg, workdir, strategy, progress, restart_from_scratch)
    run = family.load(workdir, cfg, checkpoint, posthoc_sigma_rel)

``register`` adds one (a plugin's), as ``sampling.register`` adds a solver.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

from tf_score import data, sampling
from tf_score.config import LABELLED_DATASETS, ConfigError, ExperimentConfig
from tf_score.export import savedmodel
from tf_score.families import classifier, outputs, score_model, vae, workdir
from tf_score.families.run import Run, RunError
from tf_score.networks import registry as networks
from tf_score.registries import Registry

#: what a command may ask of a run (``Family.requests``)
#: ("grid": sampled on any grid of sigmas given, not only the levels it was trained on)
#: ("guidance": conditioned on labels and guided, or guided by a weaker model)
REQUESTS = ("samples", "solvers", "grid", "inpaint", "metrics", "bits_per_dim", "evaluate",
            "export", "guidance")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family (see the module docstring)."""

    name: str
    #: (cfg, workdir, strategy, progress, restart_from_scratch) -> a result with ``summary()``
    train: Callable
    #: (workdir, cfg, checkpoint, posthoc_sigma_rel) -> Run
    load: Callable
    #: cfg -> the subset of ``REQUESTS`` its runs answer
    requests: Callable[[ExperimentConfig], frozenset]
    #: cfg -> None, or ConfigError naming the setting its runs cannot take (network, data)
    check: Callable[[ExperimentConfig], None] = lambda cfg: None
    #: (run, out_dir, seed, *, jit, snapshots, inpainting, progress, metrics_file) -> result
    sample: Callable | None = None
    #: (run, out_dir, seed, *, jit, progress) -> metrics
    evaluate: Callable | None = None
    #: (run, path, samplers, max_samples, max_evaluations) -> path
    export: Callable | None = None
    #: data fields its training records in config.json, which loading requires
    trained_fields: tuple[str, ...] = ("data_shape",)
    #: whether it trains under a tf.distribute strategy (else on one device)
    distributed: bool = True
    #: cfg -> {name: fn() -> a built model}: the models a checkpoint holds (None: the family
    #: saves its runs otherwise, and ships no pretrained weights)
    model_fns: Callable[[ExperimentConfig], dict] | None = None

    def refuse(self, cfg: ExperimentConfig, request: str, flag: str) -> None:
        """ConfigError naming ``flag`` unless this family's runs of ``cfg`` answer ``request``
        (one of ``REQUESTS``)."""
        assert request in REQUESTS, request
        if request not in self.requests(cfg):
            answered = ", ".join(sorted(self.requests(cfg))) or "nothing but training"
            raise ConfigError(
                f"{flag} does not apply to a {self.name} run of {cfg.data.dataset} "
                f"(network={cfg.network.network}); such a run answers: {answered}"
            )


_FAMILIES = Registry("model family", ConfigError)
#: the registered model families by name
FAMILIES: dict[str, Family] = _FAMILIES.entries
register, unregister, get = _FAMILIES.register, _FAMILIES.unregister, _FAMILIES.get


def of(run_or_cfg) -> Family:
    """The family of a ``Run`` or an ``ExperimentConfig``."""
    cfg = run_or_cfg.config if isinstance(run_or_cfg, Run) else run_or_cfg
    return get(cfg.network.model)


# --- the score model family ---------------------------------------------------------------------


def _score_requests(cfg: ExperimentConfig) -> frozenset:
    answers = {"samples", "solvers", "export", "guidance"}
    answers |= {"grid"} if networks.get(cfg.network.network).continuous else set()
    answers |= {"inpaint", "metrics", "bits_per_dim"} if cfg.is_image else {"evaluate"}
    return frozenset(answers)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _score_check(cfg: ExperimentConfig) -> None:
    """A registered score network that takes the data; loss=edm for exactly the continuous
    networks; a level-conditioned one on a geometric schedule."""
    spec, ds = networks.get(cfg.network.network), cfg.data.dataset
    kind = "images" if cfg.is_image else "points"
    fit = [n for n, s in networks.NETWORKS.items() if s.data == kind]
    _require(spec.data == kind, f"network={spec.name} does not fit dataset={ds}: it takes "
             f"{spec.data}; {kind} need network={' or '.join(fit)}")  # fmt: skip
    continuous = [n for n, s in networks.NETWORKS.items() if s.continuous]
    _require(
        spec.continuous == (cfg.loss.loss == "edm"),
        f"network={spec.name} needs loss={'edm' if spec.continuous else 'anneal_dsm (or dsm, ssm)'}"
        f": loss=edm trains the continuous-sigma denoisers ({', '.join(continuous)}) only",
    )
    classes = cfg.data.num_classes
    takes_labels = [n for n, s in networks.NETWORKS.items() if s.conditional]
    _require(not classes or spec.conditional,
             f"num_classes={classes}: network={spec.name} takes no class labels; "
             f"class-conditional networks: {', '.join(takes_labels)}")  # fmt: skip
    if classes and cfg.data.is_toy:
        toy_classes = len(data.get_toy(ds).weights)
        _require(classes == toy_classes, f"num_classes={classes}: dataset={ds} has "
                 f"{toy_classes} classes (its mixture components)")  # fmt: skip
    _require(
        spec.continuous or cfg.noise.schedule == "geometric",
        f"network={spec.name} is trained on its levels: schedule=geometric (karras grids are "
        f"for the continuous networks {', '.join(continuous)})",
    )


def _image_family_check(networks_taken: tuple[str, ...], labelled: bool = False):
    """The check of a family of image models with its own networks (no fid_every)."""

    def check(cfg: ExperimentConfig) -> None:
        family, ds = cfg.network.model, cfg.data.dataset
        _require(cfg.is_image, f"model={family} needs image data, not dataset={ds}")
        _require(
            cfg.network.network in networks_taken,
            f"model={family} takes network={' or '.join(networks_taken)}, not "
            f"{cfg.network.network}",
        )
        _require(not labelled or ds in LABELLED_DATASETS, f"model={family} needs labelled "
                 f"images: dataset={' or '.join(LABELLED_DATASETS)}")  # fmt: skip
        _require(
            not cfg.data.num_classes,
            f"num_classes is for class-conditional score models, not model={family}",
        )
        _require(not cfg.evaluation.fid_every,
                 f"fid_every is for image score models, not model={family}")  # fmt: skip

    return check


def with_data_mean(cfg: ExperimentConfig) -> ExperimentConfig:
    """The data's mean (and a class-conditional run's class means) recorded before training:
    the centres of the deterministic solvers' starts."""
    if cfg.data.data_mean is None:
        cfg = cfg.replace(data={"data_mean": score_model.data_mean(cfg)})
    if cfg.data.num_classes and not cfg.data.class_means:
        cfg = cfg.replace(data={"class_means": score_model.class_means(cfg)})
    return cfg


def _score_sample(run, out_dir, seed, jit=False, snapshots=False, inpainting=False,
                  progress=False, metrics_file=None, guide=None):  # fmt: skip
    if run.config.is_image and inpainting:
        return outputs.inpaint_test_images(run, out_dir, seed, jit)
    if run.config.is_image:
        return outputs.image_samples(run, out_dir, seed, jit, snapshots, progress, metrics_file,
                                     guide)  # fmt: skip
    return outputs.toy_samples(run, out_dir, seed, jit, guide)


def _score_evaluate(run, out_dir, seed, jit=False, progress=False):
    if run.config.is_image:  # an image model's evaluation is its bits/dim
        return outputs.bits_per_dim(run, out_dir, seed, progress)
    return outputs.toy_evaluation(run, out_dir, seed, jit)


def _score_export(run, path, samplers, max_samples, max_evaluations):
    cfg = run.config
    classes = None
    if cfg.data.num_classes:
        classes = savedmodel.Classes(cfg.data.num_classes, cfg.loss.label_dropout > 0)
    return savedmodel.export_score_model(
        run.models["score"], run.model, run.sigmas, run.space, path, sampler=cfg.sampler,
        samplers=tuple(samplers or (cfg.sampler.sampler,)), max_samples=max_samples,
        max_evaluations=max_evaluations, seeding=cfg.evaluation.seeding, classes=classes,
    )  # fmt: skip


def _score_models(cfg: ExperimentConfig) -> dict:
    return {"score": score_model.network_fn(cfg)}


SCORE = Family(
    "score",
    train=lambda cfg, wd, strategy, progress, restart: workdir.train_in_loop(
        cfg, wd, strategy, progress, restart, score_model.bundle, fill=with_data_mean
    ),
    load=lambda wd, cfg, checkpoint, posthoc: workdir.restore(
        wd, cfg, _score_models(cfg), checkpoint, posthoc, score_model.checkpoint_settings(cfg)
    ),
    model_fns=_score_models,
    requests=_score_requests,
    check=_score_check,
    sample=_score_sample,
    evaluate=_score_evaluate,
    export=_score_export,
    trained_fields=("data_shape", "data_mean"),
)


# --- the VAEs and the classifier ----------------------------------------------------------------

VAE = Family(
    "vae",
    train=lambda cfg, wd, strategy, progress, restart: workdir.train_in_loop(
        cfg, wd, strategy, progress, restart, vae.bundle
    ),
    load=lambda wd, cfg, checkpoint, posthoc: workdir.restore(
        wd, cfg, vae.model_fns(cfg), checkpoint, posthoc
    ),
    model_fns=vae.model_fns,
    requests=lambda cfg: frozenset({"samples", "evaluate", "export"}),
    check=_image_family_check(vae.ARCHS),
    sample=lambda run, out_dir, seed, progress=False, **_: outputs.vae_outputs(
        run, out_dir, seed, likelihood=False, progress=progress
    ),
    evaluate=lambda run, out_dir, seed, progress=False, **_: outputs.vae_outputs(
        run, out_dir, seed, likelihood=True, progress=progress
    ),
    export=lambda run, path, samplers, max_samples, max_evaluations: vae.export_vae(
        run.models, run.config, path, max_samples, max_evaluations=max_evaluations
    ),
)


def _load_classifier(wd: str, cfg: ExperimentConfig, checkpoint, posthoc) -> Run:
    if checkpoint or posthoc:
        raise RunError("a classifier run is one saved model: no --checkpoint or post-hoc EMA")
    return Run(wd, cfg, {"classifier": classifier.load_classifier(wd)}, 0)


CLASSIFIER = Family(
    "classifier",
    train=workdir.train_classifier,
    load=_load_classifier,
    requests=lambda cfg: frozenset(),
    check=_image_family_check(("conv", "noisy_conv"), labelled=True),
    distributed=False,
)

for _entry in (SCORE, VAE, CLASSIFIER):
    register(_entry, replace=True, builtin=True)


def check_model(cfg: ExperimentConfig) -> Family:
    """``cfg``'s family, once it is registered and takes ``cfg``'s network and data
    (ConfigError naming the setting otherwise)."""
    family = of(cfg)
    family.check(cfg)
    if cfg.evaluation.fid_every:
        _require(cfg.is_image, f"fid_every is for image score models, not dataset="
                 f"{cfg.data.dataset}")  # fmt: skip
    return family


@contextlib.contextmanager
def _sampler_check(prefix: str = ""):
    """A SamplerError raised in the block, as a ConfigError (``prefix`` first)."""
    try:
        yield
    except sampling.SamplerError as e:
        raise ConfigError(f"{prefix}{e}") from e


def check(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` once its family takes it (``check_model``) and its sampler settings fit the
    solver registry's schemas: the sampler's and the export's solvers' for a family sampled
    by solvers; for another, each value given must still be some solver's option (a name that
    is no setting is a typo). ConfigError naming the setting."""
    family = check_model(cfg)
    if "solvers" not in family.requests(cfg):
        with _sampler_check():
            for name, value in cfg.sampler.values:
                sampling.registry.check_value(name, value)
        return cfg
    with _sampler_check():
        sampling.check_config(cfg.sampler)
    for name in cfg.export.export_samplers:
        with _sampler_check("export_samplers: "):
            sampling.options_of(cfg.sampler, name)
    return cfg
