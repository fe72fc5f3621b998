"""Per-layer gradient flow: the L2 norm of each weight layer's gradient over real batches.

Raw norms grow with a layer's size, so each layer also gets the size-independent RMS
(norm / sqrt(number of weights)); the first/last ratio compares the input end of the network
with its output end. The numbers are what the model does, whatever the paper says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from analysis.sources import At, load_model
from toolkit.data import Dataset, TensorLoader
from toolkit.models import Classifier, by_stage


@dataclass(frozen=True)
class LayerGradient:
    name: str
    kind: str
    depth: int
    weights: int
    norm_mean: float  # L2 norm of the weight gradient, mean over batches
    norm_std: float
    rms_mean: float  # norm / sqrt(weights): comparable across layer sizes


@dataclass(frozen=True)
class StageGradient:
    stage: str
    layers: int
    norm_mean: float
    rms_mean: float


@dataclass(frozen=True)
class GradientProfile:
    model: str
    at: str  # "init", "best", ...
    batches: int
    batch_size: int
    layers: list[LayerGradient]
    stages: list[StageGradient]
    first_last_norm_ratio: float  # first weight layer / last (the classifier)
    first_last_rms_ratio: float


def gradient_profile(
    model: Classifier, loader: TensorLoader, *, batches: int, label: str, at: str
) -> GradientProfile:
    """Gradients of the training loss, in training mode (batch statistics, dropout), as the
    optimiser would see them; the weights are not changed."""
    layers = model.weight_layers()
    model.train()
    norms = torch.zeros(batches, len(layers), dtype=torch.float64)
    seen = 0
    for index, (images, labels) in enumerate(loader):
        if index == batches:
            break
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        norms[index] = torch.stack(
            [torch.linalg.vector_norm(layer.module.weight.grad).double() for layer in layers]
        )
        seen += 1
    model.zero_grad(set_to_none=True)
    norms = norms[:seen]
    results = []
    for column, layer in enumerate(layers):
        weights = layer.module.weight.numel()
        values = norms[:, column]
        results.append(
            LayerGradient(
                name=layer.name,
                kind=layer.kind,
                depth=layer.depth,
                weights=weights,
                norm_mean=float(values.mean()),
                norm_std=float(values.std()) if seen > 1 else 0.0,
                rms_mean=float(values.mean()) / math.sqrt(weights),
            )
        )
    stage_rows = [
        StageGradient(
            stage=stage,
            layers=len(members),
            norm_mean=sum(m.norm_mean for m in members) / len(members),
            rms_mean=sum(m.rms_mean for m in members) / len(members),
        )
        for stage, members in by_stage(results, lambda layer: layer.name).items()
    ]
    first, last = results[0], results[-1]
    return GradientProfile(
        model=label,
        at=at,
        batches=seen,
        batch_size=loader.batch_size,
        layers=results,
        stages=stage_rows,
        first_last_norm_ratio=first.norm_mean / last.norm_mean,
        first_last_rms_ratio=first.rms_mean / last.rms_mean,
    )


def profile_source(
    spec: str, dataset: Dataset, *, batches: int, at: At, batch_size: int = 64, seed: int = 0
) -> GradientProfile:
    """Gradients of an architecture (fresh weights) or a run or checkpoint (its trained
    weights, or with ``at='init'`` the run's own initial weights, rebuilt from its seed), on
    the same seeded training batches for every model, without augmentation."""
    source = load_model(spec, dataset, at=at, analysis="gradient", seed=seed)
    # Training images (never test images), in the same seeded order for every model.
    loader = TensorLoader(
        dataset.train,
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        normalization=source.normalization,
    )
    return gradient_profile(source.model, loader, batches=batches, label=source.label, at=at)
