"""Every architecture rtk builds (the paper's four and the seeds' networks), by name from one
registry."""

from toolkit.models.base import Classifier, WeightLayer, by_stage, stage_of
from toolkit.models.inference import autocast, batched_logits
from toolkit.models.plugins import register_model
from toolkit.models.registry import (
    CONTROL,
    GROUPS,
    PAPER,
    USER,
    Architecture,
    Published,
    architecture_names,
    architectures,
    build_model,
    create_model,
    get_architecture,
    initial_model,
    input_problem,
)
from toolkit.models.resnet import ResidualBlock, lesioned, residual_blocks

__all__ = [
    "CONTROL",
    "GROUPS",
    "PAPER",
    "USER",
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
    "by_stage",
    "create_model",
    "get_architecture",
    "initial_model",
    "input_problem",
    "lesioned",
    "register_model",
    "residual_blocks",
    "stage_of",
]
