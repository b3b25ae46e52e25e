"""Every command-line flag, defined once as a FlagHolder.

The flags of the experiment are the fields of ``tf_score.config.ExperimentConfig``: same
names, same defaults (read from the dataclasses), mapped to a config in one place,
``experiment_config``. The library validates the config (``ConfigError``); the CLIs report
that as a usage error before any work. Flags that are not part of a run's config (where the
workdir is, how to distribute, what to evaluate) are validated here, at parse time.
"""

from __future__ import annotations

import dataclasses
import re

from absl import flags

from tf_score import config as C
from tf_score import sampling

FLAGS = flags.FLAGS


def _default(section, name):
    value = {f.name: f.default for f in dataclasses.fields(section)}[name]
    return [str(v) for v in value] if isinstance(value, tuple) else value


def _enum(section, name, values, help_):
    return flags.DEFINE_enum(name, _default(section, name), list(values), help_)


def _def(kind, section, name, help_):
    return getattr(flags, f"DEFINE_{kind}")(name, _default(section, name), help_)


# --- run ---------------------------------------------------------------------------------
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard, figures.")
SEED = flags.DEFINE_integer("seed", 0, "Random seed (training and sampling are reproducible).")
PROGRESS = flags.DEFINE_boolean("progress", True, "Show progress bars.")

# --- data (DataConfig) -------------------------------------------------------------------
D = C.DataConfig
_enum(D, "dataset", C.DATASETS, "A 2-D toy, a tfds image data set, or folder / npz.")
_def("string", D, "data_dir", "tfds data_dir (default: tfds' own).")
_def("boolean", D, "download", "Let tfds download and prepare a missing data set.")
_def("string", D, "data_path", "Image folder or .npz for --dataset=folder / npz.")
_def("integer", D, "image_size", "Resize folder images to this square size (0: keep).")
_def("boolean", D, "random_flip", "Random horizontal flips for folder / npz data.")
_def("boolean", D, "binarize", "Dynamically binarise images for the VAE's Bernoulli decoder.")

# --- model family and network (NetworkConfig) ---------------------------------------------
N = C.NetworkConfig
_enum(
    N,
    "model",
    C.FAMILY_NETWORKS,
    "Model family: score (a noise-conditional score network), vae (the score-entropy VAE or "
    "its Gaussian baseline, --vae_encoder) or classifier (the digit classifier whose features "
    "give classifier FID/KID).",
)
flags.DEFINE_enum(
    "network",
    None,
    sorted({n for nets in C.FAMILY_NETWORKS.values() for n in nets}),
    "Architecture: score: mlp (2-D toys, the default), resnet, refinenet (NCSN), and the "
    "continuous-sigma denoisers edm_mlp (2-D) and edm_unet (--loss=edm); vae: mlp (default), "
    "conv; classifier: conv.",
)
_def("integer", N, "ngf", "Base width of the image networks.")
_def("list", N, "channel_mults", "ResNet width multiplier per resolution stage.")
_def("integer", N, "num_res_blocks", "ResNet blocks per stage.")
_def("list", N, "hidden_units", "MLP hidden layer widths.")
_enum(N, "activation", C.ACTIVATIONS, "MLP activation.")
_def("boolean", N, "log_sigma_input", "Feed log(sigma_i) to the MLP as an extra input.")
_def("boolean", N, "scale_by_sigma", "Parameterise s(x, i) = f(x, i) / sigma_i (NCSNv2).")
_enum(N, "precision", C.PRECISIONS, "Keras dtype policy (losses and chains stay float32).")
_enum(N, "vae_encoder", C.VAE_ENCODERS, "implicit (score-entropy) or gaussian (baseline).")
_def("integer", N, "latent_dim", "VAE latent dimension (paper: 8 or 32).")

# --- noise schedule and loss (NoiseConfig, LossConfig) --------------------------------------
_def("float", C.NoiseConfig, "sigma_max", "Largest noise level sigma_1.")
_def("float", C.NoiseConfig, "sigma_min", "Smallest noise level sigma_L.")
_def("integer", C.NoiseConfig, "num_levels", "Noise levels L (continuous models: sampling grid).")
_enum(
    C.NoiseConfig,
    "schedule",
    C.SCHEDULES,
    "Levels: geometric, or karras (EDM's rho grid; continuous models only).",
)
_def("float", C.NoiseConfig, "rho", "Exponent of the karras grid.")
_def("float", C.NoiseConfig, "sigma_data", "Continuous: data std in the network's scale.")
_enum(C.NoiseConfig, "sigma_dist", ("lognormal", "loguniform"), "Continuous: training sigmas.")
_def("float", C.NoiseConfig, "p_mean", "Continuous, lognormal: mean of ln sigma (net scale).")
_def("float", C.NoiseConfig, "p_std", "Continuous, lognormal: std of ln sigma.")
_enum(
    C.NoiseConfig,
    "parameterization",
    ("edm", "ncsnv2"),
    "Continuous: edm preconditioning (c_skip, c_out, c_in) or ncsnv2 (s = F / sigma).",
)
_enum(
    C.LossConfig,
    "loss",
    C.SCORE_LOSSES,
    "Objective, a function of tf_score.losses ('dsm' is single-level: --num_levels=1).",
)
_def("float", C.LossConfig, "anneal_power", "lambda(sigma) = sigma^anneal_power.")
_def("integer", C.LossConfig, "n_particles", "Projections per example for SSM.")
_enum(C.LossConfig, "projection", C.PROJECTIONS, "SSM projection distribution.")

