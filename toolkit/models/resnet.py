"""One ResNet class for every residual (and de-residualised) network in the paper.

Mini-ResNet, ResNet-18 and ResNet-18 without skips differ only in their arguments, as in
torchvision's ``models/resnet.py``: stem width, stage widths, blocks per stage, the stride of
the first stage, and whether blocks add a shortcut at all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from toolkit.models.base import Classifier


def _norm(channels: int, enabled: bool) -> nn.Module:
    # Without BatchNorm is for the gradient-flow studies (He et al.'s plain-vs-residual).
    return nn.BatchNorm2d(channels) if enabled else nn.Identity()


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> (+ shortcut) -> ReLU."""

    def __init__(
        self, in_ch: int, out_ch: int, *, stride: int, skip: bool, norm: bool = True
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(out_ch, norm)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = _norm(out_ch, norm)
        self.relu = nn.ReLU(inplace=True)
        self.skip = skip
        # A 1x1 projection only where the shape changes; identity otherwise (He et al., option B).
        self.shortcut: nn.Module | None = None
        if skip and (stride != 1 or in_ch != out_ch):
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                    bn=_norm(out_ch, norm),
                )
            )

    def zero_init_last(self) -> bool:
        """Start as the shortcut alone: zero the branch's last BN scale (only where there is a
        shortcut; in a plain block it would cut the signal). True if it did."""
        if not self.skip or not isinstance(self.bn2, nn.BatchNorm2d):
            return False
        nn.init.zeros_(self.bn2.weight)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.skip:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return self.relu(out)


class ResNet(Classifier):
    """A CIFAR-sized ResNet: 3x3 stem, four stages of basic blocks, GAP, dropout, linear head."""

    def __init__(
        self,
        *,
        stem_width: int,
        widths: Sequence[int],
        blocks: Sequence[int],
        first_stride: int,
        skip: bool = True,
        norm: bool = True,
        num_classes: int = 10,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError(f"widths {list(widths)} and blocks {list(blocks)} differ in length")
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(3, stem_width, 3, padding=1, bias=False),
                bn=_norm(stem_width, norm),
                relu=nn.ReLU(inplace=True),
            )
        )
        stages: list[nn.Module] = []
        in_ch = stem_width
        for index, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            stride = first_stride if index == 0 else 2
            stage = [BasicBlock(in_ch, width, stride=stride, skip=skip, norm=norm)]
            stage += [
                BasicBlock(width, width, stride=1, skip=skip, norm=norm) for _ in range(count - 1)
            ]
            stages.append(nn.Sequential(*stage))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self._finish(in_ch, num_classes=num_classes, dropout=dropout)

    def zero_init_residual(self) -> int:
        return sum(
            block.zero_init_last() for block in self.modules() if isinstance(block, BasicBlock)
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))
