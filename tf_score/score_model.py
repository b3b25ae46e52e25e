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
        level_seed, loss_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
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

    def dataset_fn(batch_size, ctx, start_step):
        pipeline_seed = tf.random.experimental.stateless_fold_in(data_seed, ctx.input_pipeline_id)
        return data.toy_dataset(toy, batch_size, pipeline_seed, start_step=start_step)

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


def toy_bundle_from_config(
    cfg: dict, sample_eps: float = 0.05, sample_steps_each: int = 100
) -> ModelBundle:
    """The toy bundle described by a saved experiment config (workdir/config.json)."""
    return toy_bundle(
        data.get_toy(cfg["dataset"]),
        sigmas_from_config(cfg),
        toy_model_config(cfg),
        loss_config(cfg),
        learning_rate=cfg["learning_rate"],
        seed=cfg["seed"],
        sample_eps=sample_eps,
        sample_steps_each=sample_steps_each,
        grad_clip_norm=cfg["grad_clip_norm"] or None,
    )
