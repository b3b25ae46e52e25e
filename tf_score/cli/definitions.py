"""Every command-line flag, generated from one table.

A flag is either a field of ``tf_score.config.ExperimentConfig`` (same name, same default,
read from the dataclasses; the sampler options from the solver registry's schema) or an
argument of the library call the command makes (``COMMAND``: where the workdir is, which
action). ``HELP`` says what each is; ``experiment_config`` maps the flags to a config in one
place, and the library validates it (``ConfigError``), which the CLIs report as a usage error
before any work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import os
import sys
import typing

from absl import app, flags

from tf_score import config as C
from tf_score import sampling
from tf_score.cli import startup

FLAGS = flags.FLAGS

#: what every config field means (the sampler options' help is the registry's)
HELP = {
    # data
    "dataset": "A 2-D toy, a tfds image data set, or folder / npz.",
    "data_dir": "tfds data_dir (default: tfds' own).",
    "download": "Let tfds download and prepare a missing data set.",
    "data_path": "Image folder or .npz for --dataset=folder / npz.",
    "image_size": "Resize folder images to this square size (0: keep).",
    "random_flip": "Random horizontal flips for folder / npz data.",
    "binarize": "Dynamically binarise images for the VAE's Bernoulli decoder.",
    "num_classes": "Classes of a class-conditional model (0: unconditional): a toy's mixture "
    "components, a tfds data set's labels, a folder's class subfolders, an .npz's 'labels'.",
    # network
    "model": "Model family: score (a noise-conditional score network), vae (the score-entropy "
    "VAE or its Gaussian baseline, --vae_encoder) or classifier (the digit classifier whose "
    "features give classifier FID/KID).",
    "network": "Architecture: score: mlp (2-D toys, the default), resnet, refinenet (NCSN), and "
    "the continuous-sigma denoisers edm_mlp (2-D) and edm_unet (--loss=edm); vae: mlp "
    "(default), conv; classifier: conv.",
    "ngf": "Base width of the image networks.",
    "channel_mults": "ResNet / U-Net width multiplier per resolution stage.",
    "num_res_blocks": "ResNet / U-Net blocks per stage.",
    "hidden_units": "MLP hidden layer widths.",
    "embed_dim": "edm_mlp: width of the noise embedding and of its projection into each hidden "
    "layer (0: the first hidden width).",
    "activation": "MLP activation.",
    "log_sigma_input": "Feed log(sigma_i) to the MLP as an extra input.",
    "scale_by_sigma": "Parameterise s(x, i) = f(x, i) / sigma_i (NCSNv2).",
    "precision": "Keras dtype policy (losses and chains stay float32).",
    "vae_encoder": "implicit (score-entropy) or gaussian (baseline).",
    "latent_dim": "VAE latent dimension (paper: 8 or 32).",
    # noise
    "sigma_max": "Largest noise level sigma_1.",
    "sigma_min": "Smallest noise level sigma_L.",
    "num_levels": "Noise levels L (continuous models: the sampling grid).",
    "schedule": "Levels: geometric, or karras (EDM's rho grid; continuous models only).",
    "rho": "Exponent of the karras grid.",
    "sigma_data": "Continuous: data std in the network's scale.",
    "sigma_dist": "Continuous: training sigmas.",
    "p_mean": "Continuous, lognormal: mean of ln sigma (network scale).",
    "p_std": "Continuous, lognormal: std of ln sigma.",
    "parameterization": "Continuous: edm preconditioning (c_skip, c_out, c_in) or ncsnv2 "
    "(s = F / sigma).",
    # loss, optimiser
    "loss": "Objective, a function of tf_score.losses ('dsm' is single-level: --num_levels=1).",
    "anneal_power": "lambda(sigma) = sigma^anneal_power.",
    "n_particles": "Projections per example for SSM.",
    "projection": "SSM projection distribution.",
    "label_dropout": "Class-conditional models: the fraction of training labels replaced by "
    "'no label', so one network is the conditional and the unconditional denoiser.",
    "optimizer": "Optimizer of every objective.",
    "learning_rate": "Learning rate.",
    "grad_clip_norm": "Clip gradients by global norm (0: off).",
    "lr_schedule": "constant, or cosine decay from --learning_rate to 0 at --num_steps.",
    "lr_warmup_steps": "Linear learning-rate warm-up from 0 over this many steps.",
    # train
    "num_steps": "Training steps.",
    "batch_size": "Global batch size.",
    "log_every": "Steps between TensorBoard scalars.",
    "checkpoint_every": "Steps between checkpoints.",
    "keep_checkpoints": "Checkpoints to keep.",
    "sample_every": "Steps between TensorBoard samples (0: at the end).",
    "ema_rate": "EMA decay of the weights (0: no averaging).",
    "ema_warmup": "Ramp the EMA decay as min(ema_rate, (1+t)/(10+t)).",
    "posthoc_ema": "Post-hoc EMA (EDM2): widths sigma_rel of the power-function EMA profiles "
    "tracked in training, snapshotted with every checkpoint into WORKDIR/posthoc_ema/ (e.g. "
    "0.05,0.10; empty: none); sample any width in between with run_sample.py "
    "--posthoc_sigma_rel.",
    "jit": "XLA-compile the training step (the whole step on one device) and the solvers.",
    "steps_per_loop": "Steps per compiled call.",
    "grad_accum_steps": "Micro-batches per replica per step, gradients summed: --batch_size is "
    "still the global batch. R replicas x A micro-batches train exactly like 1 replica x R*A.",
    # sampler
    "sampler": "Solver, a name in the registry; run_sample.py uses the workdir's unless this is "
    "given. Built in: "
    + "; ".join(f"{s.name} ({s.help})" for s in sampling.SAMPLERS.values())
    + ". Network evaluations per sample: docs/glossary.md.",
    # evaluation
    "num_samples": "Samples (toys: per batch of chains).",
    "sample_batch_size": "Chains run at once on image models (0: all --num_samples together); "
    "the adaptive ODE's evaluation count depends on the batch (--seeding).",
    "eval_repeats": "--evaluate on the toys: draws of num_samples pooled for the metrics (an "
    "NCSN toy: batches of one seed; a continuous toy: one per sampling seed, each tested).",
    "num_permutations": "--evaluate on the 2-D toys: permutations of the two-sample test.",
    "metrics": "Image models: fid and/or kid of --num_samples samples against the training set, "
    "with the real-vs-real floor (as many test images) and the label histogram.",
    "feature_extractor": "--metrics feature space: classifier (the 128-d features of "
    "--classifier) or inception (Inception-v3 pool features, RGB data; --inception_weights).",
    "classifier": "The saved classifier (.keras file or its workdir) for --metrics and "
    "--fid_every.",
    "fid_every": "Training image models: classifier FID (needs --classifier) of --fid_samples "
    "samples and its real-vs-real floor, TensorBoard scalars every this many steps (0: off).",
    "fid_samples": "Samples (and held-out test images of the floor) of --fid_every.",
    "max_evaluations": "run_sample.py: refuse sampling whose work, --num_samples x network "
    "evaluations x the network's cost per evaluation (max(1, MFLOPs of one evaluation)), is "
    "above this (0: no cap; the unit of --export_max_evaluations).",
    "labels": "Class-conditional models: the samples' classes, one for all or one per sample "
    "(--class=3 is --labels=3; none: unconditional samples).",
    "guidance": "Guidance weight w: D = D_ref + w (D - D_ref) with D_ref the unconditional "
    "model (classifier-free, with --labels) or the --guide_* model (autoguidance), or "
    "D_ref + w sigma^2 grad log p(y | x) (a classifier --guide_workdir); 1: none.",
    "guidance_interval": "lo,hi: guide only for sigma in [lo, hi] (Kynkaanniemi et al. 2024).",
    "guide_workdir": "Autoguidance: the weaker run's workdir (smaller or trained shorter; "
    "default: this run's own, with --guide_checkpoint or --guide_sigma_rel); classifier "
    "guidance: a noise-conditional classifier's (mnist_noisy_classifier.cfg).",
    "guide_checkpoint": "Autoguidance: the guide's checkpoint (an earlier one), a path prefix.",
    "guide_sigma_rel": "Autoguidance: the guide's post-hoc EMA width (a short one, e.g. 0.03).",
    "seeding": "per_sample: sample i of --seed=s is the same at any --sample_batch_size and "
    "in a served call seeded (s, i); batch: batch b seeded (s, b), as before per-sample seeding.",
    "inception_weights": "'imagenet' (Keras downloads them once) or the path of "
    "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5.",
    "ais_chains": "AIS chains per test example.",
    "ais_temperatures": "AIS intermediate distributions.",
    "ais_leapfrog_steps": "HMC leapfrog steps in AIS.",
    "eval_examples": "Test examples for the VAE likelihood.",
    "eval_batch": "Test examples per AIS or bits/dim batch.",
    "iwae_samples": "Samples of the IWAE bound.",
    "bits_per_dim": "Image score models: instead of sampling, the probability-flow ODE's "
    "bits/dim of this many dequantised test images (--eval_batch at once, --ode_tol; 0: off).",
    # export
    "export_dir": "Write a SavedModel for TF Serving to EXPORT_DIR/<export_model_name>/<step>/: "
    "at the end of run_train.py, or from the latest checkpoint with run_sample.py (which then "
    "exits).",
    "export_model_name": "Model name in the export layout (default: the workdir's name).",
    "export_samplers": "Solvers the export serves as sample_<name>, with their float and int "
    "options as request inputs (default: the run's sampler); serving_default is always the "
    "run's sampler.",
    "export_max_samples": "Largest num_samples one request to the export may ask for.",
    "export_max_evaluations": "Largest total work of one request to the export: num_samples x "
    "network evaluations per sample (the export's `limits` signature returns every cap).",
    # distribute
    "strategy": "tf.distribute strategy: default (one device), mirrored (all local GPUs, or "
    "--devices), multi_worker_mirrored (workers from TF_CONFIG), tpu (--tpu).",
    "devices": "Devices of --strategy=mirrored, e.g. /gpu:0,/gpu:1 (default: all GPUs).",
    "tpu": "TPU name or grpc:// address for --strategy=tpu.",
    "cpu_devices": "Split the host CPU into this many logical devices (0: leave it whole); with "
    "--strategy=mirrored, one replica each (multi-replica runs without accelerators).",
    "collective_timeout": "Multi-worker: seconds a worker waits without a step for the others "
    "before the run stops, exit code 4 (0: no limit; the coordination service still reports a "
    "dead worker). Set it above the chief's pauses (sample grids, FID) and a step's time.",
    "seed": "Random seed (training and sampling are reproducible).",
}
#: fields a run fills in itself (no flag)
DERIVED = ("data_shape", "data_mean", "class_means")
#: flags that are arguments of the library call, not config fields: name -> (kind, default, help)
COMMAND = {
    "workdir": ("string", None, "Directory for checkpoints, TensorBoard, figures."),
    "progress": ("boolean", True, "Show progress bars."),
    "restart_from_scratch": ("boolean", False, "run_train.py on a workdir whose checkpoints "
                             "are all unusable (damaged, orphaned, set aside before): train "
                             "again from step 0, keeping them in checkpoints/damaged/ and "
                             "orphaned/ (without it such a workdir is refused, nothing changed)."),
    "output_dir": ("string", None, "Where run_sample.py writes samples, figures and metrics "
                   "(default: --workdir; give one to sample a run you cannot write to)."),
    "checkpoint": ("string", None, "Checkpoint prefix to sample from (default: the latest)."),
    "pretrained": ("string", None, "Sample a trained model shipped with tf_score instead of "
                   "a workdir (tf_score/pretrained/NAME; default --output_dir: "
                   "runs/pretrained/NAME)."),
    "posthoc_sigma_rel": ("float", 0.0, "Sample the post-hoc EMA of this relative width "
                          "(EDM2), reconstructed from the snapshots of a run trained with "
                          "--posthoc_ema, instead of the checkpoint's EMA (0: that one)."),
    "evaluate": ("boolean", False, "The two-mode sampler comparison (toys) or the VAE test "
                 "likelihood by AIS (and IWAE); writes metrics.json (run_train.py: of the "
                 "trained run, into --workdir, in the same process)."),
    "inpaint": ("boolean", False, "Inpaint the right half of test images instead of sampling."),
    "overview": ("list", [], "Instead of sampling: one picture of these 2-D toy workdirs' "
                 "--evaluate results, a row each, into OUTPUT_DIR/overview.png."),
    "snapshots": ("boolean", False, "Also write the chain after every solver step (strip + GIF)."),
    "metrics_file": ("string", None, "Where --metrics writes its JSON (default "
                     "OUTPUT_DIR/quality_SAMPLER.json)."),
    "plugins": ("list", [], "Python modules (dotted names or .py files) imported first, e.g. "
                "ones that register solvers with tf_score.sampling.register."),
    "sampler_options": ("list", [], "name=value pairs of sampler options that have no flag of "
                        "their own (solvers of --plugins)."),
}  # fmt: skip

#: the choices of the config's enumerated fields
CHOICES = {
    "dataset": C.DATASETS,
    "activation": C.ACTIVATIONS, "precision": C.PRECISIONS, "vae_encoder": C.VAE_ENCODERS,
    "schedule": C.SCHEDULES, "sigma_dist": C.SIGMA_DISTS, "loss": C.SCORE_LOSSES,
    "parameterization": C.PARAMETERIZATIONS, "projection": C.PROJECTIONS,
    "optimizer": C.OPTIMIZERS, "lr_schedule": C.LR_SCHEDULES,
    "feature_extractor": C.FEATURE_EXTRACTORS,
    "seeding": C.SEEDINGS,
    "strategy": C.STRATEGIES,
}  # fmt: skip


def _define(name: str, hint: str, default, help_: str) -> None:
    """One flag of a config field of type ``hint`` (the dataclass annotation)."""
    if name in CHOICES:
        flags.DEFINE_enum(name, default or None, list(CHOICES[name]), help_)
    elif hint.startswith("tuple"):
        flags.DEFINE_list(name, [str(v) for v in default], help_)
    else:
        kind = {"bool": "boolean", "int": "integer", "float": "float"}.get(hint, "string")
        default = None if kind == "string" and default == "" else default  # "": not given
        getattr(flags, f"DEFINE_{kind}")(name, default, help_)


def _is_width(value) -> bool:
    """A post-hoc EMA width: a number in (0, MAX_SIGMA_REL)."""
    try:
        return 0.0 < float(value) < C.MAX_SIGMA_REL
    except ValueError:
        return False


def _define_option(name: str, options: list) -> None:
    """One flag of a sampler option that one or more solvers take (of one type: the registry
    checks it). Its default is theirs when they agree; a value given is checked by the
    schema of each solver it is used with (``sampling.check_config``)."""
    o = options[0]
    help_ = " / ".join(dict.fromkeys(x.help for x in options))
    default = o.default if all(x.default == o.default for x in options) else None
    if o.choices:
        choices = sorted({c for x in options for c in x.choices or ()})
        flags.DEFINE_enum(name, default, choices, help_)
    else:
        _define(name, o.kind.__name__, default, help_)


def _define_all() -> None:
    for section, section_cls in C.SECTIONS.items():
        if section == "sampler":
            continue
        hints = typing.get_type_hints(section_cls)
        for f in dataclasses.fields(section_cls):
            if f.name not in DERIVED:
                hint = getattr(hints[f.name], "__name__", str(hints[f.name]))
                _define(f.name, hint, f.default, HELP[f.name])
    flags.DEFINE_string("sampler", C.SamplerConfig.sampler, HELP["sampler"])
    for name, options in sampling.registry.all_options().items():  # the registry's schema
        _define_option(name, options)
    flags.DEFINE_integer("seed", 0, HELP["seed"])
    for name, (kind, default, help_) in COMMAND.items():
        getattr(flags, f"DEFINE_{kind}")(name, default, help_)


#: other names of a flag: --class=3 asks for class 3, as --labels=3 does
ALIASES = {"class": "labels"}

_define_all()
for _alias, _name in ALIASES.items():
    flags.DEFINE_alias(_alias, _name)
for _name in ("channel_mults", "hidden_units"):
    flags.register_validator(
        _name,
        lambda v: bool(v) and all(u.isdigit() and int(u) > 0 for u in v),
        message=f"--{_name} must be a comma-separated list of positive ints",
    )
flags.register_validator(
    "posthoc_ema",
    lambda v: all(_is_width(u) for u in v),
    message=f"--posthoc_ema must be a comma-separated list of widths sigma_rel in (0, "
    f"{C.MAX_SIGMA_REL:.4f}), e.g. 0.05,0.10",
)
flags.register_validator(
    "posthoc_sigma_rel",
    lambda v: v == 0.0 or _is_width(v),
    message=f"--posthoc_sigma_rel must be 0 (the checkpoint's EMA) or in (0, "
    f"{C.MAX_SIGMA_REL:.4f})",
)
for _name in [n for n in (*C.field_names(), *COMMAND) if n in FLAGS]:
    if FLAGS[_name].flag_type() != "string":
        continue
    # an empty value (--export_dir=$UNSET) is a mistake, not the default: leave the flag out
    flags.register_validator(
        _name,
        lambda v: v is None or bool(v.strip()),
        message=f"--{_name} is empty: give a value",
    )


def load_plugin(name: str):
    """Import one plugin: a dotted module name or a .py file (executed afresh each time, so
    what it registers is registered again). Returns the module."""
    if name.endswith(".py"):
        if not os.path.isfile(name):
            raise C.ConfigError(f"--plugins: no file {name}")
        spec = importlib.util.spec_from_file_location(os.path.basename(name)[:-3], name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
            raise  # a module the plugin itself imports is missing: its own traceback
        raise C.ConfigError(f"--plugins: no module {name!r} ({e})") from e


def load_plugins() -> None:
    """Import the --plugins modules (before the sampler flags are read)."""
    for name in FLAGS.plugins:
        load_plugin(name)


def _sampler_option_values() -> dict:
    """--sampler_options as {name: value}, typed by the registry's schema."""
    known = sampling.registry.all_options()
    out = {}
    for pair in FLAGS.sampler_options:
        name, sep, text = pair.partition("=")
        if not sep or name not in known:
            raise C.ConfigError(
                f"--sampler_options takes name=value pairs of registered sampler options "
                f"({', '.join(sorted(known))}); got {pair!r}"
            )
        kind = known[name][0].kind
        try:
            value = text.lower() in ("1", "true", "yes") if kind is bool else kind(text)
            out[name] = sampling.registry.check_value(name, value)
        except (ValueError, sampling.SamplerError) as e:
            raise C.ConfigError(f"--sampler_options: {name} must be {known[name][0].allowed()}, "
                                f"got {text!r}") from e  # fmt: skip
    return out


