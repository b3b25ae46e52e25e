"""Keras score networks: ``model(x, levels) -> score`` (levels: int32 indices into the
schedule), and the continuous-sigma denoisers ``model(x, sigma) -> D(x; sigma)``."""

from tf_score.networks.denoisers import EDMMLP, EDMUNet
from tf_score.networks.mlp import ConditionalDense, NoiseConditionalMLP
from tf_score.networks.refinenet import CondRefineNetDilated
from tf_score.networks.resnet import ConditionalResNet

__all__ = [
    "EDMMLP",
    "CondRefineNetDilated",
    "ConditionalDense",
    "ConditionalResNet",
    "EDMUNet",
    "NoiseConditionalMLP",
]
