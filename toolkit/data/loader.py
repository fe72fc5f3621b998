"""The training and evaluation iterator: the whole split lives on the device as one tensor.

Each epoch is one seeded permutation, cut into batches that are augmented and normalised
whole; nothing is decoded and no Python runs per image.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from toolkit.data.dataset import Split
from toolkit.data.transforms import (
    PAPER_NORMALIZATION,
    Augment,
    Normalization,
    apply_augment,
    draw_augment,
    normalize,
)


def epoch_generator(*key: int) -> torch.Generator:
    """A generator that depends only on ``key`` (seed, epoch[, rank]), so a resumed run
    replays the same epoch and every rank of a distributed run draws the same permutation."""
    state = np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class TensorLoader:
    """Yields ``(images, labels)``: float32 (N, 3, H, W) normalised as ``normalization`` says
    (the paper's [-1, 1] by default) and int64, on ``device``.

    Iterating runs one epoch and then advances the epoch counter; ``set_epoch`` rewinds or
    skips (for resuming), as ``DistributedSampler.set_epoch`` does. With ``world_size > 1``
    every rank draws the same permutation and takes every ``world_size``-th image from
    ``rank`` on, truncated so that all ranks run the same number of batches.
    """

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        augment: Augment | None = None,
        normalization: Normalization = PAPER_NORMALIZATION,
        seed: int = 0,
        channels_last: bool = False,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.normalization = normalization
        self.seed = seed
        self.channels_last = channels_last
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_images(self) -> int:
        """Images this rank sees per epoch."""
        return len(self.labels) // self.world_size

    def __len__(self) -> int:
        n = self.num_images
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = None
        if self.shuffle:
            order = torch.randperm(n, generator=epoch_generator(self.seed, self.epoch))
        if self.world_size > 1:
            order = (torch.arange(n) if order is None else order)[self.rank :: self.world_size]
            order = order[: self.num_images]
        device = self.images.device
        if order is not None:
            order = _to_device(order, device)
        draws = None
        if self.augment:
            # The whole epoch's random choices at once: one copy to a GPU, no sync per batch.
            generator = epoch_generator(self.seed, self.epoch, self.rank)
            draws = _to_device(draw_augment(self.augment, self.num_images, generator), device)
        for index in range(len(self)):
            start = index * self.batch_size
            stop = start + self.batch_size
            if order is None:
                images, labels = self.images[start:stop], self.labels[start:stop]
            else:
                batch = order[start:stop]
                images, labels = self.images[batch], self.labels[batch]
            if self.augment and draws is not None:
                x = apply_augment(images, self.augment, draws[start:stop])
            else:
                x = images
            x = normalize(x, self.normalization)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, labels
        self.epoch += 1


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One host-to-device copy that does not block the host (pinned source) on a GPU."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
