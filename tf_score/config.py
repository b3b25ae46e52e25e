"""The experiment config: typed, frozen, validated, and round-tripped through JSON.

One ``ExperimentConfig`` describes a run completely: its data, network, noise schedule,
loss, optimiser, training loop and default sampler. Every field has the same name as its
command-line flag (``flags/`` maps flags to fields by name, in one place), as its JSON key
in ``workdir/config.json`` and as the keyword of the library function that uses it.

    cfg = ExperimentConfig(noise=NoiseConfig(sigma_max=20.0, sigma_min=1.0, num_levels=10))
    ExperimentConfig.from_json(cfg.to_json()) == cfg

Validation happens on construction and raises ``ConfigError`` naming the field and what is
allowed, before any work starts. The config is plain data: which families, networks and
solvers exist is the registries' (``families.registry.check`` holds a config against them).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
import typing

import numpy as np

from tf_score.noise import grids

#: the network a run of a built-in family takes when none is given (a plugin family's runs
#: name theirs); which networks a family accepts is its check's (``families.registry``)
DEFAULT_NETWORKS = {"score": "mlp", "vae": "mlp", "classifier": "conv"}
TOY_DATASETS = ("two_mode", "eight_gaussians", "rings")
TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "celeb_a")
LABELLED_DATASETS = ("mnist", "fashion_mnist", "cifar10")
DATASETS = (*TOY_DATASETS, *TFDS_DATASETS, "folder", "npz")
#: the most classes a class-conditional model may have (its embedding has one more row)
MAX_CLASSES = 100_000
#: the largest guidance weight (EDM2 and diffusers use up to about 10)
MAX_GUIDANCE = 100.0
#: how sample seeds are derived (``EvalConfig.seeding``)
SEEDINGS = ("per_sample", "batch")
#: training objectives of score networks; every name is a function in ``tf_score.losses``
SCORE_LOSSES = ("anneal_dsm", "anneal_ssm", "anneal_ssm_vr", "dsm", "edm")
SCHEDULES = ("geometric", "karras")
#: training sigma distributions of continuous models
SIGMA_DISTS = ("lognormal", "loguniform")
#: preconditionings of continuous models (``networks.preconditioning``)
PARAMETERIZATIONS = ("edm", "ncsnv2")
PROJECTIONS = ("gaussian", "rademacher")
OPTIMIZERS = ("adam", "rmsprop")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("float32", "mixed_bfloat16")
ACTIVATIONS = ("softplus", "elu", "swish", "tanh")
VAE_ENCODERS = ("implicit", "gaussian")
METRICS = ("fid", "kid")
FEATURE_EXTRACTORS = ("classifier", "inception")
STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "tpu")
#: data settings that may change between a run and its resumption (where the data lives)
PORTABLE_FIELDS = ("data_dir", "data_path", "download")
CONFIG_FILE = "config.json"
#: the version of config.json this library writes. 1: every file before the version was
#: recorded (a field it lacks takes today's default, which is what version 1 did); 2: the
#: sampler section holds only the option values given (version 1 wrote every solver's)
CONFIG_VERSION = 2


class ConfigError(ValueError):
    """An experiment setting is invalid; the message names the field and what is allowed."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


#: the largest count (steps, levels, samples, batch, ...): the graphs count in int32
MAX_COUNT = 2**31 - 1
#: the most noise levels: a grid is a tuple of Python floats in every solver's trace key
MAX_LEVELS = 100_000
#: the largest magnitude of a float setting: the graphs compute in float32
MAX_FLOAT = 3.4028234663852886e38


def check_seed(seed) -> int:
    """``seed`` as an int if it is an integer in [0, 2**31) (every seed of the library, a
    numpy integer too); ConfigError otherwise."""
    _require(
        isinstance(seed, numbers.Integral) and not isinstance(seed, bool)
        and 0 <= seed <= MAX_COUNT,
        f"seed must be an integer in [0, 2**31), got {seed!r}",
    )  # fmt: skip
    return int(seed)


