"""The lesion study of Veit, Wilber and Belongie 2016 ("Residual networks behave like ensembles
of relatively shallow networks"): residual blocks removed at test time, and the test accuracy
that is left.

One block at a time (their Fig. 3), then k blocks drawn at random together, k = 1..n over the
blocks that can be removed, several seeded draws each (their Fig. 5). A removed residual block
passes on its shortcut path (``toolkit.models.lesioned``); a plain block can be removed only
where it keeps the shape, so that the identity can take its place, and a plain block that
changes the shape is reported as impossible to remove, never skipped.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

from analysis.sources import SourceError, load_model, sample_test
from analysis.verdicts import Verdict
from toolkit.data import PAPER_NORMALIZATION, Dataset, Normalization, TensorLoader
from toolkit.data.dataset import Split
from toolkit.models import Classifier, by_stage, lesioned, residual_blocks, stage_of
from toolkit.training import evaluate

# "Keeps most of its accuracy": at least half of what the network gains over chance (1/classes).
# Veit et al.'s ResNet-110 kept nearly all of it after any single removal but a downsampling
# one; their VGG fell to chance after any. Half splits the two outcomes where neither sits.
KEEPS_MOST = 0.5


@dataclass(frozen=True)
class BlockLesion:
    block: str  # "stage2.block1"
    stage: str  # "stage2"
    shortcut: str  # what the block adds: identity, projection, option A, or none (plain)
    removable: bool  # False: a plain block that changes the shape; nothing can replace it
    accuracy: float | None  # test accuracy with this block removed; None where impossible


@dataclass(frozen=True)
class StageLesion:
    stage: str
    blocks: int
    removable: int
    accuracy_mean: float | None  # over the stage's removable blocks, each removed alone
    accuracy_min: float | None


@dataclass(frozen=True)
class RemovalCount:
    """Accuracy with ``removed`` blocks, drawn at random, taken out together (Fig. 5)."""

    removed: int
    accuracy_mean: float  # over the draws
    accuracy_std: float
    accuracy_min: float
    accuracy_max: float
    draws: list[list[str]]  # the blocks each draw removed, in depth order


@dataclass(frozen=True)
class LesionStudy:
    model: str
    residual: bool  # its blocks add a shortcut
    images: int
    chance: float  # 1 / classes: what a network that learnt nothing scores
    accuracy: float  # every block in place
    blocks: list[BlockLesion]
    stages: list[StageLesion]
    removals: list[RemovalCount]  # removed = 1..n over the removable blocks


@dataclass(frozen=True)
class LesionReport:
    studies: list[LesionStudy]
    seed: int
    draws: int
    verdict: Verdict


def lesion_study(
    model: Classifier,
    split: Split,
    *,
    label: str,
    chance: float,
    draws: int,
    seed: int,
    normalization: Normalization = PAPER_NORMALIZATION,
    batch_size: int = 500,
) -> LesionStudy:
    """Remove each block alone, then ``draws`` random sets of k blocks for every k, and
    measure the test accuracy on ``split`` each time (eval mode, one pass per set)."""
    blocks = residual_blocks(model)
    if not blocks:
        raise SourceError(f"{label} has no residual blocks to remove (a lesion needs a ResNet)")
    loader = TensorLoader(split, batch_size=batch_size, normalization=normalization)
    measured: dict[frozenset[str], float] = {}

    def accuracy(removed: frozenset[str]) -> float:
        # A set drawn again is not run again: every k = 1 draw is a single removal, and
        # k = n has only one set.
        if removed not in measured:
            with lesioned(model, removed):
                measured[removed] = evaluate(model, loader).acc
        return measured[removed]

    block_rows = [
        BlockLesion(
            block=name,
            stage=stage_of(name),
            shortcut=block.shortcut_kind,
            removable=block.removable,
            accuracy=accuracy(frozenset([name])) if block.removable else None,
        )
        for name, block in blocks.items()
    ]
    removable = [row.block for row in block_rows if row.removable]
    rng = random.Random(seed)
    removals = []
    for k in range(1, len(removable) + 1):
        sets = [sorted(rng.sample(removable, k), key=removable.index) for _ in range(draws)]
        values = [accuracy(frozenset(s)) for s in sets]
        removals.append(
            RemovalCount(
                removed=k,
                accuracy_mean=statistics.fmean(values),
                accuracy_std=statistics.stdev(values) if len(values) > 1 else 0.0,
                accuracy_min=min(values),
                accuracy_max=max(values),
                draws=sets,
            )
        )
    return LesionStudy(
        model=label,
        residual=any(block.skip for block in blocks.values()),
        images=len(split),
        chance=chance,
        accuracy=accuracy(frozenset()),
        blocks=block_rows,
        stages=_stages(block_rows),
        removals=removals,
    )


def _stages(rows: list[BlockLesion]) -> list[StageLesion]:
    result = []
    for stage, members in by_stage(rows, lambda row: row.block).items():
        values = [m.accuracy for m in members if m.accuracy is not None]
        result.append(
            StageLesion(
                stage=stage,
                blocks=len(members),
                removable=len(values),
                accuracy_mean=statistics.fmean(values) if values else None,
                accuracy_min=min(values) if values else None,
            )
        )
    return result


MAX_DRAWS = 1000  # each draw is a pass over the test sample per number of blocks removed


def lesion_sources(
    specs: list[str], dataset: Dataset, *, images: int | None, draws: int, seed: int
) -> LesionReport:
    """The lesion study of each run or checkpoint's trained weights, all on the same test
    images, judged together."""
    if not 1 <= draws <= MAX_DRAWS:
        raise SourceError(f"--draws must be in [1, {MAX_DRAWS}], got {draws}")
    split = sample_test(dataset, images=images, seed=seed)
    chance = 1 / len(dataset.classes)
    studies = []
    for spec in specs:
        source = load_model(spec, dataset, at="best", analysis="lesion")
        study = lesion_study(
            source.model, split, label=source.label, chance=chance, draws=draws, seed=seed,
            normalization=source.normalization,
        )  # fmt: skip
        studies.append(study)
    return LesionReport(studies=studies, seed=seed, draws=draws, verdict=ensemble_claim(studies))


def kept(study: LesionStudy, accuracy: float) -> float:
    """The share of the intact network's gain over chance that ``accuracy`` keeps."""
    return (accuracy - study.chance) / (study.accuracy - study.chance)


