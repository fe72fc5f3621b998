"""What every rtk model shares: the classifier head, weight initialisation, and its weight
layers in depth order (which the gradient analysis and the per-layer tables rely on)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar

import torch
from torch import nn

if TYPE_CHECKING:
    from toolkit.config import Init

LayerKind = Literal["conv", "shortcut", "linear"]
T = TypeVar("T")


@dataclass(frozen=True)
class WeightLayer:
    """One layer that owns a weight matrix, named by its path in the module tree.

    The name is the module's path (``stages.1.0.conv2``), so it matches the ``state_dict``
    keys and stays stable across runs; ``depth`` counts the layers on the main path from the
    input (1-based); a projection shortcut shares the depth of the conv where it rejoins.
    """

    name: str
    kind: LayerKind
    depth: int
    params: int
    module: nn.Module = field(repr=False, compare=False)


def stage_of(name: str) -> str:
    """The part of the network a layer or parameter belongs to, from its module path:
    ``stages.2.1.conv1`` is in ``stage 3``, ``blocks.0.conv`` in ``block 1``; the stem and
    the classifier (``fc``) are their own parts."""
    parts = name.split(".")
    if parts[0] in ("stages", "blocks") and len(parts) > 1:
        return f"{parts[0][:-1]} {int(parts[1]) + 1}"
    return parts[0]


def by_stage(items: Iterable[T], name: Callable[[T], str]) -> dict[str, list[T]]:
    """``items`` grouped by the part of the network that ``name(item)`` lies in (``stage_of``),
    parts in the order they first appear, items in their order."""
    stages: dict[str, list[T]] = {}
    for item in items:
        stages.setdefault(stage_of(name(item)), []).append(item)
    return stages


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions (fan-out, ReLU gain), BN to (1, 0), zero conv biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def start_weights(model: Classifier, *, init: Init, zero_init_residual: bool) -> None:
    """Give a freshly built model (Kaiming-initialised by its constructor) the weights a run
    starts from: the training loop and the analyses that rebuild a run's initial weights both
    come here, so they agree."""
    if init == "torch":
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear | nn.BatchNorm2d):
                module.reset_parameters()
    if zero_init_residual:
        model.zero_init_residual()


def weight_layers_of(model: nn.Module) -> list[WeightLayer]:
    """Every conv and linear layer in registration order, which the models keep in depth order."""
    layers: list[WeightLayer] = []
    depth = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        is_shortcut = ".shortcut." in f".{name}."
        kind: LayerKind = (
            "shortcut" if is_shortcut else "linear" if isinstance(module, nn.Linear) else "conv"
        )
        if not is_shortcut:
            depth += 1
        params = sum(p.numel() for p in module.parameters())
        layers.append(WeightLayer(name=name, kind=kind, depth=depth, params=params, module=module))
    return layers


class Classifier(nn.Module):
    """Base of every rtk model: ``forward = forward_head(forward_features(x))``, as in timm.

    Subclasses build their trunk, then call ``_finish(num_features, ...)``, which adds the
    paper's head (global average pooling, dropout, linear) and initialises every weight.
    """

    num_features: int

    def _finish(self, num_features: int, *, num_classes: int, dropout: float) -> None:
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_features, num_classes)
        self.num_features = num_features
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The convolutional trunk: (N, 3, H, W) -> (N, C, H', W') before pooling."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pool, dropout and classify a feature map into logits."""
        return self.fc(self.dropout(torch.flatten(self.pool(features), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def zero_init_residual(self) -> int:
        """Zero the last BatchNorm scale of every residual branch, so that each residual block
        starts as its shortcut (Goyal et al. 2017; torchvision's ``zero_init_residual``).
        Returns how many branches it zeroed: none in a network without shortcuts."""
        return 0

    def weight_layers(self) -> list[WeightLayer]:
        """Every conv and linear layer, in depth order, with stable names."""
        return weight_layers_of(self)