def sampler_flags() -> set[str]:
    """The flags that choose a solver or set its options."""
    return {"sampler", "sampler_options", *sampling.registry.all_options()}


def sampler_overrides() -> dict:
    """The sampler settings given (on the command line or in a --flagfile): the sampler and
    its options; the others keep their defaults (training) or the workdir's (run_sample.py)."""
    names = sampler_flags() - {"sampler_options"}
    given = {name: FLAGS[name].value for name in names if name in FLAGS and FLAGS[name].present}
    return {**given, **_sampler_option_values()}


def checked(cfg: C.ExperimentConfig) -> C.ExperimentConfig:
    """``cfg`` once its family and sampler settings fit the registries (``api.check``;
    ``ConfigError`` naming the setting otherwise)."""
    from tf_score import api  # the whole library: loaded once the flags are parsed

    return api.check(cfg)


def experiment_config() -> C.ExperimentConfig:
    """The run's config from the flags (field name = flag name); ``ConfigError`` if invalid."""
    values = {name: FLAGS[name].value for name in C.field_names() if name in FLAGS}
    return checked(C.from_flat({**values, **sampler_overrides(), "seed": FLAGS.seed}))


def command_sections() -> dict:
    """The command's own sections (evaluation, export, distribute) from the flags, for
    ``cfg.replace(**command_sections())`` of a loaded run's config."""
    owner = C.field_names()
    out: dict[str, dict] = {name: {} for name in C.COMMAND_SECTIONS}
    for name, section in owner.items():
        if section in out and name in FLAGS:
            out[section][name] = FLAGS[name].value
    return out