def _single_removals(study: LesionStudy) -> list[float]:
    return [row.accuracy for row in study.blocks if row.accuracy is not None]


def ensemble_claim(studies: list[LesionStudy]) -> Verdict:
    """Veit et al.: a residual network degrades smoothly when blocks are removed (it keeps most
    of its accuracy without any one block, and loses it gradually as more go), a plain one
    collapses (without any one block it is near chance)."""
    claim = (
        "residual networks degrade smoothly when blocks are removed, plain ones collapse "
        "(Veit et al. 2016)"
    )
    residual = [s for s in studies if s.residual]
    plain = [s for s in studies if not s.residual]
    if not residual or not plain:
        return Verdict(claim, "not measured", "needs a residual network and a plain one")
    at_chance = [f"{s.model} {s.accuracy:.1%}" for s in studies if s.accuracy <= s.chance]
    if at_chance:
        return Verdict(
            claim,
            "not measured",
            f"no better than chance ({studies[0].chance:.1%}) with every block in place, so "
            f"there is nothing to lose: {', '.join(at_chance)}",
        )
    unremovable = [s.model for s in plain if not _single_removals(s)]
    if unremovable:
        return Verdict(
            claim, "not measured", f"no block of {', '.join(unremovable)} keeps its shape"
        )
    parts, checks = [], []
    for study in studies:
        singles = _single_removals(study)
        mean_kept = statistics.fmean(kept(study, a) for a in singles)
        worst_block, worst = min(
            ((r.block, r.accuracy) for r in study.blocks if r.accuracy is not None),
            key=lambda pair: pair[1],
        )
        impossible = len(study.blocks) - len(singles)
        kind = "residual" if study.residual else "plain"
        parts.append(
            f"{study.model} ({kind}) {study.accuracy:.1%} intact; one block removed: mean "
            f"{statistics.fmean(singles):.1%} (keeps {mean_kept:.0%} of its gain over chance), "
            f"worst {worst:.1%} ({worst_block}); all {len(singles)} removable blocks removed: "
            f"{study.removals[-1].accuracy_mean:.1%}"
            + (f"; {impossible} cannot be removed (the shape changes)" if impossible else "")
        )
        checks.append(mean_kept >= KEEPS_MOST if study.residual else mean_kept < KEEPS_MOST)
    for r in residual:
        for p in plain:
            shared = min(len(r.removals), len(p.removals))
            ahead = sum(
                kept(r, a.accuracy_mean) > kept(p, b.accuracy_mean)
                for a, b in zip(r.removals[:shared], p.removals[:shared], strict=True)
            )
            parts.append(
                f"{r.model} keeps more than {p.model} with {ahead} of k = 1..{shared} "
                "blocks removed"
            )
            checks.append(ahead == shared)
    rule = (
        f"rule: each residual network keeps at least {KEEPS_MOST:.0%} of its gain over chance "
        f"on average when one block is removed, each plain one less, and the residual keeps "
        f"more at every number of removed blocks"
    )
    return Verdict(
        claim, "supported" if all(checks) else "not supported", "; ".join([*parts, rule])
    )
