"""REPORT.md's "Why skips work": the mechanisms the paper asserts, tested on the runs a budget
trained. Each residual network meets its plain twin in a lesion study (the implicit-ensemble
claim) and a paired comparison; each residual network's branches are set against its shortcuts
(residuals stay small); the Mini-ResNet's twin separates its skips from its capacity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analysis.lesion import LesionReport, kept, lesion_sources
from analysis.plots import lesion_curves
from analysis.report import CompareRow
from analysis.residuals import ResidualProfile, residual_sources
from analysis.seeds import paired_difference
from analysis.verdicts import Judgement, Verdict, judge, paired_claim
from toolkit.data import Dataset
from toolkit.models import get_architecture

LESION_SEED = 0  # the test images and block draws: the same for every network compared


@dataclass(frozen=True)
class SkipPair:
    residual: str  # an architecture with shortcuts
    plain: str  # the same arguments without them


@dataclass(frozen=True)
class Mechanisms:
    pairs: list[SkipPair]
    lesions: list[LesionReport]  # one per pair, in the order of ``pairs``
    residuals: list[ResidualProfile]  # every residual network's, at init and trained
    capacity: Verdict
    paired: list[Verdict]  # one per pair: with skips more accurate than without
    figures: list[Path]


def has_skips(name: str) -> bool:
    arch = get_architecture(name)
    return arch.model_class == "ResNet" and bool(arch.kwargs.get("skip", True))


def skip_pairs(archs: list[str]) -> list[SkipPair]:
    """Each network among ``archs`` with shortcuts whose plain twin is among them too."""
    pairs = []
    for name in filter(has_skips, archs):
        twin = {**get_architecture(name).kwargs, "skip": False}
        pairs += [SkipPair(name, other) for other in archs
                  if get_architecture(other).kwargs == twin]  # fmt: skip
    return pairs


def twin_claim(rows: list[CompareRow], pair: SkipPair) -> Verdict:
    """With skips more accurate than without: on the paired interval when both rows are seed
    groups, inconclusive on one run each (a single seed has no interval)."""
    by = {r.arch: r for r in rows}
    skip, plain = by[pair.residual], by[pair.plain]
    if skip.seeds is not None and plain.seeds is not None:
        paired = paired_difference(
            skip.seeds, plain.seeds, first_label=pair.residual, second_label=pair.plain
        )
        return paired_claim(paired)
    claim = f"{pair.residual} has a higher test_acc than {pair.plain} (paired by seed)"
    evidence = (
        f"one run each: {skip.test_acc:.2%} vs {plain.test_acc:.2%} "
        f"({(skip.test_acc - plain.test_acc) * 100:+.2f} pt), and one seed gives no interval "
        f"to tell that from noise; `rtk train {pair.residual} {pair.plain} --seeds 0,1,2` "
        "then `rtk report seeds` gives one"
    )
    return Verdict(claim, "inconclusive", evidence)


CAPACITY_ARCHS = ("baseline-cnn", "mini-resnet", "mini-resnet-noskip")


def capacity_claim(rows: list[CompareRow]) -> Verdict:
    """Is the Mini-ResNet's lead over the baseline its skips or its 7x parameters? Its plain
    twin has the parameters without the skips, so the lead splits in two: the twin's gain
    over the baseline (capacity) and the Mini-ResNet's over its twin (skips)."""
    claim = "the Mini-ResNet's lead over the baseline CNN comes from its skips, not its capacity"
    acc = {r.arch: r.test_acc for r in rows}
    if not set(CAPACITY_ARCHS) <= acc.keys():
        missing = sorted(set(CAPACITY_ARCHS) - acc.keys())
        return Verdict(
            claim,
            "not measured",
            f"needs runs of {', '.join(missing)} too (`--models` them; budget quick trains no "
            "mini-resnet-noskip)",
        )
    base, mini, plain = (acc[a] * 100 for a in CAPACITY_ARCHS)
    lead, skips, capacity = mini - base, mini - plain, plain - base
    means = " (means over seeds)" if any(r.seeds for r in rows) else ""
    evidence = (
        f"Mini-ResNet {mini:.2f}% - baseline {base:.2f}% = {lead:+.2f} pt{means}: capacity "
        f"(its plain twin {plain:.2f}% - baseline) {capacity:+.2f} pt, skips (Mini-ResNet - "
        f"its plain twin) {skips:+.2f} pt; rule: a positive lead, more of it from skips"
    )
    verdict: Judgement = judge(lead > 0 and skips > capacity)
    return Verdict(claim, verdict, evidence)


