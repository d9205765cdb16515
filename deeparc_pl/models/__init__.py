"""The model zoo: CIFAR-style ResNet-n, Wide-ResNet, VGG with BN and MLPs, built by name.

>>> from deeparc_pl.models import build, available
>>> model = build("resnet20", num_classes=10, in_channels=1, image_size=28)
>>> model.layer_names[:2]
['layer1.0', 'layer1.1']

Every zoo model lists its DeepArc layers in ``layer_names`` (forward order) and carries
``zoo_name``, ``num_classes``, ``in_channels`` and ``image_size`` so a checkpoint can rebuild it.
Importing this package registers the architectures below.
"""
from __future__ import annotations

from deeparc_pl.models.registry import MODELS, ModelRegistry, available, build, register_model
from deeparc_pl.models.resnet import BasicBlock, ResNet
from deeparc_pl.models.wide_resnet import WideBasicBlock, WideResNet
from deeparc_pl.models.vgg import VGG
from deeparc_pl.models.mlp import MLP

__all__ = [
    "build",
    "available",
    "register_model",
    "ModelRegistry",
    "MODELS",
    "ResNet",
    "BasicBlock",
    "WideResNet",
    "WideBasicBlock",
    "VGG",
    "MLP",
]