def strategy(cfg: C.ExperimentConfig):
    """The tf.distribute strategy the config's ``distribute`` section asks for (call before
    any other TF work)."""
    from tf_score.training import distribute  # TF setup order: only the training CLI needs it

    d = cfg.distribute
    if d.cpu_devices:
        distribute.split_cpu(d.cpu_devices)
    return distribute.make_strategy(d.strategy, devices=tuple(d.devices) or None, tpu=d.tpu)


def export(run, cfg: C.ExperimentConfig) -> str:
    """``api.export`` of a loaded run per the config's ``export`` section; the path."""
    from tf_score import api  # the CLI's last step; api imports the whole library

    e = cfg.export
    return api.export(
        run, e.export_dir, e.export_model_name, samplers=tuple(e.export_samplers) or None,
        max_samples=e.export_max_samples, max_evaluations=e.export_max_evaluations,
    )  # fmt: skip


# --- the commands: parsing, one-line errors, which flags run_sample.py reads ------------------

#: the noise settings of the grid a continuous-sigma model samples on: run_sample.py takes
#: them as another sampling grid (a level-conditioned network only has its trained levels)
GRID = ("sigma_max", "sigma_min", "num_levels", "schedule", "rho")
#: settings of a trained run that run_sample.py reads: where the data are, XLA, the seed
SAMPLE_READS = ("data_dir", "jit", "seed")
#: flags of training only, whatever their section
TRAIN_ONLY = ("fid_every", "fid_samples", "restart_from_scratch")
#: flags of run_sample.py only
SAMPLE_ONLY = ("output_dir", "checkpoint", "pretrained", "inpaint", "overview", "snapshots",
               "metrics_file",
               "posthoc_sigma_rel")  # fmt: skip


