"""The paper's claims (paper-spec.md), each judged from numbers measured here.

Every verdict is "supported", "not supported" or "not measured", with the numbers behind it
and the rule that turned them into the verdict; a verdict judged on a confidence interval over
seeds may also be "inconclusive" (the interval holds the threshold, or one seed gives none).
Nothing here assumes the paper is right.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from analysis.gradients import GradientProfile
from analysis.latency import BenchRow
from analysis.mechanisms import capacity_claim, skip_pairs, twin_claim
from analysis.report import CompareRow, compare_runs, markdown_table, read_history
from analysis.seeds import (
    Estimate,
    curve_band,
    estimate,
    group_histories,
    paired_difference,
    percent,
)
from analysis.sources import SourceError
from analysis.train_bench import TrainStepResult
from analysis.verdicts import Judgement, Verdict, both, judge, judge_interval
from toolkit.models import PAPER, architecture_names
from toolkit.training import RunDir, SeedGroup

UNIFORM_RATIO = 10.0  # "nearly uniform" gradients: first/last layer RMS within 10x either way
SIMILAR_LATENCY = 2.0  # claim 5(iii) holds if the slowest model is within 2x of the fastest
MODEST_MEMORY = 1.10  # claim 5(i) holds if skips add at most 10% training activation memory


def _acc(rows: list[CompareRow]) -> dict[str, float]:
    return {r.arch: r.test_acc for r in rows}


def accuracy_claim(rows: list[CompareRow]) -> Verdict:
    """Claim 1: the paper's ranking of the means, and ResNet-18's lead over the baseline: on
    the paired interval when both are seed groups, on the two numbers otherwise."""
    claim = (
        "1. ResNet-18 beats the baseline by 5.8 points; "
        "ranking ResNet-18 > Mini-ResNet > no-skip > baseline"
    )
    acc = _acc(rows)
    order = ["resnet18", "mini-resnet", "resnet18-noskip", "baseline-cnn"]
    if not set(order) <= acc.keys():
        return Verdict(claim, "not measured", f"needs all four runs; have {sorted(acc)}")
    ranked = sorted(order, key=lambda a: -acc[a])
    by = {r.arch: r for r in rows}
    skip, base = by["resnet18"].seeds, by["baseline-cnn"].seeds
    if skip is not None and base is not None:
        paired = paired_difference(
            skip, base, first_label="resnet18", second_label="baseline-cnn"
        ).difference
        gap_text = f"ResNet-18 - baseline, paired by seed: {percent(paired, difference=True)}"
        lead = judge_interval(paired.interval, 0.0)
    else:
        gap_text = (
            f"ResNet-18 - baseline = {(acc['resnet18'] - acc['baseline-cnn']) * 100:+.1f} points"
        )
        lead = judge(acc["resnet18"] > acc["baseline-cnn"])
    evidence = (
        f"{gap_text} (paper +5.8); measured ranking: "
        + " > ".join(f"{a} {acc[a]:.1%}" for a in ranked)
        + "; rule: the paper's ranking and a lead above 0 (its interval, for seed groups)"
    )
    return Verdict(claim, both(judge(ranked == order), lead), evidence)


def convergence_claim(histories: dict[str, list[dict[str, Any]]]) -> Verdict:
    """Residual models converge faster: at each epoch both runs have, validation accuracy.
    Each residual network meets its plain twin; the Mini-ResNet meets the baseline CNN when
    its twin was not trained (budget quick trains none)."""
    claim = "2. residual models converge faster (validation accuracy per epoch)"
    pairs = [(p.residual, p.plain) for p in skip_pairs(list(histories))]
    if not any(residual == "mini-resnet" for residual, _ in pairs):
        pairs.append(("mini-resnet", "baseline-cnn"))
    parts, wins, total = [], 0, 0
    for residual, plain in pairs:
        if residual not in histories or plain not in histories:
            continue
        a = [r["val_acc"] for r in histories[residual]]
        b = [r["val_acc"] for r in histories[plain]]
        # Epochs both validated (a run without a validation split has no curve to compare).
        both_ran = [(x, y) for x, y in zip(a, b, strict=False) if x is not None and y is not None]
        if not both_ran:
            continue
        ahead = sum(x > y for x, y in both_ran)
        common = len(both_ran)
        wins += ahead
        total += common
        parts.append(f"{residual} ahead of {plain} in {ahead}/{common} epochs")
    if not total:
        return Verdict(claim, "not measured", "needs a residual run and its plain counterpart")
    verdict = judge(wins > total / 2)
    return Verdict(claim, verdict, "; ".join(parts) + "; rule: ahead in most shared epochs")


def gradient_claim(profiles: dict[str, GradientProfile]) -> Verdict:
    claim = (
        "3. gradient flow: the baseline's norms drop in early layers; ResNet-18's stay nearly "
        "uniform; removing skips collapses early-layer gradients"
    )
    need = {"baseline-cnn", "resnet18", "resnet18-noskip"}
    if not need <= profiles.keys():
        return Verdict(claim, "not measured", f"needs gradient profiles of {sorted(need)}")
    base, skip, plain = (profiles[a] for a in ("baseline-cnn", "resnet18", "resnet18-noskip"))
    uniform = 1 / UNIFORM_RATIO <= skip.first_last_rms_ratio <= UNIFORM_RATIO
    checks = {
        "baseline's first layer weaker than its last": base.first_last_rms_ratio < 1,
        f"ResNet-18 first/last RMS within {UNIFORM_RATIO:.0f}x (nearly uniform)": uniform,
        "no-skip first layer weaker than with skips": (
            plain.layers[0].rms_mean < skip.layers[0].rms_mean
        ),
    }
    evidence = (
        f"first/last RMS ratio: baseline {base.first_last_rms_ratio:.3g}, ResNet-18 "
        f"{skip.first_last_rms_ratio:.3g}, no-skip {plain.first_last_rms_ratio:.3g}; first-layer "
        f"RMS ResNet-18 {skip.layers[0].rms_mean:.3g} vs no-skip {plain.layers[0].rms_mean:.3g} "
        f"({skip.at} weights); "
        + "; ".join(f"{name}: {'yes' if ok else 'no'}" for name, ok in checks.items())
    )
    return Verdict(claim, judge(all(checks.values())), evidence)


def _skip_accuracy(rows: list[CompareRow]) -> tuple[Judgement, str]:
    """Claim 4's accuracy half: on the paired interval when both ResNet-18 rows are seed groups
    (three-way), on the one number of each run otherwise (two-way)."""
    by = {r.arch: r for r in rows}
    skip, plain = by["resnet18"], by["resnet18-noskip"]
    if skip.seeds is not None and plain.seeds is not None:
        paired = paired_difference(
            skip.seeds, plain.seeds, first_label="resnet18", second_label="resnet18-noskip"
        )
        text = (
            "accuracy with minus without skips, paired by seed: "
            f"{percent(paired.difference, difference=True)}"
        )
        return judge_interval(paired.difference.interval, 0.0), text
    text = f"accuracy {plain.test_acc:.1%} without skips vs {skip.test_acc:.1%} with"
    return judge(plain.test_acc < skip.test_acc), text


ABLATION = "4. ablation: removing skips from ResNet-18 lowers accuracy and gradient flow"
ABLATION_PAIR = {"resnet18", "resnet18-noskip"}


def ablation_claim(rows: list[CompareRow], profiles: dict[str, GradientProfile]) -> Verdict:
    """Claim 4 on trained weights: the accuracy half as ``_skip_accuracy`` judges it, the
    gradient half on the first weight layer's gradient RMS at the trained weights."""
    if not _acc(rows).keys() >= ABLATION_PAIR or not profiles.keys() >= ABLATION_PAIR:
        return Verdict(ABLATION, "not measured", "needs both ResNet-18 runs and their gradients")
    lower_acc, acc_text = _skip_accuracy(rows)
    skip_first = profiles["resnet18"].layers[0].rms_mean
    plain_first = profiles["resnet18-noskip"].layers[0].rms_mean
    evidence = f"{acc_text}; first-layer gradient RMS {plain_first:.3g} vs {skip_first:.3g}"
    return Verdict(ABLATION, both(lower_acc, judge(plain_first < skip_first)), evidence)


