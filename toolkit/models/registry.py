"""The one registry of architectures: the CLI, the tests and the reports all read it.

Each entry is data (a model class and its arguments), so a checkpoint that stores the class
name and arguments can rebuild its model without this registry.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from toolkit.errors import UnknownArchitectureError
from toolkit.models.base import Classifier
from toolkit.models.baseline import BaselineCNN
from toolkit.models.resnet import ResNet

MODEL_CLASSES: dict[str, type[Classifier]] = {"ResNet": ResNet, "BaselineCNN": BaselineCNN}


@dataclass(frozen=True)
class Architecture:
    name: str
    paper_name: str  # as Table I of the paper writes it
    paper_params: int  # the exact count the paper's structure gives (paper-spec.md)
    paper_test_acc: float  # Table I
    paper_train_min: float  # Table I, training time in minutes (the paper's hardware)
    description: str
    model_class: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """The classifier's outputs: its own argument, else the model class's default."""
        if "num_classes" in self.kwargs:
            return int(self.kwargs["num_classes"])
        signature = inspect.signature(MODEL_CLASSES[self.model_class])
        return int(signature.parameters["num_classes"].default)

    def build(self, **overrides: Any) -> Classifier:
        return build_model(self.model_class, {**self.kwargs, **overrides})


def build_model(model_class: str, kwargs: dict[str, Any]) -> Classifier:
    """Rebuild a model from the class name and arguments stored in a checkpoint."""
    if model_class not in MODEL_CLASSES:
        raise UnknownArchitectureError(
            f"unknown model class {model_class!r}; known: {', '.join(MODEL_CLASSES)}"
        )
    return MODEL_CLASSES[model_class](**kwargs)


_REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    if arch.name in _REGISTRY:
        raise ValueError(f"architecture {arch.name!r} is registered twice")
    _REGISTRY[arch.name] = arch
    return arch


def architectures() -> list[Architecture]:
    """Every registered architecture, in the paper's order."""
    return list(_REGISTRY.values())


def architecture_names() -> list[str]:
    return list(_REGISTRY)


def get_architecture(name: str) -> Architecture:
    """Look an architecture up by name; ``resnet18_noskip`` and ``resnet18-noskip`` are one."""
    key = name.strip().lower().replace("_", "-")
    if key not in _REGISTRY:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; choose one of: {', '.join(_REGISTRY)}"
        )
    return _REGISTRY[key]


def create_model(name: str, **overrides: Any) -> Classifier:
    return get_architecture(name).build(**overrides)


_STAGES = {"blocks": (2, 2, 2, 2)}

register(
    Architecture(
        name="baseline-cnn",
        paper_test_acc=0.841,
        paper_train_min=2,
        paper_name="Baseline CNN",
        paper_params=391_946,
        description="plain CNN: 4 conv-BN-ReLU-maxpool blocks, 32-256 wide",
        model_class="BaselineCNN",
        kwargs={"widths": (32, 64, 128, 256)},
    )
)
register(
    Architecture(
        name="mini-resnet",
        paper_test_acc=0.87,
        paper_train_min=7,
        paper_name="Mini-ResNet",
        paper_params=2_798_698,
        description="ResNet: 4 stages x 2 blocks, 32-256 wide, all strided",
        model_class="ResNet",
        kwargs={"stem_width": 32, "widths": (32, 64, 128, 256), "first_stride": 2, **_STAGES},
    )
)
register(
    Architecture(
        name="resnet18",
        paper_test_acc=0.899,
        paper_train_min=24,
        paper_name="ResNet-18 (With Skip)",
        paper_params=11_173_962,
        description="CIFAR ResNet-18: 4 stages x 2 blocks, 64-512 wide",
        model_class="ResNet",
        kwargs={"stem_width": 64, "widths": (64, 128, 256, 512), "first_stride": 1, **_STAGES},
    )
)
register(
    Architecture(
        name="resnet18-noskip",
        paper_test_acc=0.86,
        paper_train_min=210,
        paper_name="ResNet-18 (No Skip)",
        paper_params=11_000_138,
        description="ResNet-18 with every shortcut removed",
        model_class="ResNet",
        kwargs={
            "stem_width": 64,
            "widths": (64, 128, 256, 512),
            "first_stride": 1,
            "skip": False,
            **_STAGES,
        },
    )
)
