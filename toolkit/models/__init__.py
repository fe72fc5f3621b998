"""Every architecture rtk builds (the paper's four and the seeds' networks), by name from one
registry."""

from toolkit.models.base import Classifier, WeightLayer, stage_of, start_weights
from toolkit.models.inference import autocast, batched_logits
from toolkit.models.registry import (
    CONTROL,
    GROUPS,
    PAPER,
    Architecture,
    Published,
    architecture_names,
    architectures,
    build_model,
    create_model,
    get_architecture,
)
from toolkit.models.resnet import ResidualBlock, lesioned, residual_blocks

__all__ = [
    "CONTROL",
    "GROUPS",
    "PAPER",
    "Architecture",
    "Classifier",
    "Published",
    "ResidualBlock",
    "WeightLayer",
    "architecture_names",
    "architectures",
    "autocast",
    "batched_logits",
    "build_model",
    "create_model",
    "get_architecture",
    "lesioned",
    "residual_blocks",
    "stage_of",
    "start_weights",
]