def epochs_claim(rows: list[CompareRow], histories: dict[str, list[dict[str, Any]]]) -> Verdict:
    """Claim 5(ii). With early stopping: the epochs each run took. With a fixed schedule (no run
    stopped early): the epoch at which ResNet-18 first reached the validation accuracy its
    no-skip twin ended with."""
    claim = "5(ii). faster convergence reduces the epochs needed"
    by = {r.arch: r for r in rows}
    if not {"resnet18", "resnet18-noskip"} <= by.keys():
        return Verdict(claim, "not measured", "needs both ResNet-18 runs")
    a, b = by["resnet18"], by["resnet18-noskip"]
    if a.stopped_early or b.stopped_early:
        verdict = judge(a.epochs < b.epochs)
        return Verdict(claim, verdict, f"ResNet-18 ran {a.epochs} epochs, no-skip {b.epochs}")
    skip = [r["val_acc"] for r in histories.get("resnet18", [])]
    plain = [r["val_acc"] for r in histories.get("resnet18-noskip", [])]
    if not skip or not plain or None in skip or None in plain:
        return Verdict(
            claim,
            "not measured",
            f"neither run stopped early ({a.epochs} and {b.epochs} epochs) and there is no "
            "validation accuracy per epoch to compare",
        )
    target = plain[-1]
    reached = next((i + 1 for i, acc in enumerate(skip) if acc >= target), None)
    evidence = (
        f"no-skip ended at {target:.1%} validation accuracy after {len(plain)} epochs; "
        + (
            f"ResNet-18 reached it at epoch {reached} of {len(skip)}"
            if reached
            else f"ResNet-18 never reached it ({max(skip):.1%} at best)"
        )
        + "; rule: reached in fewer epochs"
    )
    verdict = judge(reached is not None and reached < len(plain))
    return Verdict(claim, verdict, evidence)