def parse(argv: list[str]) -> list[str]:
    """``app.run``'s flag parsing, with a bad value as one line naming the flag (exit 1)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


def declare_key_flags(names, module: str | None = None) -> None:
    """--help and --helpshort list the flags ``names``: absl lists the key flags of the main
    module, named by ``sys.argv[0]`` (``module``: another name), and the flags are defined
    here, not in the command's module, so none would be listed otherwise."""
    for name in names:
        FLAGS.register_key_flag_for_module(module or sys.argv[0], FLAGS[name])


def run(main, key_flags=()) -> None:
    """``app.run(main)`` with ``parse``, the command's ``key_flags`` in its help
    (``declare_key_flags``); Ctrl-C before ``main`` takes over (while the flags are parsed) is
    one line and exit 130, not a traceback. ``main`` starts by releasing the start-up guard
    (``startup``): from there on, Ctrl-C is its KeyboardInterrupt."""
    declare_key_flags(key_flags)

    def released(argv):
        startup.release()
        return main(argv)

    try:
        app.run(released, flags_parser=parse)
    except KeyboardInterrupt:
        print(startup.MESSAGE, file=sys.stderr, flush=True)
        sys.exit(130)


@contextlib.contextmanager
def one_line_usage_errors():
    """A usage error (a bad setting) as one line, exit code 1: absl's ``app.run`` would
    print the script's docstring and the help of every key flag before it."""
    try:
        yield
    except app.UsageError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


