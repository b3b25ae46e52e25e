"""Every command-line flag, defined once as a FlagHolder, with validators.

Validators run when the flags are parsed, so a bad value stops the program before any work,
with absl's message naming the flag: ``flag --num_steps=-5: num_steps must be >= 1``.
"""

from __future__ import annotations

from absl import flags

from tf_score import data, losses, score_model

# --- run ---------------------------------------------------------------------------------
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard, figures.")
SEED = flags.DEFINE_integer("seed", 0, "Random seed (training and sampling are reproducible).")
PROGRESS = flags.DEFINE_boolean("progress", True, "Show progress bars.")

# --- data and model ----------------------------------------------------------------------
DATASET = flags.DEFINE_enum(
    "dataset",
    "two_mode",
    [*sorted(data.TOYS), *sorted(data.IMAGE_DATASETS), "folder", "npz"],
    "Data set: a 2-D toy, a tfds image data set, or your own images (folder / npz with "
    "--data_path).",
)
DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir (default: tfds' own).")
DOWNLOAD = flags.DEFINE_boolean(
    "download", True, "Let tfds download and prepare a missing data set."
)
DATA_PATH = flags.DEFINE_string("data_path", None, "Image folder or .npz for folder / npz.")
IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", 0, "Resize folder images to this square size (0: keep)."
)
RANDOM_FLIP = flags.DEFINE_boolean(
    "random_flip", False, "Random horizontal flips for folder / npz data."
)
MODEL = flags.DEFINE_enum(
    "model",
    "mlp",
    ["mlp", *score_model.IMAGE_MODELS, "vae", "classifier"],
    "Model: score network mlp (2-D), refinenet (NCSN), resnet; vae (score-entropy VAE "
    "or its Gaussian baseline, --vae_encoder); or classifier (the digit classifier whose "
    "features give classifier FID/KID, run_sample.py --metrics).",
)
NGF = flags.DEFINE_integer("ngf", 64, "Base width of the image networks.")
CHANNEL_MULTS = flags.DEFINE_list(
    "channel_mults", ["1", "2", "2"], "ResNet width multiplier per resolution stage."
)
NUM_RES_BLOCKS = flags.DEFINE_integer("num_res_blocks", 2, "ResNet blocks per stage.")
PRECISION = flags.DEFINE_enum(
    "precision",
    "float32",
    ["float32", "mixed_bfloat16"],
    "Keras dtype policy of the network (losses, noise levels and Langevin state stay float32).",
)
HIDDEN_UNITS = flags.DEFINE_list("hidden_units", ["128", "128"], "MLP hidden layer widths.")
ACTIVATION = flags.DEFINE_enum(
    "activation", "softplus", ["softplus", "elu", "swish", "tanh"], "MLP activation."
)
LOG_SIGMA_INPUT = flags.DEFINE_boolean(
    "log_sigma_input", True, "Feed log(sigma_i) to the MLP as an extra input."
)
SCALE_BY_SIGMA = flags.DEFINE_boolean(
    "scale_by_sigma", False, "Parameterise s(x, i) = f(x, i) / sigma_i (NCSNv2)."
)

# --- VAE (--model=vae) ----------------------------------------------------------------
VAE_ENCODER = flags.DEFINE_enum(
    "vae_encoder",
    "implicit",
    ["implicit", "gaussian"],
    "implicit: z = h(x, eps) with the entropy gradient from an SSM-trained score net; "
    "gaussian: the baseline with analytic KL.",
)
LATENT_DIM = flags.DEFINE_integer("latent_dim", 8, "VAE latent dimension (paper: 8 or 32).")
VAE_ARCH = flags.DEFINE_enum(
    "vae_arch", "mlp", ["mlp", "conv"], "VAE networks: mlp (MNIST, paper) or conv (32/64 px)."
)
VAE_OPTIMIZER = flags.DEFINE_enum(
    "vae_optimizer", "rmsprop", ["rmsprop", "adam"], "Optimizer of every VAE objective."
)
BINARIZE = flags.DEFINE_boolean(
    "binarize", True, "Dynamically binarise images for the VAE's Bernoulli decoder."
)
AIS_CHAINS = flags.DEFINE_integer("ais_chains", 16, "AIS chains per test example.")
AIS_TEMPERATURES = flags.DEFINE_integer("ais_temperatures", 500, "AIS intermediate distributions.")
AIS_LEAPFROG_STEPS = flags.DEFINE_integer("ais_leapfrog_steps", 10, "HMC leapfrog steps in AIS.")
EVAL_EXAMPLES = flags.DEFINE_integer(
    "eval_examples", 200, "Test examples for the VAE likelihood evaluation (the first N)."
)
EVAL_BATCH = flags.DEFINE_integer("eval_batch", 100, "Test examples per AIS batch.")
IWAE_SAMPLES = flags.DEFINE_integer("iwae_samples", 1000, "Samples of the IWAE bound.")

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
EXPORT_MAX_STEPS = flags.DEFINE_integer(
    "export_max_steps", 1000, "Largest n_steps_each one request to the export may ask for."
)

