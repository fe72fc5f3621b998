"""How large each block's residual is against the path it is added to.

Per block and per test image, ||F(x)|| / ||shortcut(x)||: the residual branch's output against
the shortcut path's (x itself, or its projection or option-A padding where the shape changes),
each an L2 norm over C*H*W. He et al. 2015 (Sec. 4.2, Fig. 7) measured smaller layer responses
in ResNets than in their plain twins, and read it as "the residual functions might be generally
closer to zero"; a ratio below 1 is a direct form of that: the block changes its input by less
than the input itself. A plain network adds no shortcut, so there is nothing to set its branch
against: it is reported as not applicable.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from analysis.sources import At, load_model, sample_test
from analysis.verdicts import Verdict
from toolkit.data import PAPER_NORMALIZATION, Dataset, Normalization, TensorLoader
from toolkit.data.dataset import Split
from toolkit.models import Classifier, batched_logits, by_stage, residual_blocks, stage_of

SMALL = 1.0  # a residual is small when its norm is below its shortcut path's


@dataclass(frozen=True)
class BlockResidual:
    block: str  # "stage2.block1", as the lesion study names it
    stage: str
    shortcut: str  # identity, projection or option A
    ratio_mean: float  # ||F(x)|| / ||shortcut(x)||, per image, mean over the images
    ratio_std: float
    branch_norm_mean: float  # ||F(x)||, L2 over C*H*W
    shortcut_norm_mean: float  # ||shortcut(x)||


@dataclass(frozen=True)
class StageResidual:
    stage: str
    blocks: int
    ratio_mean: float  # the mean of its blocks' mean ratios
    ratio_max: float  # its largest block mean
    verdict: Verdict  # "residuals stay small" in this stage


@dataclass(frozen=True)
class ResidualProfile:
    model: str
    at: str  # "init" or "best"
    images: int
    applicable: bool
    reason: str  # why not, where not applicable; "" otherwise
    blocks: list[BlockResidual]
    stages: list[StageResidual]


def _record_norms(into: list[torch.Tensor], output: torch.Tensor) -> None:
    into.append(torch.linalg.vector_norm(output.flatten(1), dim=1).double())


def residual_profile(
    model: Classifier,
    split: Split,
    *,
    label: str,
    at: str,
    normalization: Normalization = PAPER_NORMALIZATION,
    batch_size: int = 500,
) -> ResidualProfile:
    """Both norms of every block over ``split``, in eval mode, from one forward pass: hooks on
    each branch's last layer (F(x)) and on each block (its input, through its shortcut)."""
    blocks = residual_blocks(model)
    if not any(block.skip for block in blocks.values()):
        what = "has no shortcuts (a plain network)" if blocks else "has no residual blocks"
        return ResidualProfile(
            model=label, at=at, images=len(split), applicable=False,
            reason=f"{label} {what}: there is no shortcut path to set a residual against",
            blocks=[], stages=[],
        )  # fmt: skip
    branch: dict[str, list[torch.Tensor]] = {name: [] for name in blocks}
    shortcut: dict[str, list[torch.Tensor]] = {name: [] for name in blocks}

    def on_branch(into: list[torch.Tensor], module: nn.Module, inputs: Any, out: Any) -> None:
        _record_norms(into, out)

    def on_block(into: list[torch.Tensor], module: nn.Module, inputs: Any, out: Any) -> None:
        # The block's input is intact here: nothing in its forward writes to x in place.
        _record_norms(into, module.shortcut_path(inputs[0]))

    handles = []
    for name, block in blocks.items():
        handles.append(block.last_norm().register_forward_hook(partial(on_branch, branch[name])))
        handles.append(block.register_forward_hook(partial(on_block, shortcut[name])))
    try:
        loader = TensorLoader(split, batch_size=batch_size, normalization=normalization)
        batches = (x for x, _ in loader)
        batched_logits(model, batches)
    finally:
        for handle in handles:
            handle.remove()

    rows = []
    for name, block in blocks.items():
        f_norm, s_norm = torch.cat(branch[name]), torch.cat(shortcut[name])
        ratio = f_norm / s_norm
        rows.append(
            BlockResidual(
                block=name,
                stage=stage_of(name),
                shortcut=block.shortcut_kind,
                ratio_mean=float(ratio.mean()),
                ratio_std=float(ratio.std()) if len(ratio) > 1 else 0.0,
                branch_norm_mean=float(f_norm.mean()),
                shortcut_norm_mean=float(s_norm.mean()),
            )
        )
    return ResidualProfile(
        model=label, at=at, images=len(split), applicable=True, reason="", blocks=rows,
        stages=_stages(rows, images=len(split)),
    )  # fmt: skip


def _stages(rows: list[BlockResidual], *, images: int) -> list[StageResidual]:
    return [
        StageResidual(
            stage=stage,
            blocks=len(members),
            ratio_mean=statistics.fmean(m.ratio_mean for m in members),
            ratio_max=max(m.ratio_mean for m in members),
            verdict=small_residual_claim(stage, members, images=images),
        )
        for stage, members in by_stage(rows, lambda row: row.block).items()
    ]


def small_residual_claim(stage: str, rows: list[BlockResidual], *, images: int) -> Verdict:
    """He et al.'s "residuals stay small", judged in one stage: every block's mean ratio
    below ``SMALL``."""
    claim = f"residuals stay small in {stage}: ||F(x)|| < ||shortcut(x)|| in every block"
    ratios = ", ".join(f"{r.block} {r.ratio_mean:.3g} ± {r.ratio_std:.2g}" for r in rows)
    evidence = (
        f"||F(x)|| / ||shortcut(x)||, mean ± std over {images} test images: {ratios}; rule: "
        f"every block's mean below {SMALL:g} (the block changes its input by less than the "
        "input itself)"
    )
    holds = all(r.ratio_mean < SMALL for r in rows)
    return Verdict(claim, "supported" if holds else "not supported", evidence)


def residual_sources(
    specs: list[str], dataset: Dataset, *, ats: list[At], images: int | None, seed: int
) -> list[ResidualProfile]:
    """Each source's profile at each of ``ats``, all on the same test images."""
    split = sample_test(dataset, images=images, seed=seed)
    profiles = []
    for spec in specs:
        for at in ats:
            source = load_model(spec, dataset, at=at, analysis="residual", seed=seed)
            profile = residual_profile(
                source.model, split, label=source.label, at=at, normalization=source.normalization
            )
            profiles.append(profile)
    return profiles
