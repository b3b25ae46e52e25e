"""Keras score networks: ``model(x, levels) -> score``, levels int32 level indices."""

from tf_score.networks.mlp import ConditionalDense, NoiseConditionalMLP
from tf_score.networks.refinenet import CondRefineNetDilated
from tf_score.networks.resnet import ConditionalResNet

__all__ = ["CondRefineNetDilated", "ConditionalDense", "ConditionalResNet", "NoiseConditionalMLP"]
