"""Noise-conditional score models as training bundles (the ``score`` model family).

The loss factory follows the score_sde pattern: ``make_score_loss`` returns a closure
``(score_fn, x, seed) -> LossOutput`` that draws a level per example, perturbs, and scores.
Everything is built from an ``ExperimentConfig``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tf_score import data, losses, sampling
from tf_score.config import (
    ConfigError,
    ExperimentConfig,
    LossConfig,
    check_loss_levels,
)
from tf_score.evaluation import plotting
from tf_score.networks import contract
from tf_score.networks import registry as networks
from tf_score.noise import draws
from tf_score.training import optimizers
from tf_score.training.bundle import LossOutput, ModelBundle, Objective


def make_score_loss(cfg: LossConfig, sigmas):
    """Return ``loss(score_fn, x, seed) -> LossOutput`` for a noise-conditional score_fn:
    ``cfg.loss`` names the function of ``tf_score.losses`` that scores each example."""
    sigmas = np.asarray(sigmas, np.float32)
    num_levels = len(sigmas)
    check_loss_levels(cfg.loss, num_levels)

    def loss(score_fn, x, seed) -> LossOutput:
        level_seed, loss_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 2, alg="philox")
        )
        levels = losses.sample_levels(tf.shape(x)[0], num_levels, level_seed)
        if cfg.loss == "dsm":
            per_example = losses.dsm(lambda y: score_fn(y, levels), x, sigmas[0], loss_seed)
        elif cfg.loss == "anneal_dsm":
            per_example = losses.anneal_dsm(
                score_fn, x, sigmas, levels, loss_seed, anneal_power=cfg.anneal_power
            )
        else:
            per_example = getattr(losses, cfg.loss)(
                score_fn,
                x,
                sigmas,
                levels,
                loss_seed,
                anneal_power=cfg.anneal_power,
                n_particles=cfg.n_particles,
                projection=cfg.projection,
            )
        return LossOutput(per_example, levels)

    return loss


def optimizer_fn(cfg: ExperimentConfig):
    """Factory of the configured Keras optimizer."""
    return lambda: optimizers.make_optimizer(cfg.optimizer, cfg.train.num_steps)


def training_sigmas(cfg: ExperimentConfig):
    """``sigma_fn(batch, seed [2]) -> sigma [B]`` (data units): the noise levels a continuous
    denoiser, or a noise-conditional classifier, of ``cfg`` trains on."""
    nc, (a, _) = cfg.noise, networks.data_scale(cfg)

    def sigma_fn(batch, seed):
        return draws.sample_sigmas(
            batch, seed, nc.sigma_dist, nc.p_mean, nc.p_std, nc.sigma_min, nc.sigma_max, a
        )

    return sigma_fn


def denoising_objective_loss(cfg: ExperimentConfig, model_name: str = "score"):
    """``loss_fn(models, batch, seed)`` of a continuous denoiser: ``losses.denoising_loss``
    with the configured sigma distribution, levels = the nearest grid level (for summaries);
    a class-conditional model's batch is (x, labels), trained with label dropout."""
    sigma_fn, levels_of = training_sigmas(cfg), draws.nearest_level(cfg.noise.sigmas())

    def loss_fn(models, batch, seed):
        x, labels = batch if conditional(cfg) else (batch, None)
        loss, levels = losses.denoising_loss(models[model_name], x, seed, sigma_fn, levels_of,
                                             labels, cfg.loss.label_dropout)  # fmt: skip
        return LossOutput(loss, levels)

    return loss_fn


def score_objective(cfg: ExperimentConfig, model_name: str = "score") -> Objective:
    """The objective of the score network named ``model_name`` in the bundle."""
    if is_continuous(cfg):
        loss_fn = denoising_objective_loss(cfg, model_name)
    else:
        loss = make_score_loss(cfg.loss, cfg.noise.sigmas())

        def loss_fn(models, x, seed):
            model = models[model_name]
            return loss(lambda y, levels: model(y, levels, training=True), x, seed)

    return Objective(
        name=model_name,
        loss_fn=loss_fn,
        variables=lambda models: models[model_name].trainable_variables,
        optimizer_fn=optimizer_fn(cfg),
        grad_clip_norm=cfg.optimizer.grad_clip_norm or None,
    )


def network_fn(cfg: ExperimentConfig, data_shape=None):
    """Factory of the built score network of ``cfg`` (``networks.registry``; ``data_shape``
    defaults to the config's)."""
    networks.get(cfg.network.network)  # registered: an error now, not when built
    shape = tuple(data_shape or cfg.data.data_shape or (2,))
    return lambda: networks.build(cfg, shape)


