"""Keras score networks: ``model(x, labels) -> score``, labels int32 level indices."""

from tf_score.networks.mlp import ConditionalDense, NoiseConditionalMLP

__all__ = ["ConditionalDense", "NoiseConditionalMLP"]
