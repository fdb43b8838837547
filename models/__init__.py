"""ResNet-50/101/152 with stochastic depth. Imports nothing else of this project."""

from models.resnet import (
    INITS,
    SD_MODES,
    STAGE_BLOCKS,
    VARIANTS,
    Bottleneck,
    ResNet,
    build_resnet,
    drop_path,
    resnet50,
    resnet101,
    resnet152,
    survival_probs,
)

__all__ = [
    "INITS",
    "SD_MODES",
    "STAGE_BLOCKS",
    "VARIANTS",
    "Bottleneck",
    "ResNet",
    "build_resnet",
    "drop_path",
    "resnet50",
    "resnet101",
    "resnet152",
    "survival_probs",
]