def why_skips(
    runs: dict[str, Path],
    rows: list[CompareRow],
    dataset: Dataset,
    *,
    images: int,
    draws: int,
    figures: Path,
) -> Mechanisms:
    """The lesion study of each residual/plain pair among ``runs``, the residual ratios of
    every residual network, all on the same ``images`` test images; the capacity question
    and the paired differences from Table I's ``rows``."""
    pairs = skip_pairs(list(runs))
    lesions, outputs = [], []
    for pair in pairs:
        report = lesion_sources(
            [str(runs[pair.residual]), str(runs[pair.plain])],
            dataset,
            images=images,
            draws=draws,
            seed=LESION_SEED,
        )
        lesions.append(report)
        outputs.append(lesion_curves(report, figures / f"lesion-{pair.residual}.png"))
    residual = [str(run) for arch, run in runs.items() if has_skips(arch)]
    profiles = residual_sources(
        residual, dataset, ats=["init", "best"], images=images, seed=LESION_SEED
    )
    return Mechanisms(
        pairs=pairs,
        lesions=lesions,
        residuals=profiles,
        capacity=capacity_claim(rows),
        paired=[twin_claim(rows, pair) for pair in pairs],
        figures=outputs,
    )


def mechanisms_markdown(m: Mechanisms, *, judged: str, root: Path) -> list[str]:
    """The report section: each mechanism's numbers and verdict, judged on ``judged``."""
    lines = [
        "## Why skips work (beyond the paper)",
        "",
        f"The mechanisms the paper and its summary assert, each tested on the runs above "
        f"({judged}).",
        "",
        "### Skips or capacity",
        "",
        f"- {m.capacity.claim}: **{m.capacity.verdict}**. {m.capacity.evidence}.",
        "",
        "### With and without skips, paired by seed",
        "",
    ]
    lines += [f"- {v.claim}: **{v.verdict}**. {v.evidence}." for v in m.paired] or [
        "- No residual network was trained with its plain twin."
    ]
    lines += ["", "### Lesion study (Veit et al. 2016: an ensemble of shallow paths?)", ""]
    if not m.lesions:
        lines += ["- No residual network was trained with its plain twin.", ""]
    for report, figure in zip(m.lesions, m.figures, strict=True):
        images = report.studies[0].images
        lines += [
            f"Each block removed alone, then k random blocks together ({report.draws} draws), "
            f"on {images:,} test images:",
            "",
            "| model | intact | one block removed: mean (worst) | keeps of its gain | all "
            "removable removed | blocks that cannot be removed |",
            "|---|---|---|---|---|---|",
        ]
        for s in report.studies:
            singles = [r.accuracy for r in s.blocks if r.accuracy is not None]
            if not singles:
                lines.append(f"| {s.model} | {s.accuracy:.1%} | — | — | — | all |")
                continue
            mean = sum(singles) / len(singles)
            fixed = sum(not r.removable for r in s.blocks)
            # Intact at chance, the network has no gain over chance to keep.
            keeps = f"{kept(s, mean):.0%}" if s.accuracy > s.chance else "— (at chance)"
            lines.append(
                f"| {s.model} | {s.accuracy:.1%} | {mean:.1%} ({min(singles):.1%}) | "
                f"{keeps} | {s.removals[-1].accuracy_mean:.1%} | {fixed} |"
            )
        v = report.verdict
        lines += [
            "",
            f"- {v.claim}: **{v.verdict}**. {v.evidence}.",
            "",
            f"![lesion]({figure.relative_to(root)})",
            "",
        ]
    lines += ["### Residual ratios ||F(x)|| / ||shortcut(x)|| (do residuals stay small?)", ""]
    applicable = [p for p in m.residuals if p.applicable]
    if not applicable:
        lines.append("- No residual network among the runs.")
        return lines
    lines += [
        "| model | weights | stage | mean ratio | largest block | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for p in applicable:
        for s in p.stages:
            lines.append(
                f"| {p.model} | {p.at} | {s.stage} | {s.ratio_mean:.3g} | {s.ratio_max:.3g} | "
                f"{s.verdict.verdict} |"
            )
    lines += [
        "",
        f"Over {applicable[0].images:,} test images; a stage's verdict holds when every block's "
        "mean ratio is below 1. A run that zero-initialises its residual branches (the fast "
        "recipe) starts at ratio 0, so there only the trained weights test the claim.",
    ]
    return lines
