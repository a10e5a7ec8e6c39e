"""Pure Flax NNX models: no data, training or I/O code is imported here."""

from bcjax.models.classifier import Classifier, create_model
from bcjax.models.heads import HEADS, LinearHead, MLPHead, recipe_a_head
from bcjax.models.resnet import ARCHITECTURES, BN_EPSILON, LAYOUTS, ResidualBlock, ResNet

__all__ = [
    "ARCHITECTURES",
    "BN_EPSILON",
    "HEADS",
    "LAYOUTS",
    "Classifier",
    "LinearHead",
    "MLPHead",
    "ResNet",
    "ResidualBlock",
    "create_model",
    "recipe_a_head",
]