def conditional(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg`` trains a class-conditional model (``num_classes`` > 0)."""
    return cfg.data.num_classes > 0


def is_continuous(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg``'s network is a continuous-sigma denoiser (sampled on any grid)."""
    return networks.get(cfg.network.network).continuous


def checkpoint_settings(cfg: ExperimentConfig) -> dict:
    """What a score model's checkpoints record and a resume or load must match: the noise
    section (the levels a network is trained on; a continuous one's training sigmas, its
    preconditioning and sampling grid). The shapes alone do not tell another grid."""
    return dataclasses.asdict(cfg.noise)


def score_model(cfg: ExperimentConfig, network):
    """The network under the model contract (``networks.contract``): a continuous denoiser
    as it is, a level-conditioned network wrapped on the levels it was trained on."""
    if is_continuous(cfg):
        return network
    return contract.LevelScoreModel(network, cfg.noise.sigmas())


def data_range(cfg: ExperimentConfig) -> tuple[float, float]:
    """Where the data live: images in [0, 1], a toy's square [-extent, extent]^2."""
    if cfg.data.is_toy:
        extent = data.get_toy(cfg.data.dataset).extent
        return (-extent, extent)
    return (0.0, 1.0)


def sample_space(cfg: ExperimentConfig, data_shape=None) -> sampling.SampleSpace:
    """The samples' shape, the data's range and mean (the solvers' starts)."""
    shape = tuple(data_shape or cfg.data.data_shape or (2,))
    mean, per_class = cfg.data.data_mean, cfg.data.class_means
    if per_class:
        channels = len(per_class) // cfg.data.num_classes
        per_class = tuple(tuple(per_class[k : k + channels])
                          for k in range(0, len(per_class), channels))  # fmt: skip
    return sampling.SampleSpace(shape, data_range(cfg), None if mean is None else tuple(mean),
                                per_class or None)  # fmt: skip


def data_mean(cfg: ExperimentConfig, max_images: int = 10_000) -> tuple[float, ...]:
    """The training data's mean in data units: per coordinate for toys (exact), per channel
    for images (over the first ``max_images``, scaled to [0, 1])."""
    if cfg.data.is_toy:
        toy = data.get_toy(cfg.data.dataset)
        mean = np.asarray(toy.weights, np.float64) @ np.asarray(toy.locs, np.float64)
        return tuple(float(v) for v in mean / np.sum(toy.weights))
    images, *_ = data.load_training_images(cfg.data)
    total, count = 0.0, 0
    for batch in images.take(max_images).batch(1000).as_numpy_iterator():
        x = batch.astype(np.float64) / 255.0
        total = total + x.reshape(-1, x.shape[-1]).sum(axis=0)
        count += x.size // x.shape[-1]
    return tuple(float(v) for v in np.atleast_1d(total / max(count, 1)))


def class_means(cfg: ExperimentConfig, max_images: int = 10_000) -> tuple[float, ...]:
    """A class-conditional model's per-class means in data units, class-major and flattened
    (``DataConfig.class_means``): a toy's component means (exact), an image data set's mean
    per class and channel over its first ``max_images`` (a class absent there: the data's)."""
    if cfg.data.is_toy:
        return tuple(float(v) for v in np.ravel(data.get_toy(cfg.data.dataset).locs))
    images, *_ = data.load_training_images(cfg.data, labels=True)
    k = cfg.data.num_classes
    sums, counts = None, np.zeros(k)
    for x, y in images.take(max_images).batch(1000).as_numpy_iterator():
        x = x.astype(np.float64).reshape(len(x), -1, x.shape[-1]).mean(axis=1) / 255.0
        sums = np.zeros((k, x.shape[-1])) if sums is None else sums
        np.add.at(sums, y, x)
        np.add.at(counts, y, 1)
    means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None],
                     np.asarray(data_mean(cfg, max_images))[None, :])  # fmt: skip
    return tuple(float(v) for v in means.ravel())


def class_labels(num_classes: int, per_class: int) -> np.ndarray:
    """int32 labels 0 .. num_classes - 1, each repeated ``per_class`` times in a row: a grid
    of ``per_class`` columns then has one row per class."""
    return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)