def memory_claim(results: list[TrainStepResult]) -> Verdict:
    """Claim (i): the memory overhead of skip connections is modest."""
    claim = "5(i). the memory overhead of skip connections is modest"
    by_arch = {r.arch: r for r in results}
    if not {"resnet18", "resnet18-noskip"} <= by_arch.keys():
        return Verdict(claim, "not measured", "bench resnet18 and resnet18-noskip together")
    skip, plain = by_arch["resnet18"], by_arch["resnet18-noskip"]
    ratio = skip.memory_mb / plain.memory_mb
    verdict = judge(ratio <= MODEST_MEMORY)
    evidence = (
        f"resnet18 {skip.memory_mb:.1f} MiB vs resnet18-noskip {plain.memory_mb:.1f} MiB "
        f"= {ratio:.3f}x at batch {skip.batch} ({skip.memory_method}; modest means "
        f"<= {MODEST_MEMORY:.2f}x)"
    )
    return Verdict(claim, verdict, evidence)


def latency_claim(rows: list[BenchRow], provider: str, *, engine: str = "onnxruntime") -> Verdict:
    """Claim (iii): inference latency is similar across the four models at 32x32, judged on
    one runtime's fp32 rows (``engine``: onnxruntime or openvino)."""
    claim = "5(iii). inference latency is similar across the models for 32x32 inputs"
    paper = set(architecture_names(PAPER))
    fp32 = [r for r in rows if r.engine == engine and r.precision == "fp32"]
    by_batch: dict[int, dict[str, float]] = {}
    for r in fp32:
        if r.arch in paper:
            by_batch.setdefault(r.stats.batch, {})[r.arch] = r.stats.mean_ms
    complete = {b: v for b, v in by_batch.items() if set(v) == paper}
    if not complete:
        return Verdict(claim, "not measured", "bench all four architectures to judge it")
    parts, worst = [], 0.0
    for batch, means in sorted(complete.items()):
        slow, fast = max(means, key=means.get), min(means, key=means.get)  # type: ignore[arg-type]
        ratio = means[slow] / means[fast]
        worst = max(worst, ratio)
        parts.append(
            f"batch {batch}: {slow} {means[slow]:.2f} ms / {fast} {means[fast]:.2f} ms "
            f"= {ratio:.1f}x"
        )
    verdict = judge(worst <= SIMILAR_LATENCY)
    return Verdict(
        claim,
        verdict,
        f"{provider}: " + "; ".join(parts) + f" (similar means <= {SIMILAR_LATENCY:.0f}x)",
    )


# --- The claims that run records alone decide ---------------------------------------------
# Committed records (results/) keep no weights and no benchmarks, so of the paper's claims they
# decide those about accuracy and convergence: 1, 2, 4 (its gradient half from the gradient
# norms training recorded each epoch) and 5(ii), and beside them each residual/plain pair's
# paired comparison and where the Mini-ResNet's lead comes from. Claims 3, 5(i) and 5(iii) need
# trained weights or a benchmark: `rtk reproduce` judges them.

