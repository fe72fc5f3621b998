"""Parameter counts and multiply-accumulates of the registered architectures."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from toolkit.models import Architecture, architectures, stage_of


@dataclass(frozen=True)
class ModelSummary:
    name: str
    paper_name: str
    params: int
    trainable_params: int
    paper_params: int
    macs: int  # multiply-accumulates of one forward pass of one 32x32 image
    weight_layers: int
    description: str
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


def summarize(arch: Architecture) -> ModelSummary:
    model = arch.build()
    return ModelSummary(
        name=arch.name,
        paper_name=arch.paper_name,
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        paper_params=arch.paper_params,
        macs=count_macs(model),
        weight_layers=len(model.weight_layers()),
        description=arch.description,
        per_stage=stage_params(model),
    )


def stage_params(model: nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        counts[stage_of(name)] = counts.get(stage_of(name), 0) + parameter.numel()
    return counts


def summarize_all() -> list[ModelSummary]:
    return [summarize(arch) for arch in architectures()]