def train_flags() -> list[str]:
    """The flags run_train.py reads (its --help): all but run_sample.py's own."""
    names = {*C.field_names(), *COMMAND, *sampler_flags(), "seed"}
    return sorted((names - {*SAMPLE_ONLY, *DERIVED}) & set(FLAGS))


def sample_flags() -> list[str]:
    """The flags run_sample.py reads (its --help): its own, the sampler's, the evaluation's
    and the export's, and a continuous model's sampling grid."""
    used = {n for n, s in C.field_names().items() if s in ("sampler", "evaluation", "export")}
    used |= sampler_flags()
    names = {*used, *COMMAND, *SAMPLE_READS, *GRID} - set(TRAIN_ONLY)
    return sorted(names & set(FLAGS))


def typed(argv: list[str]) -> set[str]:
    """The flags named on the command line ``argv`` itself, not read from a --flagfile."""
    names = set()
    for arg in argv[1:]:
        if arg == "--":
            break
        name = arg.lstrip("-").partition("=")[0] if arg.startswith("-") else ""
        if name not in FLAGS and name.startswith("no") and name[2:] in FLAGS:
            name = name[2:]  # --noflag
        if name in FLAGS and name != "flagfile":
            names.add(name)
    return names


def _text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)


def _inapplicable(name: str, value, trained, cfg: C.ExperimentConfig) -> C.ConfigError:
    """Why flag ``name`` typed for run_sample.py cannot apply to the trained run ``cfg``."""
    from tf_score.networks import registry as networks  # loaded with the run checked

    if name in GRID and "solvers" in _requests(cfg):  # sampled on its trained levels
        continuous = [n for n, s in networks.NETWORKS.items() if s.continuous]
        return C.ConfigError(
            f"--{name}={_text(value)} does not apply: network={cfg.network.network} samples on "
            f"the noise levels it was trained on ({name}={_text(trained)}); only the "
            f"continuous-sigma networks ({', '.join(continuous)}) sample on another grid"
        )
    return C.ConfigError(
        f"--{name}={_text(value)} does not apply to sampling: it is a training setting "
        f"(this run's: {_text(trained)}); run_sample.py samples the run as it was trained, "
        "so leave the flag out"
    )


