"""Batch-wise augmentation and normalisation on uint8 image tensors, on any device.

Whole batches are augmented at once with tensor ops (as airbench does) instead of per-sample
PIL work; all randomness comes from one explicit generator, so a seed fixes every batch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The paper scales pixels to [-1, 1] with (x - 0.5) / 0.5 on the [0, 1] scale.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x - mean) / std`` on the [0, 1] scale, and where the numbers come from:
    what a checkpoint records and every reader of its model feeds it with."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: str  # in words, for the files that carry it

    def record(self) -> dict[str, object]:
        return {"mean": list(self.mean), "std": list(self.std), "scale": self.scale}

    @classmethod
    def from_record(cls, record: dict[str, object]) -> Normalization:
        """A checkpoint's (or an ONNX file's) normalisation, checked by its reader."""
        mean, std = record["mean"], record["std"]
        assert isinstance(mean, list) and isinstance(std, list)
        return cls(tuple(map(float, mean)), tuple(map(float, std)), str(record.get("scale", "")))


PAPER_NORMALIZATION = Normalization(MEAN, STD, "[0, 1] -> [-1, 1]")


def measure_normalization(images: torch.Tensor, *, chunk_values: int = 2**24) -> Normalization:
    """The per-channel mean and std of uint8 images (N, 3, H, W) on the [0, 1] scale, from
    exact integer sums taken a chunk of about ``chunk_values`` pixel values at a time (a float32
    sum over 50,000 images drifts; a float copy of them all would take gigabytes)."""
    per_image = max(1, math.prod(images.shape[1:]))
    total = torch.zeros(3, dtype=torch.int64)
    squares = torch.zeros(3, dtype=torch.int64)
    for part in images.split(max(1, chunk_values // per_image)):
        wide = part.to(torch.int64)
        total += wide.sum(dim=(0, 2, 3))
        squares += wide.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total.double() / count / 255.0
    variance = squares.double() / count / 255.0**2 - mean.square()
    std = variance.clamp_min(0).sqrt()
    # A channel of one value (a blank dataset) would divide by zero: keep its pixels as they are.
    std = torch.where(std < 1e-3, torch.ones_like(std), std)
    return Normalization(
        tuple(round(v, 6) for v in mean.tolist()),
        tuple(round(v, 6) for v in std.tolist()),
        "[0, 1] -> (x - mean) / std, per channel, measured on the training split",
    )


@dataclass(frozen=True)
class Augment:
    flip: bool = True  # random horizontal flip with probability 1/2
    brightness: float = 0.1  # max additive delta on the [0, 1] scale, per image; 0 disables
    translate: int = 0  # max shift in pixels (reflect-padded random crop); 0 disables


PAPER_AUGMENT = Augment(flip=True, brightness=0.1, translate=0)


def normalize(
    images: torch.Tensor, normalization: Normalization = PAPER_NORMALIZATION
) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images to float32, normalised as ``normalization`` says
    (the paper's: [-1, 1])."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean, std = _normalization(x.device, normalization.mean, normalization.std)
    return (x - mean) / std


@functools.cache
def _normalization(
    device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: a fresh host-to-device copy per batch would sync a GPU each step.
    return (
        torch.tensor(mean, device=device).view(1, -1, 1, 1),
        torch.tensor(std, device=device).view(1, -1, 1, 1),
    )


def draw_augment(spec: Augment, n: int, generator: torch.Generator) -> torch.Tensor:
    """The random choices for ``n`` images, drawn on the CPU generator (so a seed gives the
    same augmentation on every device), as one (n, 4) float32 tensor that moves to a GPU in a
    single copy: flip (0 or 1), row shift, column shift (0 to 2 x translate), brightness delta.
    """
    draws = torch.zeros(n, 4)
    if spec.flip:
        draws[:, 0] = (torch.rand(n, generator=generator) < 0.5).float()
    if spec.translate > 0:
        draws[:, 1:3] = torch.randint(0, 2 * spec.translate + 1, (n, 2), generator=generator)
    if spec.brightness > 0:
        draws[:, 3] = (torch.rand(n, generator=generator) * 2 - 1) * spec.brightness
    return draws


def apply_augment(images: torch.Tensor, spec: Augment, draws: torch.Tensor) -> torch.Tensor:
    """Augment a uint8 batch (N, 3, H, W) with ``draws`` (``draw_augment``'s, on the images'
    device); returns float32 on the [0, 1] scale."""
    n = images.shape[0]
    x = images.float() / 255.0
    if spec.flip:
        x = torch.where(draws[:, 0].bool().view(n, 1, 1, 1), x.flip(3), x)
    if spec.translate > 0:
        x = _translate(x, spec.translate, draws[:, 1:3].long())
    if spec.brightness > 0:
        # Clamped, so the normalised input stays within [-1, 1] as the paper's range says.
        x = (x + draws[:, 3].view(n, 1, 1, 1)).clamp_(0.0, 1.0)
    return x


def augment(images: torch.Tensor, spec: Augment, generator: torch.Generator) -> torch.Tensor:
    """Draw and apply one batch's augmentation."""
    draws = draw_augment(spec, images.shape[0], generator).to(images.device)
    return apply_augment(images, spec, draws)


def _translate(x: torch.Tensor, pad: int, shifts: torch.Tensor) -> torch.Tensor:
    """A crop of each reflect-padded image at ``shifts`` (N, 2): moves in [-pad, pad]."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = shifts[:, 0].view(n, 1) + torch.arange(h, device=x.device).view(1, h)
    cols = shifts[:, 1].view(n, 1) + torch.arange(w, device=x.device).view(1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    # Advanced indexing gathers (N, H, W, C); move channels back to dim 1.
    return padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)].permute(
        0, 3, 1, 2
    )
