"""The paper's four architectures, built by name from one registry."""

from toolkit.models.base import Classifier, WeightLayer, stage_of
from toolkit.models.inference import autocast, batched_logits
from toolkit.models.registry import (
    Architecture,
    architecture_names,
    architectures,
    build_model,
    create_model,
    get_architecture,
)

__all__ = [
    "Architecture",
    "Classifier",
    "WeightLayer",
    "architecture_names",
    "architectures",
    "autocast",
    "batched_logits",
    "build_model",
    "create_model",
    "get_architecture",
    "stage_of",
]