def _requests(cfg: C.ExperimentConfig) -> frozenset:
    """What a run of ``cfg`` answers (its family's ``requests``)."""
    from tf_score import api  # loaded with the run asked

    return api.of(cfg).requests(cfg)


def sample_config(run_cfg: C.ExperimentConfig, typed_names: set[str]) -> C.ExperimentConfig:
    """run_sample.py's config of a trained run: ``run_cfg`` with this command's sampler
    settings, evaluation and export sections and, for a continuous-sigma model, the GRID
    flags given as its sampling grid. Every flag given is checked as the config checks it
    (``ConfigError``), and one typed on the command line (``typed_names``) that cannot apply
    to sampling (a setting of training, given another value than the run's) is refused
    naming it; a --flagfile's training settings (a preset's) are left alone."""
    owner = C.field_names()
    given = {n for n in FLAGS if FLAGS[n].present}
    sections = {}  # the run's sections with the flags given, each checked on its own
    for section in (*C.MODEL_SECTIONS, "train", "distribute"):
        values = {n: FLAGS[n].value for n in given if owner.get(n) == section}
        sections[section] = C.section_with(run_cfg, section, values)
    C.check_seed(FLAGS.seed)  # the seed of the samples
    cfg = checked(run_cfg.replace(sampler=sampler_overrides(), **command_sections()))
    any_grid = "grid" in _requests(run_cfg)
    if any_grid:
        cfg = cfg.replace(noise={n: getattr(sections["noise"], n) for n in GRID})
    for name in sorted(typed_names):
        section, value = owner.get(name), FLAGS[name].value
        if name in TRAIN_ONLY and value != FLAGS[name].default:
            trained = getattr(run_cfg.evaluation, name, FLAGS[name].default)
            raise _inapplicable(name, value, trained, run_cfg)
        if section not in sections or name in (*SAMPLE_READS, *C.PORTABLE_FIELDS):
            continue
        if any_grid and name in GRID:
            continue
        new, trained = getattr(sections[section], name), getattr(run_cfg, section)
        if new != getattr(trained, name):
            raise _inapplicable(name, new, getattr(trained, name), run_cfg)
    return cfg