# --- noise schedule and loss -------------------------------------------------------------
SIGMA_BEGIN = flags.DEFINE_float("sigma_begin", 20.0, "Largest noise level sigma_1.")
SIGMA_END = flags.DEFINE_float("sigma_end", 1.0, "Smallest noise level sigma_L.")
NUM_LEVELS = flags.DEFINE_integer("num_levels", 10, "Number of noise levels L (geometric).")
LOSS = flags.DEFINE_enum(
    "loss",
    "anneal_dsm",
    list(score_model.SCORE_LOSSES),
    "Training objective ('dsm' is single-level: num_levels=1).",
)
ANNEAL_POWER = flags.DEFINE_float("anneal_power", 2.0, "lambda(sigma) = sigma^anneal_power.")
N_PARTICLES = flags.DEFINE_integer("n_particles", 1, "Projections per example for SSM.")
PROJECTION = flags.DEFINE_enum(
    "projection", "gaussian", list(losses.PROJECTIONS), "SSM projection distribution."
)

# --- optimisation ------------------------------------------------------------------------
LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
NUM_STEPS = flags.DEFINE_integer("num_steps", 20000, "Training steps.")
GRAD_CLIP_NORM = flags.DEFINE_float(
    "grad_clip_norm", 0.0, "Clip gradients by global norm (0: off)."
)
EMA_RATE = flags.DEFINE_float("ema_rate", 0.999, "EMA decay of the weights (0: no averaging).")
EMA_WARMUP = flags.DEFINE_boolean(
    "ema_warmup",
    True,
    "Ramp the EMA decay as min(ema_rate, (1+t)/(10+t)) so it forgets the initial weights.",
)
LOG_EVERY = flags.DEFINE_integer("log_every", 500, "Steps between TensorBoard scalars.")
CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 5000, "Steps between checkpoints.")
KEEP_CHECKPOINTS = flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints to keep.")
SAMPLE_EVERY = flags.DEFINE_integer(
    "sample_every", 0, "Steps between TensorBoard sample images (0: at the end)."
)
STEPS_PER_LOOP = flags.DEFINE_integer("steps_per_loop", 100, "Steps per compiled call.")

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
GRAD_ACCUM_STEPS = flags.DEFINE_integer(
    "grad_accum_steps",
    1,
    "Micro-batches per replica per step, gradients summed: --batch_size is still the global "
    "batch. R replicas x A micro-batches train exactly like 1 replica x R*A.",
)
COLLECTIVE_TIMEOUT = flags.DEFINE_float(
    "collective_timeout",
    0.0,
    "Multi-worker: seconds a collective waits for the other workers before failing "
    "(0: no limit; the coordination service still reports a dead worker).",
)