# --- optimisation and loop (OptimizerConfig, LoopConfig) -----------------------------------
_enum(C.OptimizerConfig, "optimizer", C.OPTIMIZERS, "Optimizer of every objective.")
_def("float", C.OptimizerConfig, "learning_rate", "Learning rate.")
_def("float", C.OptimizerConfig, "grad_clip_norm", "Clip gradients by global norm (0: off).")
L = C.LoopConfig
_def("integer", L, "num_steps", "Training steps.")
_def("integer", L, "batch_size", "Global batch size.")
_def("integer", L, "log_every", "Steps between TensorBoard scalars.")
_def("integer", L, "checkpoint_every", "Steps between checkpoints.")
_def("integer", L, "keep_checkpoints", "Checkpoints to keep.")
_def("integer", L, "sample_every", "Steps between TensorBoard samples (0: at the end).")
_def("float", L, "ema_rate", "EMA decay of the weights (0: no averaging).")
_def("boolean", L, "ema_warmup", "Ramp the EMA decay as min(ema_rate, (1+t)/(10+t)).")
JIT = _def("boolean", L, "jit", "XLA-compile the training step's loss and gradient, and samplers.")
_def("integer", L, "steps_per_loop", "Steps per compiled call.")
_def(
    "integer",
    L,
    "grad_accum_steps",
    "Micro-batches per replica per step, gradients summed: --batch_size is still the global "
    "batch. R replicas x A micro-batches train exactly like 1 replica x R*A.",
)

# --- sampling (SamplerConfig; run_sample.py: the workdir's values unless given) ----------------
PLUGINS = flags.DEFINE_list(
    "plugins",
    [],
    "Python modules (dotted names or .py files) imported first, e.g. ones that register "
    "solvers with tf_score.sampling.register; their options are then taken by --sampler_options.",
)
SAMPLER = flags.DEFINE_string(
    "sampler",
    C.SamplerConfig.sampler,
    "Solver, a name in the registry (network evaluations per sample): "
    + "; ".join(f"{s.name} ({s.help.split(': ', 1)[-1]})" for s in sampling.SAMPLERS.values())
    + ". run_sample.py uses the workdir's unless this is given.",
)
#: one flag per registered option, named, typed and checked as the registry's schema says
_KINDS = {float: "float", int: "integer", bool: "boolean", str: "string"}
for _o in sampling.registry.all_options().values():
    if _o.choices:
        flags.DEFINE_enum(_o.name, _o.default, list(_o.choices), _o.help)
    else:
        getattr(flags, f"DEFINE_{_KINDS[_o.kind]}")(_o.name, _o.default, _o.help)
SAMPLER_OPTIONS = flags.DEFINE_list(
    "sampler_options",
    [],
    "name=value pairs of sampler options that have no flag of their own (solvers of --plugins).",
)


