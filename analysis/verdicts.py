"""Verdicts: a claim, "supported", "not supported", "not measured" or "inconclusive", and the
numbers and rule behind it. Generic: the paper's claims (claims.py), the studies and the
mechanism experiments all judge this way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from analysis.seeds import PairedDifference, percent

Judgement = Literal["supported", "not supported", "not measured", "inconclusive"]


@dataclass(frozen=True)
class Verdict:
    claim: str
    verdict: Judgement
    evidence: str


def judge(holds: bool) -> Judgement:
    return "supported" if holds else "not supported"


def judge_interval(
    interval: tuple[float, float] | None,
    threshold: float,
    *,
    claimed: Literal["above", "below"] = "above",
) -> Judgement:
    """A claim that a quantity lies ``claimed`` of ``threshold``, judged on its confidence
    interval: supported when the whole interval lies on the claimed side, not supported when
    it lies wholly on the other, inconclusive when it holds the threshold (an end on it
    included) or there is no interval (one seed), since then noise could explain either."""
    if interval is None:
        return "inconclusive"
    low, high = interval
    if claimed == "below":
        low, high, threshold = -high, -low, -threshold
    if low > threshold:
        return "supported"
    if high < threshold:
        return "not supported"
    return "inconclusive"


def both(first: Judgement, second: Judgement) -> Judgement:
    """A claim of two parts: it fails when either part fails, stays open when either is open or
    unmeasured, and holds only when both hold."""
    for outcome in ("not supported", "not measured", "inconclusive"):
        if outcome in (first, second):
            return outcome  # type: ignore[return-value]
    return "supported"


_INTERVAL_RULE = (
    "rule: supported when the whole {confidence:.0%} interval of the paired difference is above "
    "0, not supported when wholly below, inconclusive when it holds 0 or there is one seed"
)


def paired_claim(paired: PairedDifference) -> Verdict:
    """Two seed groups: the first scores higher than the second, judged on the confidence
    interval of their difference seed by seed."""
    d = paired.difference
    claim = f"{paired.first} has a higher {d.metric} than {paired.second} (paired by seed)"
    evidence = (
        f"{paired.first} minus {paired.second}: {percent(d, difference=True)}; "
        + _INTERVAL_RULE.format(confidence=d.confidence)
    )
    return Verdict(claim, judge_interval(d.interval, 0.0), evidence)
