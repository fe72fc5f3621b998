"""One ResNet class for every residual (and de-residualised) network rtk builds.

The paper's Mini-ResNet, ResNet-18 and ResNet-18 without skips, seed 003's slim ResNet-18,
He et al.'s CIFAR ResNet-20...110 and their plain twins, and seed 004's ResNet-34, ResNet-50
and ResNeXt differ only in their arguments, as in torchvision's ``models/resnet.py``: block
type (basic, or bottleneck with cardinality x width per group), stem width and padding, stage
widths, blocks per stage, the stride of the first stage, the shortcut option, and whether
blocks add a shortcut at all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar, Literal

import torch
from torch import nn

from toolkit.models.base import Classifier

BlockType = Literal["basic", "bottleneck"]
ShortcutOption = Literal["A", "B"]


def _norm(channels: int, enabled: bool) -> nn.Module:
    # Without BatchNorm is for the gradient-flow studies (He et al.'s plain-vs-residual).
    return nn.BatchNorm2d(channels) if enabled else nn.Identity()


class PadShortcut(nn.Module):
    """He et al.'s option A, parameter-free: subsample by the stride, zero-pad the new channels.

    Used on CIFAR (He et al. 2015, Sec. 4.2) so that a ResNet has exactly its plain twin's
    parameters; the extra channels are appended after the input's own.
    """

    def __init__(self, in_ch: int, out_ch: int, *, stride: int) -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"option A cannot shrink channels ({in_ch} -> {out_ch})")
        self.stride = stride
        self.extra = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra))


def _shortcut(
    in_ch: int, out_ch: int, *, stride: int, option: ShortcutOption, norm: bool
) -> nn.Module:
    """The shortcut of a block that changes the shape: a 1x1 projection (option B) or the
    parameter-free subsample-and-pad (option A)."""
    if option == "A":
        return PadShortcut(in_ch, out_ch, stride=stride)
    if option == "B":
        return nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                bn=_norm(out_ch, norm),
            )
        )
    raise ValueError(f"unknown shortcut option {option!r}; choose 'A' or 'B'")


class ResidualBlock(nn.Module):
    """A residual branch, plus the shortcut it adds (when ``skip``), then ReLU.

    Subclasses build their branch's layers, then call ``_finish_block``; registering the
    shortcut last keeps ``weight_layers`` in depth order and the state_dict names stable.
    """

    expansion: ClassVar[int]  # output channels per unit of stage width
    skip: bool
    reshapes: bool  # the output's shape differs from the input's (stride or channels)
    shortcut: nn.Module | None  # None: identity, or no shortcut at all in a plain block
    removed: bool  # taken out at test time (Veit et al. 2016); set it through ``lesioned()``

    def _finish_block(
        self,
        in_ch: int,
        out_ch: int,
        *,
        stride: int,
        skip: bool,
        option: ShortcutOption,
        norm: bool,
    ) -> None:
        self.relu = nn.ReLU(inplace=True)
        self.skip = skip
        self.reshapes = stride != 1 or in_ch != out_ch
        self.shortcut = (
            _shortcut(in_ch, out_ch, stride=stride, option=option, norm=norm)
            if skip and self.reshapes
            else None
        )
        self.removed = False

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def last_norm(self) -> nn.Module:
        """The branch's last normalisation, which ``zero_init_last`` zeroes."""
        raise NotImplementedError

    def zero_init_last(self) -> bool:
        """Start as the shortcut alone: zero the branch's last BN scale (only where there is a
        shortcut; in a plain block it would cut the signal). True if it did."""
        last = self.last_norm()
        if not self.skip or not isinstance(last, nn.BatchNorm2d):
            return False
        nn.init.zeros_(last.weight)
        return True

    def shortcut_path(self, x: torch.Tensor) -> torch.Tensor:
        """What the block adds to its branch: ``x`` itself, or the projection or option-A
        shortcut where the shape changes."""
        return x if self.shortcut is None else self.shortcut(x)

    @property
    def shortcut_kind(self) -> str:
        """The block's shortcut as the reports name it: identity, projection, option A, or
        none (a plain block)."""
        if not self.skip:
            return "none"
        if self.shortcut is None:
            return "identity"
        return "option A" if isinstance(self.shortcut, PadShortcut) else "projection"

    @property
    def removable(self) -> bool:
        """A block can be removed when something can take its place: its shortcut, or, in a
        plain block that keeps the shape, the identity. A plain block that changes the shape
        has nothing to stand in for it."""
        return self.skip or not self.reshapes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.removed:
            # Veit et al.'s lesion: the block's output becomes what it would be with its branch
            # F(x) = 0, the post-addition ReLU of the shortcut path alone: x itself on an
            # identity path and in a plain block that keeps the shape (x is a ReLU's output),
            # relu(shortcut(x)) where the shape changes. Not in place: x may be the caller's.
            return nn.functional.relu(self.shortcut_path(x))
        out = self.branch(x)
        if self.skip:
            out = out + self.shortcut_path(x)
        return self.relu(out)