# --- sampling and evaluation, run_sample.py -------------------------------------------------
NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "Samples (toys: per batch of chains).")
EVAL_REPEATS = flags.DEFINE_integer(
    "eval_repeats", 4, "--evaluate on the toys: batches of num_samples pooled for the metrics."
)
SAMPLE_BATCH_SIZE = flags.DEFINE_integer(
    "sample_batch_size",
    0,
    "Chains run at once on image models (0: all --num_samples together); batch b is seeded "
    "(seed, b); the adaptive ODE's evaluation count (and result) depends on the batch.",
)
NUM_PERMUTATIONS = flags.DEFINE_integer(
    "num_permutations", 500, "--evaluate on the 2-D toys: permutations of the two-sample test."
)
METRICS = flags.DEFINE_list(
    "metrics",
    [],
    "Image models: fid and/or kid of --num_samples samples against the training set, with "
    "the real-vs-real floor (as many test images) and the label histogram; --metrics_file.",
)
FEATURE_EXTRACTOR = flags.DEFINE_enum(
    "feature_extractor",
    "classifier",
    ["classifier", "inception"],
    "--metrics feature space: classifier (the 128-d features of --classifier) or inception "
    "(Inception-v3 pool features, RGB data; needs --inception_weights).",
)
CLASSIFIER = flags.DEFINE_string(
    "classifier", None, "The saved classifier (.keras file or its workdir) for --metrics."
)
INCEPTION_WEIGHTS = flags.DEFINE_string(
    "inception_weights",
    "imagenet",
    "'imagenet' (Keras downloads them once) or the path of "
    "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5.",
)
OUTPUT_DIR = flags.DEFINE_string(
    "output_dir",
    None,
    "Where run_sample.py writes samples, figures and metrics (default: --workdir; give one "
    "to sample a run you cannot write to).",
)
METRICS_FILE = flags.DEFINE_string(
    "metrics_file", None, "Where --metrics writes its JSON (default WORKDIR/quality_SAMPLER.json)."
)
SNAPSHOTS = flags.DEFINE_boolean(
    "snapshots", False, "Also write the chain at every level boundary (strip + GIF)."
)
INPAINT = flags.DEFINE_boolean(
    "inpaint", False, "Inpaint the right half of test images instead of sampling."
)
CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Checkpoint prefix to sample from (default: the latest)."
)
EVALUATE = flags.DEFINE_boolean(
    "evaluate",
    False,
    "The two-mode sampler comparison (toys) or the VAE test likelihood by AIS (and IWAE); "
    "writes metrics.json.",
)
AIS_CHAINS = flags.DEFINE_integer("ais_chains", 16, "AIS chains per test example.")
AIS_TEMPERATURES = flags.DEFINE_integer("ais_temperatures", 500, "AIS intermediate distributions.")
AIS_LEAPFROG_STEPS = flags.DEFINE_integer("ais_leapfrog_steps", 10, "HMC leapfrog steps in AIS.")
EVAL_EXAMPLES = flags.DEFINE_integer("eval_examples", 200, "Test examples for the VAE likelihood.")
EVAL_BATCH = flags.DEFINE_integer("eval_batch", 100, "Test examples per AIS batch.")
IWAE_SAMPLES = flags.DEFINE_integer("iwae_samples", 1000, "Samples of the IWAE bound.")
BITS_PER_DIM = flags.DEFINE_integer(
    "bits_per_dim",
    0,
    "Image score models: instead of sampling, the probability-flow ODE's bits/dim of this "
    "many dequantised test images (--eval_batch at once, --ode_tol; 0: off).",
)

# --- export (TF Serving) ------------------------------------------------------------------
EXPORT_DIR = flags.DEFINE_string(
    "export_dir",
    None,
    "Write a SavedModel for TF Serving to EXPORT_DIR/<export_model_name>/<step>/: at the end "
    "of run_train.py, or from the latest checkpoint with run_sample.py (which then exits).",
)
EXPORT_MODEL_NAME = flags.DEFINE_string(
    "export_model_name", None, "Model name in the export layout (default: the workdir's name)."
)
EXPORT_MAX_SAMPLES = flags.DEFINE_integer(
    "export_max_samples", 256, "Largest num_samples one request to the export may ask for."
)
EXPORT_SAMPLERS = flags.DEFINE_list(
    "export_samplers",
    [],
    "Solvers the export serves as sample_<name>, with their float and int options as request "
    "inputs (default: the run's sampler); serving_default is always the run's sampler.",
)
EXPORT_MAX_EVALUATIONS = flags.DEFINE_integer(
    "export_max_evaluations",
    1_000_000,
    "Largest total work of one request to the export: num_samples x network evaluations per "
    "sample (the export's `limits` signature returns every cap).",
)
flags.register_validator(
    "export_model_name",
    lambda v: v is None or (re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", v) and ".." not in v),
    "--export_model_name must be a TF Serving model name: letters, digits, '_', '.', '-', "
    "starting with a letter or digit, no '/' or '..' path parts",
)

# --- distribution -------------------------------------------------------------------------
STRATEGY = flags.DEFINE_enum(
    "strategy",
    "default",
    ["default", "mirrored", "multi_worker_mirrored", "tpu"],
    "tf.distribute strategy: default (one device), mirrored (all local GPUs, or --devices), "
    "multi_worker_mirrored (workers from TF_CONFIG), tpu (--tpu).",
)
DEVICES = flags.DEFINE_list(
    "devices", [], "Devices of --strategy=mirrored, e.g. /gpu:0,/gpu:1 (default: all GPUs)."
)
TPU = flags.DEFINE_string("tpu", None, "TPU name or grpc:// address for --strategy=tpu.")
CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices",
    0,
    "Split the host CPU into this many logical devices (0: leave it whole); with "
    "--strategy=mirrored, one replica each (multi-replica runs without accelerators).",
)
COLLECTIVE_TIMEOUT = flags.DEFINE_float(
    "collective_timeout",
    0.0,
    "Multi-worker: seconds a collective waits for the other workers before failing "
    "(0: no limit; the coordination service still reports a dead worker).",
)


