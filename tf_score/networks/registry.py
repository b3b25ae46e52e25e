"""The score networks by name: a ``NetworkSpec`` is the whole network. It says how to build
the network from a config and what it takes: 2-D points or images, and whether it is
conditioned on a continuous sigma (a denoiser, sampled on any grid) or on the discrete levels
it was trained on (sampled on those, through ``contract.LevelScoreModel``).

    spec = registry.get("edm_unet")
    model = spec.build(cfg, (28, 28, 1))

``register`` adds one (a plugin's); the score family, the flags and the config's check then
know it by name, as the solvers are known (``sampling.register``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from tf_score.config import ConfigError, ExperimentConfig
from tf_score.networks.base import stage_factor
from tf_score.networks.denoisers import EDMMLP, EDMUNet
from tf_score.networks.mlp import NoiseConditionalMLP
from tf_score.networks.refinenet import CondRefineNetDilated
from tf_score.networks.resnet import ConditionalResNet
from tf_score.registries import Registry

#: what a network takes: 2-D points (the toys) or images [H, W, C]
DATA_KINDS = ("points", "images")


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """A score network (see the module docstring)."""

    name: str
    #: (cfg, data shape) -> the built Keras model, named "score"
    build: Callable
    #: "points" or "images"
    data: str
    #: conditioned on a continuous sigma (trained with loss=edm), else on its trained levels
    continuous: bool
    #: cfg -> what image height and width must be divisible by
    spatial_factor: Callable[[ExperimentConfig], int] = lambda cfg: 1
    #: takes class labels (built with ``num_classes``): a class-conditional model
    conditional: bool = False


def data_scale(cfg: ExperimentConfig) -> tuple[float, float]:
    """(a, b) of the network's scale y = a x + b: images [0, 1] -> [-1, 1], toys as they are."""
    return (2.0, -1.0) if cfg.is_image else (1.0, 0.0)


def _denoiser_kwargs(cfg: ExperimentConfig) -> dict:
    a, b = data_scale(cfg)
    return dict(sigma_data=cfg.noise.sigma_data, data_scale=a, data_shift=b,
                parameterization=cfg.noise.parameterization,
                num_classes=cfg.data.num_classes, name="score")  # fmt: skip


def _built(model):
    model.build()
    return model


def _mlp(cfg, shape):
    net = cfg.network
    return _built(NoiseConditionalMLP(
        cfg.noise.sigmas(), data_dim=shape[0], hidden_units=net.hidden_units,
        activation=net.activation, log_sigma_input=net.log_sigma_input,
        scale_by_sigma=net.scale_by_sigma, name="score",
    ))  # fmt: skip


def _resnet(cfg, shape):
    net = cfg.network
    return _built(ConditionalResNet(
        shape, cfg.noise.sigmas(), ngf=net.ngf, channel_mults=net.channel_mults,
        num_blocks=net.num_res_blocks, scale_by_sigma=net.scale_by_sigma, name="score",
    ))  # fmt: skip


def _refinenet(cfg, shape):
    net = cfg.network
    return _built(CondRefineNetDilated(
        shape, cfg.noise.sigmas(), ngf=net.ngf, scale_by_sigma=net.scale_by_sigma, name="score"
    ))  # fmt: skip


def _edm_mlp(cfg, shape):
    net = cfg.network
    return _built(EDMMLP(shape, hidden_units=net.hidden_units, activation=net.activation,
                         embed_dim=net.embed_dim, **_denoiser_kwargs(cfg)))  # fmt: skip


def _edm_unet(cfg, shape):
    net = cfg.network
    return _built(EDMUNet(shape, ngf=net.ngf, channel_mults=net.channel_mults,
                          num_blocks=net.num_res_blocks, **_denoiser_kwargs(cfg)))  # fmt: skip


_NETWORKS = Registry("score network", ConfigError)
#: the registered score networks by name
NETWORKS: dict[str, NetworkSpec] = _NETWORKS.entries
get = _NETWORKS.get
unregister = _NETWORKS.unregister


def register(spec: NetworkSpec, replace: bool = False, builtin: bool = False) -> NetworkSpec:
    """Add ``spec`` (``replace``: over one of the same name; ``builtin``: the library's)."""
    if spec.data not in DATA_KINDS:
        raise ConfigError(f"a network takes one of {', '.join(DATA_KINDS)}, not {spec.data!r}")
    return _NETWORKS.register(spec, replace, builtin)


def build(cfg: ExperimentConfig, shape) -> object:
    """``cfg``'s network built for data of ``shape``; ConfigError if a checkpoint would not
    save all its weights (Keras layers kept in a plain Python list are invisible to
    ``tf.train.Checkpoint``: they would train, then load as fresh random weights)."""
    import tensorflow as tf  # the checkpoint's view of the model; the specs need no TF

    model = get(cfg.network.network).build(cfg, tuple(shape))
    ckpt = tf.train.Checkpoint(model=model)  # held: the view keeps only a weak reference
    seen = {id(v) for v in tf.train.TrackableView(ckpt).descendants()}
    missed = [v.path for v in model.weights if id(v) not in seen]
    if missed:
        raise ConfigError(
            f"network={cfg.network.network} has weights a checkpoint would not save "
            f"({', '.join(missed[:4])}{', ...' if len(missed) > 4 else ''}): keep its layers "
            "as attributes of the model, not in a plain Python list"
        )
    return model


for _spec in (
    NetworkSpec("mlp", _mlp, "points", continuous=False),
    NetworkSpec("resnet", _resnet, "images", False,
                lambda c: stage_factor(c.network.channel_mults)),
    NetworkSpec("refinenet", _refinenet, "images", False,
                lambda c: CondRefineNetDilated.SPATIAL_FACTOR),
    NetworkSpec("edm_mlp", _edm_mlp, "points", continuous=True, conditional=True),
    NetworkSpec("edm_unet", _edm_unet, "images", True,
                lambda c: stage_factor(c.network.channel_mults), conditional=True),
):  # fmt: skip
    register(_spec, replace=True, builtin=True)
