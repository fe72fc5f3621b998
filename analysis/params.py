"""Parameter counts and multiply-accumulates of the registered architectures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from toolkit.models import Architecture, architectures, by_stage


@dataclass(frozen=True)
class ModelSummary:
    name: str
    group: str  # which source the network comes from (toolkit.models.GROUPS)
    params: int
    trainable_params: int
    macs: int  # multiply-accumulates of one forward pass of one 32x32 image
    depth: int  # weight layers on the main path (conv and linear): 18 for ResNet-18
    weight_layers: int  # every conv and linear layer, projection shortcuts included
    description: str
    # The source's figures, where it publishes them (None otherwise).
    published_source: str | None
    published_name: str | None
    published_params: int | None
    published_test_acc: float | None
    per_stage: dict[str, int]  # parameters per part: stem, stage 1..4 (or block 1..4), fc


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """MACs of one forward pass, from PyTorch's own FLOP counter (convolutions and matrix
    products; one MAC is two FLOPs). Normalisation, activations and pooling are not counted,
    as is conventional."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(input_shape))
    model.train(was_training)
    return counter.get_total_flops() // 2 // input_shape[0]


def summarize(
    arch: Architecture, *, num_classes: int | None = None, input_size: Sequence[int] = (3, 32, 32)
) -> ModelSummary:
    """The network's size and cost as the registry builds it (CIFAR-10: 10 classes, 32x32),
    or for a dataset of ``num_classes`` classes and images of ``input_size`` (C, H, W)."""
    model = arch.build(**arch.kwargs_for(num_classes=num_classes or arch.num_classes))
    layers = model.weight_layers()
    figures = arch.published
    return ModelSummary(
        name=arch.name,
        group=arch.group,
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=count_macs(model, (1, *input_size)),
        depth=layers[-1].depth,
        weight_layers=len(layers),
        description=arch.description,
        published_source=figures.source if figures else None,
        published_name=figures.name if figures else None,
        published_params=figures.params if figures else None,
        published_test_acc=figures.test_acc if figures else None,
        per_stage=stage_params(model),
    )


def stage_params(model: nn.Module) -> dict[str, int]:
    stages = by_stage(model.named_parameters(), lambda named: named[0])
    return {stage: sum(p.numel() for _, p in members) for stage, members in stages.items()}


def summarize_all(
    *, num_classes: int | None = None, input_size: Sequence[int] = (3, 32, 32)
) -> list[ModelSummary]:
    return [
        summarize(arch, num_classes=num_classes, input_size=input_size) for arch in architectures()
    ]
