"""REPORT.md's "Why skips work": which networks pair up, the skips-or-capacity rule and the
paired verdicts (the section itself is written by tests/test_reproduce.py on real runs)."""

from __future__ import annotations

from analysis.mechanisms import SkipPair, capacity_claim, skip_pairs, twin_claim
from analysis.report import CompareRow, table_cells
from analysis.seeds import estimate


def _row(arch: str, acc: float, seeds: list[float] | None = None) -> CompareRow:
    return CompareRow(
        model=arch, arch=arch, run=arch, recipe="fast", test_acc=acc, paper_test_acc=None,
        train_min=1.0, paper_train_min=None, epochs=2, max_epochs=2, stopped_early=False,
        train_images=100, params=1, paper_params=None, device="cpu", precision="fp32",
        seeds=None if seeds is None else estimate("test_acc", [0, 1, 2], seeds),
    )  # fmt: skip


def test_each_residual_network_pairs_with_its_plain_twin_only():
    archs = ["baseline-cnn", "mini-resnet", "resnet18", "resnet18-noskip", "mini-resnet-noskip"]
    assert skip_pairs(archs) == [
        SkipPair("mini-resnet", "mini-resnet-noskip"),
        SkipPair("resnet18", "resnet18-noskip"),
    ]
    assert skip_pairs(["resnet20", "plain20", "plain56"]) == [SkipPair("resnet20", "plain20")]
    assert skip_pairs(["resnet18", "mini-resnet-noskip", "baseline-cnn"]) == []


def test_capacity_claim_splits_the_lead_into_capacity_and_skips():
    base = _row("baseline-cnn", 0.80)
    # Lead 6 points, of which the plain twin gets 1 (capacity) and the skips 5.
    skips = capacity_claim([base, _row("mini-resnet", 0.86), _row("mini-resnet-noskip", 0.81)])
    assert skips.verdict == "supported"
    assert "capacity (its plain twin 81.00% - baseline) +1.00 pt" in skips.evidence
    assert "skips (Mini-ResNet - its plain twin) +5.00 pt" in skips.evidence
    # The plain twin gets 5 of the 6: capacity explains the lead.
    capacity = capacity_claim([base, _row("mini-resnet", 0.86), _row("mini-resnet-noskip", 0.85)])
    assert capacity.verdict == "not supported"
    # No lead at all: nothing for the skips to explain.
    behind = capacity_claim([base, _row("mini-resnet", 0.79), _row("mini-resnet-noskip", 0.70)])
    assert behind.verdict == "not supported"
    missing = capacity_claim([base, _row("mini-resnet", 0.86)])
    assert missing.verdict == "not measured" and "mini-resnet-noskip" in missing.evidence


def test_twin_claim_needs_an_interval():
    pair = SkipPair("resnet18", "resnet18-noskip")
    # One run each: however large the gap, one seed cannot tell it from noise.
    single = twin_claim([_row("resnet18", 0.90), _row("resnet18-noskip", 0.80)], pair)
    assert single.verdict == "inconclusive"
    assert "+10.00 pt" in single.evidence and "--seeds 0,1,2" in single.evidence
    # Seed groups: ahead by 2, 3 and 3 points seed by seed, an interval wholly above 0.
    ahead = [_row("resnet18", 0.82, [0.80, 0.82, 0.84]),
             _row("resnet18-noskip", 0.79, [0.78, 0.79, 0.81])]  # fmt: skip
    assert twin_claim(ahead, pair).verdict == "supported"
    # Behind by 2 on one seed, ahead by 3 and 4 on the others: the interval holds 0.
    mixed = [_row("resnet18", 0.82, [0.78, 0.83, 0.85]),
             _row("resnet18-noskip", 0.80, [0.80, 0.80, 0.81])]  # fmt: skip
    assert twin_claim(mixed, pair).verdict == "inconclusive"


def test_a_control_row_has_no_paper_figures():
    cells = table_cells(_row("mini-resnet-noskip", 0.8512))
    assert cells[3:6] == ["85.12%", "—", "—"]
    assert cells[7] == "—"