def check_count(value, name: str, low: int, high: int = MAX_COUNT) -> int:
    """``value`` as an int if it is an integer in [low, high] (a numpy integer too);
    ConfigError naming ``name`` otherwise."""
    _require(
        isinstance(value, numbers.Integral) and not isinstance(value, bool)
        and low <= value <= high,
        f"{name} must be an integer in [{low}, {high}], got {value!r}",
    )  # fmt: skip
    return int(value)


def check_batch_split(batch_size: int, replicas: int = 1, grad_accum_steps: int = 1) -> None:
    """ConfigError unless the global batch splits evenly over the replicas and each replica's
    micro-batches (the one rule of the config, the API, the train step and the pipelines)."""
    parts = replicas * grad_accum_steps
    _require(
        batch_size % parts == 0,
        f"batch_size ({batch_size}) must be divisible by the {replicas} replica(s) x "
        f"grad_accum_steps ({grad_accum_steps})",
    )


def check_guidance(guidance, interval=()) -> float:
    """A guidance weight in [0, MAX_GUIDANCE] and an interval () or (lo, hi) with 0 <= lo <=
    hi, finite; ConfigError naming guidance or guidance_interval otherwise."""
    ok = isinstance(guidance, int | float) and not isinstance(guidance, bool)
    _require(ok and math.isfinite(guidance) and 0.0 <= guidance <= MAX_GUIDANCE,
             f"guidance must be a number in [0, {MAX_GUIDANCE:g}], got {guidance!r}")  # fmt: skip
    lo, hi = (interval if len(interval) == 2 else (0.0, -1.0)) if interval else (0.0, 0.0)
    _require(not interval or (len(interval) == 2 and 0.0 <= lo <= hi <= MAX_FLOAT),
             f"guidance_interval must be lo,hi with 0 <= lo <= hi (finite sigmas), got "
             f"{','.join(map(str, interval))}")  # fmt: skip
    return float(guidance)


def check_labels(labels, num_classes: int, name: str = "labels"):
    """``labels`` (ints) as a numpy int32 array, each in [0, num_classes); ConfigError naming
    ``name`` and what is allowed otherwise (an unconditional model takes none)."""
    arr = np.asarray(labels)
    _require(num_classes > 0 or arr.size == 0,
             f"{name}: the model is unconditional (trained with num_classes=0)")  # fmt: skip
    _require(arr.size == 0 or np.issubdtype(arr.dtype, np.integer),
             f"{name} must be class indices (integers), got {arr.dtype}")  # fmt: skip
    bad = arr[(arr < 0) | (arr >= num_classes)] if arr.size else arr
    _require(bad.size == 0, f"{name} must lie in [0, {num_classes - 1}] (num_classes="
             f"{num_classes}), got {bad.ravel()[:4].tolist()}")  # fmt: skip
    return arr.astype(np.int32)


def check_model_name(name: str) -> str:
    """``name`` if it can name a model in TF Serving's layout (EXPORT_DIR/<name>/<version>);
    ConfigError otherwise."""
    _require(
        isinstance(name, str)
        and bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name))
        and ".." not in name,
        f"export_model_name {name!r} is not a TF Serving model name: letters, digits, '_', '.', "
        "'-', starting with a letter or digit, no '/' or '..' path parts",
    )
    return name


def check_loss_levels(loss: str, num_levels: int) -> None:
    """ConfigError unless a single-level loss (dsm) has one noise level."""
    _require(
        loss != "dsm" or num_levels == 1,
        "loss=dsm is single-level: it needs num_levels=1 (anneal_dsm is the multi-level one)",
    )


def _positive_ints(obj, *names, minimum=1, maximum=MAX_COUNT):
    for name in names:
        v = getattr(obj, name)
        _require(
            isinstance(v, int) and not isinstance(v, bool) and minimum <= v <= maximum,
            f"{name} must be an integer >= {minimum} and <= {maximum}, got {v!r}",
        )


def _finite(obj, name, low=None, high=None, low_open=True):
    v = getattr(obj, name)
    _require(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        and abs(v) <= MAX_FLOAT,
        f"{name} must be finite in float32 (|value| <= {MAX_FLOAT:.4g}), got {v!r}",
    )  # fmt: skip
    if low is not None:
        ok = v > low if low_open else v >= low
        _require(ok, f"{name} must be {'>' if low_open else '>='} {low}, got {v!r}")
    if high is not None:
        _require(v < high, f"{name} must be < {high}, got {v!r}")