FLOW = "first-layer gradient norm"


def training_flow(run: Path) -> Estimate | None:
    """The first weight layer's gradient norm as training recorded it, averaged over the epochs;
    one value per seed (a single run: its one seed). None when a seed recorded none."""
    if SeedGroup.is_group(run):
        seeds, histories = SeedGroup.open(run).seeds, group_histories(run)
    else:
        rundir = RunDir.open(run)
        seeds, histories = [int(rundir.read_config()["settings"]["seed"])], [rundir.read_history()]
    values = []
    for rows in histories:
        norms = [r["grad_norms"] for r in rows if r.get("grad_norms")]
        if not norms:  # a run from before rtk recorded them
            return None
        first = next(iter(norms[0]))  # layers are recorded input to output
        values.append(statistics.fmean(float(n[first]) for n in norms))
    return estimate(FLOW, seeds, values)


def ablation_record_claim(rows: list[CompareRow], flows: dict[str, Estimate]) -> Verdict:
    """Claim 4 from records: the accuracy half as ``_skip_accuracy`` judges it, the gradient
    half on the first layer's gradient norm during training (paired interval for groups)."""
    if not _acc(rows).keys() >= ABLATION_PAIR or not flows.keys() >= ABLATION_PAIR:
        return Verdict(ABLATION, "not measured", "needs a run or seed group of both ResNet-18s")
    lower_acc, acc_text = _skip_accuracy(rows)
    skip, plain = flows["resnet18"], flows["resnet18-noskip"]
    if skip.n > 1 and plain.n > 1:
        paired = paired_difference(
            skip, plain, first_label="resnet18", second_label="resnet18-noskip"
        ).difference
        lower_flow = judge_interval(paired.interval, 0.0)
        spread = (
            f" (with minus without, paired by seed: {paired.mean:+.3g}, "
            f"{paired.confidence:.0%} CI [{paired.ci_low:.3g}, {paired.ci_high:.3g}])"
        )
    else:
        lower_flow, spread = judge(plain.mean < skip.mean), ""
    evidence = (
        f"{acc_text}; {FLOW} during training, mean over epochs and seeds: {plain.mean:.3g} "
        f"without skips vs {skip.mean:.3g} with{spread}"
    )
    return Verdict(ABLATION, both(lower_acc, lower_flow), evidence)


def _curve(run: Path) -> list[dict[str, Any]]:
    """A run's validation accuracy per epoch; a seed group's mean over its seeds."""
    if not SeedGroup.is_group(run):
        return read_history(run)
    band = curve_band(group_histories(run), "val_acc")
    return [{"epoch": p.epoch, "val_acc": p.mean} for p in band]


def record_claims(runs: list[Path]) -> list[Verdict]:
    """The claims these runs or seed groups decide, one run or group per Table I model (runs of
    other networks are left out, as ``rtk report compare`` leaves them out of Table I)."""
    by_arch: dict[str, tuple[CompareRow, Path]] = {}
    for run in runs:
        for row in compare_runs([run], skip_others=True, allow_none=True):
            if row.arch in by_arch:
                raise SourceError(
                    f"{by_arch[row.arch][1]} and {run} are both {row.arch}: the claims compare "
                    "one run or seed group per model; give one of them"
                )
            by_arch[row.arch] = row, run
    if not by_arch:
        raise SourceError(
            "no finished run or complete seed group of Table I's models among "
            f"{', '.join(map(str, runs)) or 'the folders given'}; train some"
        )
    rows = [row for row, _ in by_arch.values()]
    curves = {arch: _curve(run) for arch, (_, run) in by_arch.items()}
    flows = {arch: training_flow(by_arch[arch][1]) for arch in ABLATION_PAIR & by_arch.keys()}
    twins = [twin_claim(rows, pair) for pair in skip_pairs(list(by_arch))]
    return [
        accuracy_claim(rows),
        convergence_claim(curves),
        ablation_record_claim(rows, flows),
        epochs_claim(rows, curves),
        *twins,
        capacity_claim(rows),
    ]


def claims_markdown(verdicts: list[Verdict]) -> str:
    return markdown_table(
        ("claim", "verdict", "the numbers"),
        [[v.claim, f"**{v.verdict}**", v.evidence] for v in verdicts],
    )
