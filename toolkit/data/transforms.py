"""Batch-wise augmentation and normalisation on uint8 image tensors, on any device.

Whole batches are augmented at once with tensor ops (as airbench does) instead of per-sample
PIL work; all randomness comes from one explicit generator, so a seed fixes every batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The paper scales pixels to [-1, 1] with (x - 0.5) / 0.5 on the [0, 1] scale.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Augment:
    flip: bool = True  # random horizontal flip with probability 1/2
    brightness: float = 0.1  # max additive delta on the [0, 1] scale, per image; 0 disables
    translate: int = 0  # max shift in pixels (reflect-padded random crop); 0 disables


PAPER_AUGMENT = Augment(flip=True, brightness=0.1, translate=0)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images to float32 in [-1, 1] with the paper's mean/std."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(MEAN, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def augment(images: torch.Tensor, spec: Augment, generator: torch.Generator) -> torch.Tensor:
    """Augment a uint8 batch (N, 3, H, W); returns float32 on the [0, 1] scale.

    Random draws are made on the CPU generator and moved to the images' device, so a seed
    gives the same augmentation on every device.
    """
    n = images.shape[0]
    x = images.float() / 255.0
    device = x.device
    if spec.flip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(device)
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    if spec.translate > 0:
        x = _translate(x, spec.translate, generator)
    if spec.brightness > 0:
        delta = (torch.rand(n, generator=generator) * 2 - 1) * spec.brightness
        # Clamped, so the normalised input stays within [-1, 1] as the paper's range says.
        x = (x + delta.to(device).view(n, 1, 1, 1)).clamp_(0.0, 1.0)
    return x


def _translate(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """A random crop of each reflect-padded image: shifts in [-pad, pad] on both axes."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    shifts = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    rows = shifts[0].view(n, 1) + torch.arange(h, device=x.device).view(1, h)
    cols = shifts[1].view(n, 1) + torch.arange(w, device=x.device).view(1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    # Advanced indexing gathers (N, H, W, C); move channels back to dim 1.
    return padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)].permute(
        0, 3, 1, 2
    )