# --- sampling ----------------------------------------------------------------------------
SAMPLER = flags.DEFINE_enum(
    "sampler",
    "annealed_langevin",
    ["annealed_langevin", "langevin", "consistent_annealed", "predictor_corrector", "heun", "ode"],
    "Sampler for run_sample.py: annealed_langevin (L x T evaluations), langevin (plain, at the "
    "last level), consistent_annealed (L), predictor_corrector (L x (1 + --n_corrector)), "
    "heun (probability-flow ODE, 2K - 1 for K = --heun_steps levels), ode (adaptive RK45 "
    "probability-flow ODE, --ode_tol; 2 evaluations per solver call for level networks).",
)
ODE_TOL = flags.DEFINE_float(
    "ode_tol", 1e-5, "ode: relative and absolute tolerance of the Dormand-Prince solver."
)
NUM_PERMUTATIONS = flags.DEFINE_integer(
    "num_permutations", 500, "--evaluate on the 2-D toys: permutations of the two-sample test."
)
METRICS = flags.DEFINE_list(
    "metrics",
    [],
    "run_sample.py on an image model: fid and/or kid of --num_samples samples against the "
    "training set, with the real-vs-real floor (as many test images) and the label histogram, "
    "in the --feature_extractor space; written to --metrics_file.",
)
FEATURE_EXTRACTOR = flags.DEFINE_enum(
    "feature_extractor",
    "classifier",
    ["classifier", "inception"],
    "--metrics feature space: classifier (the 128-d features of --classifier, for MNIST-like "
    "data) or inception (Inception-v3 pool features, RGB data; needs --inception_weights).",
)
CLASSIFIER = flags.DEFINE_string(
    "classifier",
    None,
    "--metrics with --feature_extractor=classifier: the saved classifier (.keras file or its "
    "workdir, from run_train.py --flagfile=flags/presets/mnist_classifier.cfg).",
)
INCEPTION_WEIGHTS = flags.DEFINE_string(
    "inception_weights",
    "imagenet",
    "--feature_extractor=inception: 'imagenet' (Keras downloads them once) or the path of "
    "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5.",
)
METRICS_FILE = flags.DEFINE_string(
    "metrics_file", None, "Where --metrics writes its JSON (default WORKDIR/quality_SAMPLER.json)."
)
SAMPLE_BATCH_SIZE = flags.DEFINE_integer(
    "sample_batch_size",
    0,
    "Chains run at once by run_sample.py on image models (0: all --num_samples together); "
    "the batch starting at chain i uses seeds fold_in(seed, i); the adaptive ODE's "
    "evaluation count (and result) depends on the batch.",
)
CAS_ETA = flags.DEFINE_float(
    "cas_eta",
    0.0,
    "consistent_annealed: step eta = eps / sigma_L^2 (0: the smallest consistent value, "
    "1 - min sigma_(i+1) / sigma_i).",
)
SNR = flags.DEFINE_float("snr", 0.16, "predictor_corrector: corrector signal-to-noise ratio.")
N_CORRECTOR = flags.DEFINE_integer(
    "n_corrector", 1, "predictor_corrector: Langevin corrector steps per level."
)
HEUN_STEPS = flags.DEFINE_integer(
    "heun_steps", 0, "heun: levels of the network used as the ODE grid (0: all)."
)
NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "Samples per chain batch.")
EVAL_REPEATS = flags.DEFINE_integer(
    "eval_repeats", 4, "Independent chain batches of num_samples pooled for the metrics."
)
STEP_LR = flags.DEFINE_float(
    "step_lr",
    0.05,
    "Annealed Langevin eps: a_i = eps * sigma_i^2 / sigma_L^2 "
    "(x <- x + a s + sqrt(2a) z; the NCSN toy's lr 0.1 is eps 0.05).",
)
N_STEPS_EACH = flags.DEFINE_integer("n_steps_each", 100, "Annealed Langevin steps per level T.")
LANGEVIN_STEPS = flags.DEFINE_integer("langevin_steps", 1000, "Plain Langevin steps.")
LANGEVIN_STEP_SIZE = flags.DEFINE_float("langevin_step_size", 0.05, "Plain Langevin step a.")
DENOISE = flags.DEFINE_boolean("denoise", True, "Final Tweedie denoising step x + sigma_L^2 s.")
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
    "Evaluate: the two-mode sampler comparison (toys) or the VAE test likelihood by AIS "
    "(and IWAE); writes metrics.json.",
)
JIT = flags.DEFINE_boolean(
    "jit", False, "XLA-compile the training step's loss and gradient, and the sampler loops."
)


def _positive(holder, minimum=1):
    flags.register_validator(
        holder,
        lambda v: v is not None and v >= minimum,
        message=f"--{holder.name} must be >= {minimum}",
    )