def sample_summaries(cfg: ExperimentConfig, data_shape, num_samples: int):
    """TensorBoard samples from the EMA network: the run's sampler, seeded like
    ``api.generate(run, num_samples, seed=cfg.seed)``, so the grid is what the API draws. A
    class-conditional model's image grid has one row per class (``num_samples`` columns at
    most 8), conditioned without guidance."""
    name, space = cfg.sampler.sampler, sample_space(cfg, data_shape)
    classes = cfg.data.num_classes
    per_class = min(num_samples, 8) if classes and not cfg.data.is_toy else 0
    labels = class_labels(classes, per_class) if per_class else None
    models = {}  # one contract model per network: a new one per call would retrace

    def image_summaries(ema_models, step):
        net = ema_models["score"]
        if id(net) not in models:
            model = score_model(cfg, net)
            models[id(net)] = model.conditioned(labels) if per_class else model
        n = len(labels) if per_class else num_samples
        out = sampling.draw(
            name, models[id(net)], cfg.noise.sigmas(), n, cfg.seed, space,
            **sampling.options_of(cfg.sampler),
        )  # fmt: skip
        x = out.samples.numpy()
        if cfg.data.is_toy:
            png = plotting.scatter_panels({f"{name}, step {step}": x}, space.data_range[1], dpi=80)
            return {f"samples/{name}": plotting.png_to_array(png)}
        return {f"samples/{name}": plotting.image_grid(x, ncols=per_class or None)}

    return image_summaries


def model_bundle(cfg: ExperimentConfig, data_shape, dataset_fn=None,
                 num_summary_samples: int = 16) -> ModelBundle:  # fmt: skip
    """The score network of ``cfg`` on data of ``data_shape``, its objective, per-level
    summaries, TensorBoard samples and checkpoint settings; ``dataset_fn``: the input
    pipeline (None where the caller feeds the batches, as ``tf_score.keras`` does)."""
    return ModelBundle(
        model_fns={"score": network_fn(cfg, data_shape)},
        objectives=[score_objective(cfg)],
        dataset_fn=dataset_fn,
        num_levels=cfg.noise.num_levels,
        image_summaries=sample_summaries(cfg, data_shape, num_summary_samples),
        checkpoint_settings=checkpoint_settings(cfg),
    )


def toy_bundle(cfg: ExperimentConfig, num_summary_samples: int = 512) -> ModelBundle:
    """Train a noise-conditional MLP on fresh samples of a 2-D toy distribution."""
    toy = data.get_toy(cfg.data.dataset)
    data_seed = tf.constant([cfg.seed, 0xDA7A], tf.int32)
    # One global stream (pipeline 0's seed): global batch k is the same for any topology.
    stream_seed = tf.random.experimental.stateless_fold_in(data_seed, 0, alg="philox")

    def dataset_fn(global_batch, ctx, start_step):
        share = data.batch_share(global_batch, ctx)
        return data.toy_dataset(toy, global_batch, stream_seed, start_step, share,
                                labelled=conditional(cfg))  # fmt: skip

    return model_bundle(cfg, (2,), dataset_fn, num_summary_samples)


def image_bundle(
    cfg: ExperimentConfig,
    images: tf.data.Dataset,
    image_shape,
    random_flip: bool = False,
    cache: bool = True,
    num_summary_samples: int = 16,
) -> ModelBundle:
    """Train a noise-conditional image score network on dequantised images in [0, 1]."""
    dataset_fn = data.image_dataset_fn(
        images, tf.constant([cfg.seed, 0x1A6E], tf.int32), random_flip=random_flip, cache=cache
    )
    return model_bundle(cfg, image_shape, dataset_fn, num_summary_samples)


def check_images(
    cfg: ExperimentConfig, image_shape, num_images: int | None, spatial: bool = True
) -> None:
    """ConfigError, before any model is built, when the images cannot train ``cfg``'s network:
    height or width not divisible by its down-sampling (``spatial`` networks), or fewer images
    than one batch."""
    where = f"--dataset={cfg.data.dataset}" + (
        f" --data_path={cfg.data.data_path}" if cfg.data.data_path else ""
    )
    h, w = int(image_shape[0]), int(image_shape[1])
    factor = networks.get(cfg.network.network).spatial_factor(cfg) if spatial else 1
    if h % factor or w % factor or min(h, w) < factor:
        stages = f"--channel_mults={','.join(map(str, cfg.network.channel_mults))}"
        raise ConfigError(
            f"{where} has {h}x{w} images, but --network={cfg.network.network}"
            + (f" with {stages}" if cfg.network.network != "refinenet" else "")
            + f" needs height and width divisible by {factor}: use fewer stages"
            " (--channel_mults), or --image_size (folders) to resize"
        )
    if num_images is not None and num_images < cfg.train.batch_size:
        raise ConfigError(
            f"{where} has {num_images} image(s), fewer than one batch of "
            f"--batch_size={cfg.train.batch_size}: use --batch_size of at most {num_images}"
        )


def bundle(cfg: ExperimentConfig):
    """(bundle, data shape) of a score-model experiment; image data are loaded here."""
    if cfg.data.is_toy:
        return toy_bundle(cfg), (2,)
    images, shape, flip, cache = data.load_training_images(cfg.data, labels=conditional(cfg))
    check_images(cfg, shape, data.count_examples(images) if cache else None)
    return image_bundle(cfg, images, shape, random_flip=flip, cache=cache), tuple(shape)