def _at_least(holder, minimum):
    flags.register_validator(
        holder, lambda v: v is not None and v >= minimum, f"--{holder.name} must be >= {minimum}"
    )


for _h in (NUM_SAMPLES, EVAL_REPEATS, NUM_PERMUTATIONS, EXPORT_MAX_SAMPLES):
    _at_least(_h, 1)
for _h in (AIS_CHAINS, AIS_TEMPERATURES, AIS_LEAPFROG_STEPS, EVAL_EXAMPLES, EVAL_BATCH):
    _at_least(_h, 1)
_at_least(IWAE_SAMPLES, 1)
_at_least(BITS_PER_DIM, 0)
_at_least(EXPORT_MAX_EVALUATIONS, 1)
_at_least(SAMPLE_BATCH_SIZE, 0)
_at_least(CPU_DEVICES, 0)
_at_least(COLLECTIVE_TIMEOUT, 0)
flags.register_validator(
    METRICS,
    lambda v: set(v) <= {"fid", "kid"},
    message="--metrics takes a comma-separated subset of: fid, kid",
)
for _name in ("channel_mults", "hidden_units"):
    flags.register_validator(
        _name,
        lambda v: all(u.isdigit() and int(u) > 0 for u in v),
        message=f"--{_name} must be a comma-separated list of positive ints",
    )


@flags.multi_flags_validator(
    ["strategy", "devices", "tpu"],
    message="--devices is for --strategy=mirrored, and --tpu (a Cloud TPU name, grpc://host:port "
    "or local) is needed by --strategy=tpu and only by it",
)
def _check_strategy_flags(f):
    return (not f["devices"] or f["strategy"] == "mirrored") and (
        bool(f["tpu"]) == (f["strategy"] == "tpu")
    )


@flags.multi_flags_validator(
    ["strategy", "cpu_devices"],
    message="--cpu_devices is for --strategy=mirrored or default (a multi-worker strategy must "
    "set up TensorFlow's devices itself)",
)
def _check_cpu_devices(f):
    return not f["cpu_devices"] or f["strategy"] in ("mirrored", "default")


def load_plugins() -> None:
    """Import the --plugins modules (before the sampler flags are read)."""
    import importlib
    import importlib.util
    import os

    for name in PLUGINS.value:
        if name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(os.path.basename(name)[:-3], name)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            importlib.import_module(name)


def _sampler_option_values() -> dict:
    """--sampler_options as {name: value}, typed by the registry's schema."""
    known = sampling.registry.all_options()
    out = {}
    for pair in SAMPLER_OPTIONS.value:
        name, sep, text = pair.partition("=")
        if not sep or name not in known:
            raise C.ConfigError(
                f"--sampler_options takes name=value pairs of registered sampler options "
                f"({', '.join(sorted(known))}); got {pair!r}"
            )
        kind = known[name].kind
        out[name] = (
            text.lower() in ("1", "true", "yes")
            if kind is bool
            else kind(text)
            if kind is not str
            else text
        )
    return out


def experiment_config() -> C.ExperimentConfig:
    """The run's config from the flags (field name = flag name); ``ConfigError`` if invalid."""
    values = {name: FLAGS[name].value for name in C.field_names() if name in FLAGS}
    return C.from_flat({**values, **_sampler_option_values(), "seed": SEED.value})


def sampler_overrides() -> dict:
    """The sampler settings given on this command line (run_sample.py keeps the workdir's
    others)."""
    names = ["sampler", *sampling.registry.all_options()]
    given = {name: FLAGS[name].value for name in names if name in FLAGS and FLAGS[name].present}
    return {**given, **_sampler_option_values()}


def strategy():
    """The tf.distribute strategy the flags ask for (call before any other TF work)."""
    from tf_score.training import distribute

    if CPU_DEVICES.value:
        distribute.split_cpu(CPU_DEVICES.value)
    return distribute.make_strategy(
        STRATEGY.value,
        devices=DEVICES.value or None,
        tpu=TPU.value,
        collective_timeout=COLLECTIVE_TIMEOUT.value or None,
    )


def export(run) -> str:
    """``api.export`` of a loaded run per the --export_* flags; the SavedModel's path."""
    from tf_score import api

    return api.export(
        run,
        EXPORT_DIR.value,
        EXPORT_MODEL_NAME.value,
        samplers=tuple(EXPORT_SAMPLERS.value) or None,
        max_samples=EXPORT_MAX_SAMPLES.value,
        max_evaluations=EXPORT_MAX_EVALUATIONS.value,
    )