class BasicBlock(ResidualBlock):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> (+ shortcut) -> ReLU."""

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        width: int,
        *,
        stride: int,
        skip: bool,
        norm: bool = True,
        shortcut: ShortcutOption = "B",
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(width, norm)
        self.conv2 = nn.Conv2d(width, width, 3, stride=1, padding=1, bias=False)
        self.bn2 = _norm(width, norm)
        self._finish_block(in_ch, width, stride=stride, skip=skip, option=shortcut, norm=norm)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def last_norm(self) -> nn.Module:
        return self.bn2


class Bottleneck(ResidualBlock):
    """conv1x1 (reduce) -> BN -> ReLU -> conv3x3 (grouped) -> BN -> ReLU -> conv1x1 (expand x4)
    -> BN -> (+ shortcut) -> ReLU.

    ``groups`` > 1 is ResNeXt's block (Xie et al. 2017): the 3x3 is ``groups`` parallel paths
    of ``width_per_group`` channels each; the stride sits on the 3x3, as in torchvision.
    """

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        width: int,
        *,
        stride: int,
        skip: bool,
        norm: bool = True,
        shortcut: ShortcutOption = "B",
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        # torchvision's rule: the inner width scales with width_per_group / 64 and cardinality.
        inner = int(width * (width_per_group / 64.0)) * groups
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, inner, 1, bias=False)
        self.bn1 = _norm(inner, norm)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = _norm(inner, norm)
        self.conv3 = nn.Conv2d(inner, out_ch, 1, bias=False)
        self.bn3 = _norm(out_ch, norm)
        self._finish_block(in_ch, out_ch, stride=stride, skip=skip, option=shortcut, norm=norm)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def last_norm(self) -> nn.Module:
        return self.bn3


class ResNet(Classifier):
    """A CIFAR-sized ResNet: 3x3 stem (stride 1, no max-pool), stages of residual blocks, GAP,
    dropout, linear head."""

    def __init__(
        self,
        *,
        stem_width: int,
        widths: Sequence[int],
        blocks: Sequence[int],
        first_stride: int,
        block: BlockType = "basic",
        groups: int = 1,
        width_per_group: int = 64,
        shortcut: ShortcutOption = "B",
        stem_padding: int = 1,
        skip: bool = True,
        norm: bool = True,
        num_classes: int = 10,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError(f"widths {list(widths)} and blocks {list(blocks)} differ in length")
        if block == "basic" and (groups != 1 or width_per_group != 64):
            raise ValueError("groups and width_per_group need block='bottleneck'")
        # stem_padding 3 is seed 003's stem as written (32x32 -> 36x36), not a typo to fix.
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(3, stem_width, 3, padding=stem_padding, bias=False),
                bn=_norm(stem_width, norm),
                relu=nn.ReLU(inplace=True),
            )
        )

        if block not in ("basic", "bottleneck"):
            raise ValueError(f"unknown block {block!r}; choose 'basic' or 'bottleneck'")

        def make_block(in_ch: int, width: int, stride: int) -> ResidualBlock:
            if block == "basic":
                return BasicBlock(
                    in_ch, width, stride=stride, skip=skip, norm=norm, shortcut=shortcut
                )
            return Bottleneck(
                in_ch, width, stride=stride, skip=skip, norm=norm, shortcut=shortcut,
                groups=groups, width_per_group=width_per_group,
            )  # fmt: skip

        stages: list[nn.Module] = []
        in_ch = stem_width
        for index, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            stride = first_stride if index == 0 else 2
            stage = [make_block(in_ch, width, stride)]
            in_ch = width * stage[0].expansion
            stage += [make_block(in_ch, width, 1) for _ in range(count - 1)]
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self._finish(in_ch, num_classes=num_classes, dropout=dropout)

    def zero_init_residual(self) -> int:
        return sum(
            block.zero_init_last() for block in self.modules() if isinstance(block, ResidualBlock)
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def residual_blocks(model: nn.Module) -> dict[str, ResidualBlock]:
    """Every residual block, input to output, by a stable name counted from 1 as the reports
    count stages: ``stages.1.0`` is ``stage2.block1``. Empty for a model without blocks."""
    blocks = {}
    for path, module in model.named_modules():
        if isinstance(module, ResidualBlock):
            stage, block = path.split(".")[-2:]  # stages.<stage>.<block>
            blocks[f"stage{int(stage) + 1}.block{int(block) + 1}"] = module
    return blocks


@contextmanager
def lesioned(model: nn.Module, names: Iterable[str]) -> Iterator[None]:
    """Remove the named blocks at test time and put them back on exit, even after an error.

    Why a flag on each block, not modules swapped out: the weights, the state_dict and every
    hook stay where they are, and putting a block back is setting one bool again.
    """
    blocks = residual_blocks(model)
    chosen = []
    for name in names:
        if name not in blocks:
            raise ValueError(f"{name!r} is no residual block of this model; it has {list(blocks)}")
        if not blocks[name].removable:
            raise ValueError(f"{name} cannot be removed: a plain block that changes the shape")
        chosen.append(blocks[name])
    before = [block.removed for block in chosen]
    try:
        for block in chosen:
            block.removed = True
        yield
    finally:
        for block, state in zip(chosen, before, strict=True):
            block.removed = state