for _h in (
    NUM_STEPS,
    BATCH_SIZE,
    LOG_EVERY,
    CHECKPOINT_EVERY,
    KEEP_CHECKPOINTS,
    NUM_LEVELS,
    N_PARTICLES,
    STEPS_PER_LOOP,
    NUM_SAMPLES,
    EVAL_REPEATS,
    N_STEPS_EACH,
):
    _positive(_h)
_positive(NGF)
_positive(EXPORT_MAX_SAMPLES)
_positive(EXPORT_MAX_STEPS)
for _h in (
    LATENT_DIM,
    AIS_CHAINS,
    AIS_TEMPERATURES,
    AIS_LEAPFROG_STEPS,
    EVAL_EXAMPLES,
    EVAL_BATCH,
    IWAE_SAMPLES,
):
    _positive(_h)
_positive(NUM_RES_BLOCKS)
_positive(N_CORRECTOR, 0)
flags.register_validator(
    HEUN_STEPS, lambda v: v == 0 or v >= 2, message="--heun_steps must be 0 (all) or >= 2"
)
flags.register_validator(SNR, lambda v: v > 0, message="--snr must be > 0")
flags.register_validator(ODE_TOL, lambda v: 0 < v < 1, message="--ode_tol must be in (0, 1)")
flags.register_validator(
    METRICS,
    lambda v: set(v) <= {"fid", "kid"},
    message="--metrics takes a comma-separated subset of: fid, kid",
)
_positive(SAMPLE_BATCH_SIZE, 0)
_positive(NUM_PERMUTATIONS)
flags.register_validator(CAS_ETA, lambda v: 0 <= v <= 1, message="--cas_eta must be in [0, 1]")
_positive(GRAD_ACCUM_STEPS)
_positive(CPU_DEVICES, 0)
flags.register_validator(
    COLLECTIVE_TIMEOUT, lambda v: v >= 0, message="--collective_timeout must be >= 0"
)
_positive(SAMPLE_EVERY, 0)
_positive(IMAGE_SIZE, 0)
flags.register_validator(
    CHANNEL_MULTS,
    lambda v: v and all(u.isdigit() and int(u) > 0 for u in v),
    message="--channel_mults must be a comma-separated list of positive ints",
)
_positive(LANGEVIN_STEPS, 0)
for _h in (SIGMA_END, LEARNING_RATE, STEP_LR, LANGEVIN_STEP_SIZE):
    flags.register_validator(_h, lambda v: v > 0, message=f"--{_h.name} must be > 0")
flags.register_validator(GRAD_CLIP_NORM, lambda v: v >= 0, message="--grad_clip_norm must be >= 0")
flags.register_validator(EMA_RATE, lambda v: 0 <= v < 1, message="--ema_rate must be in [0, 1)")
flags.register_validator(
    HIDDEN_UNITS,
    lambda v: all(u.isdigit() and int(u) > 0 for u in v),
    message="--hidden_units must be a comma-separated list of positive ints",
)


@flags.multi_flags_validator(
    ["sigma_begin", "sigma_end", "num_levels"],
    message="--sigma_begin must be > --sigma_end (or equal to it with --num_levels=1)",
)
def _check_schedule(f):
    if f["num_levels"] == 1:
        return f["sigma_begin"] == f["sigma_end"]
    return f["sigma_begin"] > f["sigma_end"]


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


@flags.multi_flags_validator(
    ["batch_size", "grad_accum_steps"],
    message="--batch_size must be divisible by --grad_accum_steps (and by the replicas)",
)
def _check_accum(f):
    return f["batch_size"] % f["grad_accum_steps"] == 0


@flags.multi_flags_validator(
    ["loss", "num_levels"], message="--loss=dsm is single-level: it needs --num_levels=1"
)
def _check_dsm(f):
    return f["loss"] != "dsm" or f["num_levels"] == 1


@flags.multi_flags_validator(
    ["model", "dataset"],
    message="--model=mlp is for the 2-D toys; image data sets need --model=refinenet, resnet, "
    "vae or classifier (and the toys need --model=mlp)",
)
def _check_model_matches_data(f):
    return (f["model"] == "mlp") == (f["dataset"] in data.TOYS)


