"""Noise-conditional score models as training bundles: the loss factory and the toy bundle.

The loss factory follows the score_sde pattern: ``make_score_loss`` returns a closure
``(score_fn, x, seed) -> LossOutput`` that draws a level per example, perturbs, and scores.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from tf_score import data, losses, plotting, samplers
from tf_score.networks import NoiseConditionalMLP
from tf_score.train import LossOutput, ModelBundle, Objective

SCORE_LOSSES = ("anneal_dsm", "anneal_ssm", "anneal_ssm_vr", "dsm")


@dataclasses.dataclass(frozen=True)
class ScoreLossConfig:
    """Which objective trains the score network, and its knobs.

    ``dsm`` is single-level denoising score matching: it needs a one-level schedule.
    """

    name: str = "anneal_dsm"
    anneal_power: float = 2.0
    n_particles: int = 1
    projection: str = "gaussian"

    def __post_init__(self):
        if self.name not in SCORE_LOSSES:
            raise ValueError(f"loss must be one of {SCORE_LOSSES}, got {self.name!r}")
        if self.n_particles < 1:
            raise ValueError(f"n_particles must be >= 1, got {self.n_particles}")
        if self.projection not in losses.PROJECTIONS:
            raise ValueError(
                f"projection must be one of {losses.PROJECTIONS}, got {self.projection!r}"
            )


def make_score_loss(cfg: ScoreLossConfig, sigmas):
    """Return ``loss(score_fn, x, seed) -> LossOutput`` for a noise-conditional score_fn."""
    sigmas = np.asarray(sigmas, np.float32)
    num_levels = len(sigmas)
    if cfg.name == "dsm" and num_levels != 1:
        raise ValueError(f"loss 'dsm' is single-level: use num_levels=1 (got {num_levels})")

    def loss(score_fn, x, seed) -> LossOutput:
        level_seed, loss_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 2, alg="philox")
        )
        labels = losses.sample_levels(tf.shape(x)[0], num_levels, level_seed)
        if cfg.name in ("anneal_dsm", "dsm"):
            per_example = losses.anneal_dsm(
                score_fn, x, sigmas, labels, loss_seed, anneal_power=cfg.anneal_power
            )
        else:
            per_example = losses.anneal_ssm(
                score_fn,
                x,
                sigmas,
                labels,
                loss_seed,
                anneal_power=cfg.anneal_power,
                n_particles=cfg.n_particles,
                projection=cfg.projection,
                variance_reduction=cfg.name == "anneal_ssm_vr",
            )
        return LossOutput(per_example, labels)

    return loss


def score_objective(
    loss_cfg: ScoreLossConfig,
    sigmas,
    learning_rate: float,
    grad_clip_norm: float | None = None,
    model_name: str = "score",
    beta_1: float = 0.9,
) -> Objective:
    """The Adam-trained objective of a score network named ``model_name`` in the bundle."""
    loss = make_score_loss(loss_cfg, sigmas)

    def loss_fn(models, x, seed):
        model = models[model_name]
        return loss(lambda y, labels: model(y, labels, training=True), x, seed)

    return Objective(
        name=model_name,
        loss_fn=loss_fn,
        variables=lambda models: models[model_name].trainable_variables,
        optimizer_fn=lambda: keras.optimizers.Adam(learning_rate, beta_1=beta_1),
        grad_clip_norm=grad_clip_norm,
    )


@dataclasses.dataclass(frozen=True)
class ToyModelConfig:
    hidden_units: tuple[int, ...] = (128, 128)
    activation: str = "softplus"
    log_sigma_input: bool = True
    scale_by_sigma: bool = False


def toy_model_fn(sigmas, cfg: ToyModelConfig):
    def build():
        model = NoiseConditionalMLP(
            sigmas,
            data_dim=2,
            hidden_units=cfg.hidden_units,
            activation=cfg.activation,
            log_sigma_input=cfg.log_sigma_input,
            scale_by_sigma=cfg.scale_by_sigma,
            name="score",
        )
        model.build()
        return model

    return build


def toy_bundle(
    toy: data.GaussianMixtureToy,
    sigmas,
    model_cfg: ToyModelConfig,
    loss_cfg: ScoreLossConfig,
    learning_rate: float,
    seed: int,
    sample_eps: float = 0.05,
    sample_steps_each: int = 100,
    grad_clip_norm: float | None = None,
) -> ModelBundle:
    """Train a noise-conditional MLP on fresh samples of a 2-D toy distribution."""
    sigmas = np.asarray(sigmas, np.float32)
    data_seed = tf.constant([seed, 0xDA7A], tf.int32)

    # One global stream (pipeline 0's seed): global batch k is the same for any topology.
    stream_seed = tf.random.experimental.stateless_fold_in(data_seed, 0, alg="philox")

    def dataset_fn(global_batch, ctx, start_step):
        share = data.batch_share(global_batch, ctx)
        return data.toy_dataset(toy, global_batch, stream_seed, start_step, share)

    def image_summaries(ema_models, step):
        model = ema_models["score"]
        x0 = samplers.uniform_init([512, 2], [seed, 1], -toy.extent, toy.extent)
        out = samplers.annealed_langevin(
            model, x0, sigmas, sample_eps, sample_steps_each, tf.constant([seed, 2])
        )
        png = plotting.scatter_panels(
            {f"annealed Langevin, step {step}": out.samples.numpy()}, toy.extent, dpi=80
        )
        return {"samples/annealed_langevin": plotting.png_to_array(png)}

    return ModelBundle(
        model_fns={"score": toy_model_fn(sigmas, model_cfg)},
        objectives=[score_objective(loss_cfg, sigmas, learning_rate, grad_clip_norm)],
        dataset_fn=dataset_fn,
        num_levels=len(sigmas),
        image_summaries=image_summaries,
    )


def sigmas_from_config(cfg: dict) -> np.ndarray:
    from tf_score.sigmas import geometric_sigmas

    return geometric_sigmas(cfg["sigma_begin"], cfg["sigma_end"], cfg["num_levels"])


def toy_model_config(cfg: dict) -> ToyModelConfig:
    return ToyModelConfig(
        hidden_units=tuple(cfg["hidden_units"]),
        activation=cfg["activation"],
        log_sigma_input=cfg["log_sigma_input"],
        scale_by_sigma=cfg["scale_by_sigma"],
    )


def loss_config(cfg: dict) -> ScoreLossConfig:
    return ScoreLossConfig(
        name=cfg["loss"],
        anneal_power=cfg["anneal_power"],
        n_particles=cfg["n_particles"],
        projection=cfg["projection"],
    )


IMAGE_MODELS = ("refinenet", "resnet")


def is_image_config(cfg: dict) -> bool:
    return cfg["dataset"] not in data.TOYS


def load_training_images(cfg: dict, split: str = "train"):
    """(uint8 image dataset, image shape, random_flip, cache) for an image experiment config."""
    name = cfg["dataset"]
    if name in ("folder", "npz"):
        if not cfg.get("data_path"):
            raise ValueError(f"--dataset={name} needs --data_path")
        if name == "folder":
            arr = data.load_image_folder(cfg["data_path"], cfg.get("image_size") or None)
        else:
            arr = data.load_npz_images(cfg["data_path"])
        ds = tf.data.Dataset.from_tensor_slices(arr)
        return ds, tuple(arr.shape[1:]), bool(cfg.get("random_flip")), True
    ds, spec = data.load_tfds_images(
        name, split, cfg.get("data_dir") or None, download=cfg.get("download", False)
    )
    return ds, spec.image_shape, spec.random_flip, spec.cache


def model_fn_from_config(cfg: dict, image_shape=None):
    """Factory of the built score network described by an experiment config."""
    sigmas = sigmas_from_config(cfg)
    name = cfg["model"]
    if name == "mlp":
        return toy_model_fn(sigmas, toy_model_config(cfg))
    if image_shape is None:
        raise ValueError(f"model {name!r} needs the image shape")
    from tf_score.networks import ConditionalResNet, CondRefineNetDilated

    def build():
        if name == "refinenet":
            m = CondRefineNetDilated(
                image_shape,
                sigmas,
                ngf=cfg["ngf"],
                scale_by_sigma=cfg["scale_by_sigma"],
                name="score",
            )
        elif name == "resnet":
            m = ConditionalResNet(
                image_shape,
                sigmas,
                ngf=cfg["ngf"],
                channel_mults=cfg["channel_mults"],
                num_blocks=cfg["num_res_blocks"],
                scale_by_sigma=cfg["scale_by_sigma"],
                name="score",
            )
        else:
            raise ValueError(f"unknown model {name!r}; choose mlp or one of {IMAGE_MODELS}")
        m.build()
        return m

    return build


def image_bundle(
    model_fn,
    images: tf.data.Dataset,
    image_shape,
    sigmas,
    loss_cfg: ScoreLossConfig,
    learning_rate: float,
    seed: int,
    random_flip: bool = False,
    cache: bool = True,
    sample_eps: float = 2e-5,
    sample_steps_each: int = 100,
    num_summary_samples: int = 16,
    grad_clip_norm: float | None = None,
) -> ModelBundle:
    """Train a noise-conditional image score network on dequantised images in [0, 1]."""
    sigmas = np.asarray(sigmas, np.float32)
    dataset_fn = data.image_dataset_fn(
        images, tf.constant([seed, 0x1A6E], tf.int32), random_flip=random_flip, cache=cache
    )

    def image_summaries(ema_models, step):
        x0 = samplers.uniform_init([num_summary_samples, *image_shape], [seed, 1])
        out = samplers.annealed_langevin(
            ema_models["score"],
            x0,
            sigmas,
            sample_eps,
            sample_steps_each,
            tf.constant([seed, 2]),
            denoise=True,
        )
        return {"samples/annealed_langevin": plotting.image_grid(out.samples.numpy())}

    return ModelBundle(
        model_fns={"score": model_fn},
        objectives=[score_objective(loss_cfg, sigmas, learning_rate, grad_clip_norm)],
        dataset_fn=dataset_fn,
        num_levels=len(sigmas),
        image_summaries=image_summaries,
    )


def bundle_from_config(cfg: dict, sample_eps: float, sample_steps_each: int):
    """(bundle, data shape) for an experiment config (workdir/config.json)."""
    sigmas = sigmas_from_config(cfg)
    clip = cfg["grad_clip_norm"] or None
    if not is_image_config(cfg):
        bundle = toy_bundle(
            data.get_toy(cfg["dataset"]),
            sigmas,
            toy_model_config(cfg),
            loss_config(cfg),
            learning_rate=cfg["learning_rate"],
            seed=cfg["seed"],
            sample_eps=sample_eps,
            sample_steps_each=sample_steps_each,
            grad_clip_norm=clip,
        )
        return bundle, (2,)
    images, shape, flip, cache = load_training_images(cfg)
    bundle = image_bundle(
        model_fn_from_config(cfg, shape),
        images,
        shape,
        sigmas,
        loss_config(cfg),
        cfg["learning_rate"],
        cfg["seed"],
        random_flip=flip,
        cache=cache,
        sample_eps=sample_eps,
        sample_steps_each=sample_steps_each,
        grad_clip_norm=clip,
    )
    return bundle, tuple(shape)