def _one_of(obj, name, allowed):
    v = getattr(obj, name)
    _require(v in allowed, f"{name} must be one of {', '.join(allowed)}; got {v!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the training data come from. ``data_shape`` and ``data_mean`` are filled in by
    training."""

    dataset: str = "two_mode"
    data_dir: str | None = None
    download: bool = True
    data_path: str | None = None
    image_size: int = 0
    random_flip: bool = False
    #: dynamically binarise images for the VAE's Bernoulli decoder
    binarize: bool = True
    data_shape: tuple[int, ...] | None = None
    #: the training data's mean per channel (per coordinate for toys), in data units: the
    #: centre of the deterministic samplers' start x0 = mean + sigma_1 z
    data_mean: tuple[float, ...] | None = None
    #: a class-conditional model's per-class means, class-major ([num_classes x channels],
    #: flattened; data units): the centre of a labelled sample's start (empty: the data's)
    class_means: tuple[float, ...] = ()
    #: classes of a class-conditional model (0: unconditional). The labels: a toy's mixture
    #: component, a tfds data set's ``label``, a folder's class subfolders (sorted by name),
    #: an .npz file's ``labels`` array
    num_classes: int = 0

    def __post_init__(self):
        _one_of(self, "dataset", DATASETS)
        _positive_ints(self, "image_size", minimum=0)
        _positive_ints(self, "num_classes", minimum=0, maximum=MAX_CLASSES)
        _require(
            not self.class_means
            or (self.num_classes > 0 and len(self.class_means) % self.num_classes == 0),
            f"class_means must hold num_classes x channels values, got {len(self.class_means)}"
            f" for num_classes={self.num_classes}",
        )
        _require(
            not self.num_classes or self.dataset not in TFDS_DATASETS
            or self.dataset in LABELLED_DATASETS,
            f"num_classes={self.num_classes}: dataset={self.dataset} has no labels; labelled "
            f"tfds data sets: {', '.join(LABELLED_DATASETS)}",
        )  # fmt: skip
        _require(
            self.dataset not in ("folder", "npz") or bool(self.data_path),
            f"dataset={self.dataset} needs data_path (the image folder or .npz file)",
        )

    @property
    def is_toy(self) -> bool:
        return self.dataset in TOY_DATASETS


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """The model family (``model``) and its network architecture (``network``)."""

    model: str = "score"
    #: "" picks the family's first (score: mlp, vae: mlp, classifier: conv)
    network: str = ""
    ngf: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    hidden_units: tuple[int, ...] = (128, 128)
    #: edm_mlp: width of the noise embedding and its per-layer projections (0: hidden_units[0])
    embed_dim: int = 0
    activation: str = "softplus"
    log_sigma_input: bool = True
    #: parameterise s(x, i) = f(x, i) / sigma_i (NCSNv2)
    scale_by_sigma: bool = False
    precision: str = "float32"
    vae_encoder: str = "implicit"
    latent_dim: int = 8

    def __post_init__(self):
        _require(
            isinstance(self.model, str) and self.model.isidentifier(),
            f"model must be the name of a model family, got {self.model!r}",
        )
        if not self.network:
            _require(self.model in DEFAULT_NETWORKS, f"model={self.model} needs a network")
            object.__setattr__(self, "network", DEFAULT_NETWORKS[self.model])
        _require(
            isinstance(self.network, str) and self.network.isidentifier(),
            f"network must be the name of a network, got {self.network!r}",
        )
        _positive_ints(self, "ngf", "num_res_blocks", "latent_dim")
        _positive_ints(self, "embed_dim", minimum=0)
        _require(
            len(self.channel_mults) > 0 and all(int(u) > 0 for u in self.channel_mults),
            f"channel_mults must be positive integers, got {self.channel_mults!r}",
        )
        _require(
            all(int(u) > 0 for u in self.hidden_units),
            f"hidden_units must be positive integers, got {self.hidden_units!r}",
        )
        _one_of(self, "activation", ACTIVATIONS)
        _one_of(self, "precision", PRECISIONS)
        _one_of(self, "vae_encoder", VAE_ENCODERS)


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """Noise levels sigma_max = sigma_1 > ... > sigma_L = sigma_min (data units): the levels a
    discrete model is trained on (geometric), or a continuous model's sampling grid
    (geometric or EDM's ``karras`` rho grid) and training distribution."""

    sigma_max: float = 20.0
    sigma_min: float = 1.0
    num_levels: int = 10
    schedule: str = "geometric"
    #: exponent of the karras grid
    rho: float = 7.0
    #: continuous models: the data's standard deviation in the network's scale (EDM)
    sigma_data: float = 0.5
    #: continuous models: training sigmas, lognormal (p_mean, p_std in the network's scale,
    #: as EDM) or loguniform on [sigma_min, sigma_max]
    sigma_dist: str = "lognormal"
    p_mean: float = -1.2
    p_std: float = 1.2
    #: continuous models: edm (c_skip, c_out, c_in of Karras et al.) or ncsnv2 (s = F / sigma)
    parameterization: str = "edm"

    def __post_init__(self):
        _finite(self, "sigma_max", 0.0)
        _finite(self, "sigma_min", 0.0)
        _positive_ints(self, "num_levels", maximum=MAX_LEVELS)
        _one_of(self, "schedule", SCHEDULES)
        _finite(self, "rho", 0.0)
        _finite(self, "sigma_data", 0.0)
        _one_of(self, "sigma_dist", SIGMA_DISTS)
        _finite(self, "p_mean")
        _finite(self, "p_std", 0.0)
        _one_of(self, "parameterization", PARAMETERIZATIONS)
        try:  # the grid's own rules (``noise.grids``): decreasing, L = 1 only at one sigma
            self.sigmas()
        except ValueError as e:
            raise ConfigError(f"schedule={self.schedule}: {e}") from e

    def sigmas(self):
        """The schedule as float32 numpy [L]."""
        if self.schedule == "karras":
            return grids.karras_sigmas(self.sigma_max, self.sigma_min, self.num_levels, self.rho)
        return grids.geometric_sigmas(self.sigma_max, self.sigma_min, self.num_levels)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The score-matching objective (``loss``, a function of ``tf_score.losses``) and knobs."""

    loss: str = "anneal_dsm"
    #: lambda(sigma) = sigma^anneal_power
    anneal_power: float = 2.0
    n_particles: int = 1
    projection: str = "gaussian"
    #: class-conditional models: the fraction of training examples whose label is replaced by
    #: "no label", so that one network is the conditional and the unconditional denoiser
    #: (classifier-free guidance; k-diffusion's cond_dropout_rate)
    label_dropout: float = 0.1

    def __post_init__(self):
        _one_of(self, "loss", SCORE_LOSSES)
        _finite(self, "anneal_power")
        _finite(self, "label_dropout", 0.0, 1.0, low_open=False)
        _positive_ints(self, "n_particles")
        _one_of(self, "projection", PROJECTIONS)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    #: clip gradients by global norm (0: off)
    grad_clip_norm: float = 0.0
    #: constant, or cosine: decay from learning_rate to 0 at the run's last step (num_steps)
    lr_schedule: str = "constant"
    #: linear warm-up from 0 over this many steps (before the schedule)
    lr_warmup_steps: int = 0

    def __post_init__(self):
        _one_of(self, "optimizer", OPTIMIZERS)
        _finite(self, "learning_rate", 0.0)
        _finite(self, "grad_clip_norm", 0.0, low_open=False)
        _one_of(self, "lr_schedule", LR_SCHEDULES)
        _positive_ints(self, "lr_warmup_steps", minimum=0)


#: what a sampler option's value may be in a config (its solver's schema says more, when used)
OPTION_TYPES = (bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """The run's default sampler and the sampler option values given, for it or for other
    solvers (flat: ``step_lr`` is annealed Langevin's, ``heun_steps`` Heun's; a name two
    solvers share applies to each). Plain data: the solver registry validates the sampler and
    its options when flags are parsed, a draw is made or an export is built
    (``sampling.options_of``); options not given take their solver's defaults there.
    config.json stores them flat beside ``sampler``."""

    sampler: str = "annealed_langevin"
    #: (option, value) pairs given, sorted by name
    values: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        _require(
            isinstance(self.sampler, str) and self.sampler.isidentifier(),
            f"sampler must be the name of a registered solver, got {self.sampler!r}",
        )
        checked = {}
        for name, value in dict(self.values).items():
            _require(isinstance(name, str) and name.isidentifier(),
                     f"a sampler option name must be an identifier, got {name!r}")  # fmt: skip
            _require(
                isinstance(value, OPTION_TYPES)
                and (not isinstance(value, float) or math.isfinite(value)),
                f"sampler option {name} must be true/false, a finite number or a word, "
                f"got {value!r}",
            )
            checked[name] = value
        object.__setattr__(self, "values", tuple(sorted(checked.items())))

    def given(self) -> dict:
        """The option values given, by name."""
        return dict(self.values)

    def replace(self, **changes) -> SamplerConfig:
        """A copy with another ``sampler`` and/or option values."""
        sampler = changes.pop("sampler", self.sampler)
        return SamplerConfig(sampler, tuple({**self.given(), **changes}.items()))

    def to_dict(self) -> dict:
        """Flat: the sampler and the option values given."""
        return {"sampler": self.sampler, **self.given()}

    @classmethod
    def from_dict(cls, d: dict) -> SamplerConfig:
        d = dict(d)
        sampler = d.pop("sampler", cls.sampler)
        return cls(sampler, tuple(d.items()))


#: the widest power-function EMA profile: the uniform average of all steps (gamma = 0)
MAX_SIGMA_REL = 1.0 / math.sqrt(12.0)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop's settings (``training.loop.train`` reads this section).
    ``batch_size`` is the global batch over all replicas."""

    num_steps: int = 20000
    batch_size: int = 128
    log_every: int = 500
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    #: image summaries every this many steps (0: only at the end)
    sample_every: int = 0
    #: EMA decay of the weights; 0 makes the EMA copy equal the live weights
    ema_rate: float = 0.999
    #: ramp the decay up as min(ema_rate, (1 + t) / (10 + t)) at step t, so the average
    #: forgets the random initial weights (the undebiased 0.999 EMA still holds 13% of them
    #: after 2000 steps, enough to ruin short runs' samples)
    ema_warmup: bool = True
    #: XLA-compile the training step (on one replica the whole step: gradient, NaN guard,
    #: update, EMA; across replicas each one's loss and gradient), and the solvers (measure
    #: first: on CPUs it can be slower)
    jit: bool = False
    #: steps run inside one compiled call (cuts Python overhead for small models)
    steps_per_loop: int = 100
    #: micro-batches per replica per step, run one after another with their gradients summed
    #: (R replicas x A micro-batches give the same run as 1 replica x R*A)
    grad_accum_steps: int = 1
    #: post-hoc EMA (EDM2): the relative widths sigma_rel of the power-function EMA profiles
    #: tracked beside ``ema_rate``'s, a snapshot of each with every checkpoint (workdir/
    #: posthoc_ema/); any width in between is reconstructed after training. EDM2: 0.05, 0.10
    posthoc_ema: tuple[float, ...] = ()

    def __post_init__(self):
        _positive_ints(
            self,
            "num_steps",
            "batch_size",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "steps_per_loop",
            "grad_accum_steps",
        )
        _positive_ints(self, "sample_every", minimum=0)
        _finite(self, "ema_rate", 0.0, 1.0, low_open=False)
        _require(
            all(isinstance(v, float) and 0.0 < v < MAX_SIGMA_REL for v in self.posthoc_ema)
            and len(set(self.posthoc_ema)) == len(self.posthoc_ema),
            f"posthoc_ema must be distinct widths sigma_rel in (0, {MAX_SIGMA_REL:.4f}), got "
            f"{self.posthoc_ema!r}",
        )
        check_batch_split(self.batch_size, 1, self.grad_accum_steps)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What a sampling or evaluation command draws and measures (``evaluate.*``)."""

    num_samples: int = 64
    #: chains run at once on image models (0: all num_samples together); batch b is seeded
    #: (seed, b)
    sample_batch_size: int = 0
    #: toys, --evaluate: batches of num_samples pooled for the metrics
    eval_repeats: int = 4
    num_permutations: int = 500
    metrics: tuple[str, ...] = ()
    feature_extractor: str = "classifier"
    classifier: str | None = None
    inception_weights: str = "imagenet"
    ais_chains: int = 16
    ais_temperatures: int = 1000
    ais_leapfrog_steps: int = 10
    eval_examples: int = 200
    eval_batch: int = 100
    iwae_samples: int = 1000
    bits_per_dim: int = 0
    #: training image models: classifier FID of fid_samples samples (the run's sampler) with
    #: its real-vs-real floor, a TensorBoard scalar every this many steps (0: off)
    fid_every: int = 0
    fid_samples: int = 500
    #: sampling: the largest work, num_samples x network evaluations x the network's cost per
    #: evaluation (``sampling.budget``, the export's unit; 0: no cap)
    max_evaluations: int = 0
    #: class-conditional models: the samples' classes, one for all or one per sample
    #: (empty: unconditional samples)
    labels: tuple[int, ...] = ()
    #: guidance weight w: D = D_ref + w (D - D_ref), the reference the unconditional model
    #: (classifier-free) or the guide (autoguidance); 1: none, 0: the reference alone
    guidance: float = 1.0
    #: (lo, hi): guidance only for sigma in [lo, hi] (data units; empty: at every sigma)
    guidance_interval: tuple[float, ...] = ()
    #: autoguidance: the weak model's workdir (its checkpoint ``guide_checkpoint``, or post-hoc
    #: EMA ``guide_sigma_rel``; a workdir given by either alone is the sampled run's own);
    #: classifier guidance: a noise-conditional classifier's workdir
    guide_workdir: str | None = None
    guide_checkpoint: str | None = None
    guide_sigma_rel: float = 0.0
    #: how seeds map to samples: per_sample (sample i of seed s is the same at any batch size
    #: and however a request is split) or batch (batch b seeded (s, b): runs and exports made
    #: before per-sample seeding)
    seeding: str = "per_sample"

    def __post_init__(self):
        check_guidance(self.guidance, self.guidance_interval)
        _require(
            all(isinstance(v, int) and 0 <= v < MAX_CLASSES for v in self.labels),
            f"labels must be class indices in [0, {MAX_CLASSES}), got {self.labels!r}",
        )
        _finite(self, "guide_sigma_rel", 0.0, MAX_SIGMA_REL, low_open=False)
        _one_of(self, "seeding", SEEDINGS)
        _positive_ints(self, "num_samples", "eval_repeats", "num_permutations", "ais_chains",
                       "ais_temperatures", "ais_leapfrog_steps", "eval_examples", "eval_batch",
                       "iwae_samples", "fid_samples")  # fmt: skip
        _positive_ints(self, "sample_batch_size", "bits_per_dim", "fid_every",
                       "max_evaluations", minimum=0)  # fmt: skip
        _require(
            set(self.metrics) <= set(METRICS),
            f"metrics takes a subset of {', '.join(METRICS)}, got {','.join(self.metrics)}",
        )
        _one_of(self, "feature_extractor", FEATURE_EXTRACTORS)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """A SavedModel export for TF Serving (``api.export``)."""

    export_dir: str | None = None
    export_model_name: str | None = None
    export_samplers: tuple[str, ...] = ()
    export_max_samples: int = 256
    export_max_evaluations: int = 1_000_000

    def __post_init__(self):
        _positive_ints(self, "export_max_samples", "export_max_evaluations")
        if self.export_model_name is not None:
            check_model_name(self.export_model_name)
        _require(
            all(isinstance(s, str) and s.isidentifier() for s in self.export_samplers),
            f"export_samplers takes names of registered solvers, got {self.export_samplers!r}",
        )


@dataclasses.dataclass(frozen=True)
class DistributeConfig:
    """The tf.distribute strategy of a training command."""

    strategy: str = "default"
    devices: tuple[str, ...] = ()
    tpu: str | None = None
    cpu_devices: int = 0
    collective_timeout: float = 0.0

    def __post_init__(self):
        _one_of(self, "strategy", STRATEGIES)
        _positive_ints(self, "cpu_devices", minimum=0)
        _finite(self, "collective_timeout", 0.0, low_open=False)
        _require(
            not self.devices or self.strategy == "mirrored",
            "devices is for strategy=mirrored",
        )
        _require(
            bool(self.tpu) == (self.strategy == "tpu"),
            "tpu (a Cloud TPU name, grpc://host:port or local) is needed by strategy=tpu and only "
            "by it",
        )
        _require(
            not self.collective_timeout or self.strategy == "multi_worker_mirrored",
            "collective_timeout is for strategy=multi_worker_mirrored",
        )
        _require(
            not self.cpu_devices or self.strategy in ("mirrored", "default"),
            "cpu_devices is for strategy=mirrored or default (a multi-worker strategy must set "
            "up TensorFlow's devices itself)",
        )


SECTIONS = {
    "data": DataConfig,
    "network": NetworkConfig,
    "noise": NoiseConfig,
    "loss": LossConfig,
    "optimizer": OptimizerConfig,
    "sampler": SamplerConfig,
    "train": TrainConfig,
    "evaluation": EvalConfig,
    "export": ExportConfig,
    "distribute": DistributeConfig,
}
#: sections of a command (what to measure, where to export, how to distribute), not of the
#: run: never written to config.json, always the command's own
COMMAND_SECTIONS = ("evaluation", "export", "distribute")
#: sections whose settings define the trained model (checked when a run resumes)
MODEL_SECTIONS = ("data", "network", "noise", "loss", "optimizer")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = DataConfig()
    network: NetworkConfig = NetworkConfig()
    noise: NoiseConfig = NoiseConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    sampler: SamplerConfig = SamplerConfig()
    train: TrainConfig = TrainConfig()
    evaluation: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    distribute: DistributeConfig = DistributeConfig()
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "seed", check_seed(self.seed))
        check_loss_levels(self.loss.loss, self.noise.num_levels)
        if not self.evaluation.guide_workdir:  # a guiding classifier's classes: when it loads
            check_labels(self.evaluation.labels, self.data.num_classes)

    @property
    def is_image(self) -> bool:
        return not self.data.is_toy

    def replace(self, **sections) -> ExperimentConfig:
        """A copy with some fields changed: ``cfg.replace(noise={"num_levels": 5}, seed=1)``."""
        changes = {}
        for name, value in sections.items():
            if name == "sampler" and isinstance(value, dict):
                value = self.sampler.replace(**value)
            elif name in SECTIONS and isinstance(value, dict):  # typed as from JSON
                current = dataclasses.asdict(getattr(self, name))
                value = _section_from_dict(SECTIONS[name], {**current, **value}, name)
            changes[name] = value
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The run's settings (config.json): every section but the command's."""
        run = [name for name in SECTIONS if name not in COMMAND_SECTIONS]
        out = {name: _jsonable(dataclasses.asdict(getattr(self, name))) for name in run}
        return {"version": CONFIG_VERSION, **out, "sampler": self.sampler.to_dict(),
                "seed": self.seed}  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentConfig:
        """Read a config dict (``config.json``, also the flat one of tf_score before the typed
        config); unknown keys are an error."""
        _require(isinstance(d, dict), f"a config must be a JSON object, got {type(d).__name__}")
        if "dataset" in d:  # a flat dict: the typed config nests it under "data"
            return from_flat(_from_legacy(d))
        version = d.get("version", 1)
        _require(
            isinstance(version, int) and 1 <= version <= CONFIG_VERSION,
            f"config version {version!r} was written by a newer tf_score (this one reads "
            f"versions 1 to {CONFIG_VERSION}): upgrade tf_score to read it",
        )
        unknown = set(d) - {*SECTIONS, "seed", "version"}
        _require(not unknown, f"unknown config sections: {', '.join(sorted(unknown))}")
        sections = {}
        for name, section_cls in SECTIONS.items():
            sections[name] = _section_from_dict(section_cls, d.get(name, {}), name)
        return cls(**sections, seed=d.get("seed", 0))

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        return cls.from_dict(json.loads(text))

    def model_differences(self, other: ExperimentConfig) -> list[tuple[str, object, object]]:
        """(field, self's value, other's value) for the model-defining settings that differ
        (the data's location may move between a run and its resumption)."""
        diffs = []
        for section in MODEL_SECTIONS:
            a, b = getattr(self, section), getattr(other, section)
            for f in dataclasses.fields(a):
                if f.name in PORTABLE_FIELDS or f.name in (
                    "data_shape",
                    "data_mean",
                    "class_means",
                ):
                    continue
                if getattr(a, f.name) != getattr(b, f.name):
                    diffs.append((f.name, getattr(a, f.name), getattr(b, f.name)))
        if self.seed != other.seed:
            diffs.append(("seed", self.seed, other.seed))
        return diffs


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [_jsonable(v) for v in obj]
    return obj


def _section_from_dict(section_cls, d: dict, name: str):
    _require(isinstance(d, dict), f"config section {name!r} must be an object")
    if section_cls is SamplerConfig:
        return SamplerConfig.from_dict(d)
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = set(d) - set(fields)
    _require(not unknown, f"unknown fields in config section {name!r}: {sorted(unknown)}")
    hints = typing.get_type_hints(section_cls)
    kwargs = {}
    for key, value in d.items():
        if value is not None and "tuple[str" in str(hints[key]):
            value = tuple(str(v) for v in value)
        elif value is not None and "tuple[float" in str(hints[key]):
            value = tuple(float(v) for v in value)
        elif value is not None and "tuple" in str(hints[key]):
            value = tuple(int(v) for v in value)
        elif hints[key] is float and isinstance(value, int | float):
            value = float(value)
        kwargs[key] = value
    return section_cls(**kwargs)


#: renamed settings of the flat config.json written before the typed config
_LEGACY_NAMES = {"sigma_begin": "sigma_max", "sigma_end": "sigma_min"}


def _from_legacy(d: dict) -> dict:
    """The flat dict of an old workdir in today's field names: ``model`` was the architecture
    (mlp, resnet, refinenet) or the family (vae, classifier)."""
    d = {_LEGACY_NAMES.get(k, k): v for k, v in d.items()}
    model = d.pop("model", "mlp")
    arch, vae_optimizer = d.pop("vae_arch", "mlp"), d.pop("vae_optimizer", "rmsprop")
    if model == "vae":
        d.update(model="vae", network=arch, optimizer=vae_optimizer)
    elif model == "classifier":
        d.update(model="classifier")
    else:
        d.update(model="score", network=model)
    return d


def field_names() -> dict[str, str]:
    """Every field name -> its section (names are unique across sections: one per quantity);
    the sampler options are not fields: they are the values of the ``sampler`` section."""
    out = {}
    for section, section_cls in SECTIONS.items():
        names = [f.name for f in dataclasses.fields(section_cls)]
        if section_cls is SamplerConfig:
            names = ["sampler"]
        for name in names:
            assert name not in out, f"{name} is in two sections"
            out[name] = section
    return out


def from_flat(values: dict) -> ExperimentConfig:
    """Build a config from flat ``{field: value}`` (flags, a notebook's keyword arguments);
    fields not given keep their defaults, and names that are no field are sampler option
    values (``sampling.options_of`` checks them against the registry when they are used)."""
    owner = field_names()
    sections: dict[str, dict] = {name: {} for name in SECTIONS}
    seed = 0
    for key, value in values.items():
        if value is None:  # not given: the default
            continue
        if key == "seed":
            seed = value
            continue
        sections[owner.get(key, "sampler")][key] = value
    return ExperimentConfig.from_dict({**sections, "seed": seed})


def section_with(cfg: ExperimentConfig, name: str, values: dict):
    """Section ``name`` of ``cfg`` with some fields changed (``values``, typed as from JSON
    or flags), checked on its own: not against the other sections."""
    current = dataclasses.asdict(getattr(cfg, name))
    return _section_from_dict(SECTIONS[name], {**current, **values}, name)