@flags.multi_flags_validator(
    ["model", "dataset"],
    message="--model=classifier needs labelled images: --dataset=mnist, fashion_mnist or cifar10",
)
def _check_classifier_data(f):
    return f["model"] != "classifier" or f["dataset"] in ("mnist", "fashion_mnist", "cifar10")


@flags.multi_flags_validator(
    ["dataset", "data_path"], message="--dataset=folder / npz needs --data_path"
)
def _check_data_path(f):
    return f["dataset"] not in ("folder", "npz") or bool(f["data_path"])


#: config keys that may change between a run and its resumption (where data lives)
PORTABLE_KEYS = ("data_dir", "data_path", "download")


def experiment_config() -> dict:
    """The flags that define the model and data, saved as workdir/config.json by training."""
    return {
        "dataset": DATASET.value,
        "data_dir": DATA_DIR.value,
        "download": DOWNLOAD.value,
        "data_path": DATA_PATH.value,
        "image_size": IMAGE_SIZE.value,
        "random_flip": RANDOM_FLIP.value,
        "model": MODEL.value,
        "ngf": NGF.value,
        "channel_mults": [int(u) for u in CHANNEL_MULTS.value],
        "num_res_blocks": NUM_RES_BLOCKS.value,
        "precision": PRECISION.value,
        "hidden_units": [int(u) for u in HIDDEN_UNITS.value],
        "activation": ACTIVATION.value,
        "log_sigma_input": LOG_SIGMA_INPUT.value,
        "scale_by_sigma": SCALE_BY_SIGMA.value,
        "vae_encoder": VAE_ENCODER.value,
        "latent_dim": LATENT_DIM.value,
        "vae_arch": VAE_ARCH.value,
        "vae_optimizer": VAE_OPTIMIZER.value,
        "binarize": BINARIZE.value,
        "sigma_begin": SIGMA_BEGIN.value,
        "sigma_end": SIGMA_END.value,
        "num_levels": NUM_LEVELS.value,
        "loss": LOSS.value,
        "anneal_power": ANNEAL_POWER.value,
        "n_particles": N_PARTICLES.value,
        "projection": PROJECTION.value,
        "learning_rate": LEARNING_RATE.value,
        "grad_clip_norm": GRAD_CLIP_NORM.value,
        "seed": SEED.value,
    }


def train_config():
    from tf_score.train import TrainConfig

    return TrainConfig(
        num_steps=NUM_STEPS.value,
        batch_size=BATCH_SIZE.value,
        seed=SEED.value,
        log_every=LOG_EVERY.value,
        checkpoint_every=CHECKPOINT_EVERY.value,
        keep_checkpoints=KEEP_CHECKPOINTS.value,
        sample_every=SAMPLE_EVERY.value,
        ema_rate=EMA_RATE.value,
        ema_warmup=EMA_WARMUP.value,
        jit_compile=JIT.value,
        steps_per_loop=STEPS_PER_LOOP.value,
        grad_accum_steps=GRAD_ACCUM_STEPS.value,
        progress=PROGRESS.value,
    )


def strategy():
    """The tf.distribute strategy the flags ask for (call before any other TF work)."""
    from tf_score import distribute

    if CPU_DEVICES.value:
        distribute.split_cpu(CPU_DEVICES.value)
    return distribute.make_strategy(
        STRATEGY.value,
        devices=DEVICES.value or None,
        tpu=TPU.value,
        collective_timeout=COLLECTIVE_TIMEOUT.value or None,
    )


def export_run(cfg: dict, models: dict, step: int) -> str:
    """Export per the --export_* flags (and the sampling flags baked into ``sample``)."""
    import os

    from tf_score import export

    name = EXPORT_MODEL_NAME.value or os.path.basename(os.path.normpath(WORKDIR.value))
    return export.export_run(
        cfg,
        models,
        step,
        EXPORT_DIR.value,
        name,
        step_lr=STEP_LR.value,
        n_steps_each=min(N_STEPS_EACH.value, EXPORT_MAX_STEPS.value),
        max_samples=EXPORT_MAX_SAMPLES.value,
        max_steps_each=EXPORT_MAX_STEPS.value,
    )
