"""Pure Flax NNX models: no data, training or I/O code is imported here."""

from bcjax.models.classifier import Classifier, create_model
from bcjax.models.ernet import ERNet
from bcjax.models.heads import HEADS, PRESETS, LinearHead, MLPHead
from bcjax.models.mobilenet_v3 import MobileNetV3
from bcjax.models.registry import ARCHITECTURES, FAMILIES, LAYOUTS, Family, build_backbone, family_of
from bcjax.models.resnet import BN_EPSILON, ResidualBlock, ResNet
from bcjax.models.vgg import VGG

__all__ = [
    "ARCHITECTURES",
    "BN_EPSILON",
    "FAMILIES",
    "HEADS",
    "LAYOUTS",
    "PRESETS",
    "Classifier",
    "ERNet",
    "Family",
    "LinearHead",
    "MLPHead",
    "MobileNetV3",
    "ResNet",
    "ResidualBlock",
    "VGG",
    "build_backbone",
    "create_model",
    "family_of",
]
