"""The paper's baseline: a plain four-block CNN with no shortcuts."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from toolkit.models.base import Classifier


class BaselineCNN(Classifier):
    """Blocks of Conv3x3 (with bias) -> BN -> ReLU -> MaxPool2, then GAP, dropout, linear."""

    def __init__(
        self,
        *,
        widths: Sequence[int] = (32, 64, 128, 256),
        num_classes: int = 10,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        in_ch = 3
        for width in widths:
            block = OrderedDict(
                conv=nn.Conv2d(in_ch, width, 3, padding=1, bias=True),
                bn=nn.BatchNorm2d(width),
                relu=nn.ReLU(inplace=True),
                pool=nn.MaxPool2d(2),
            )
            blocks.append(nn.Sequential(block))
            in_ch = width
        self.blocks = nn.Sequential(*blocks)
        self._finish(in_ch, num_classes=num_classes, dropout=dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)
