"""The paper's claims (paper-spec.md), each judged from numbers measured here.

Every verdict is "supported", "not supported" or "not measured", with the numbers behind it
and the rule that turned them into the verdict; a verdict judged on a confidence interval over
seeds may also be "inconclusive" (the interval holds the threshold, or one seed gives none).
Nothing here assumes the paper is right.
"""

from __future__ import annotations

from typing import Any

from analysis.gradients import GradientProfile
from analysis.latency import BenchRow
from analysis.report import CompareRow
from analysis.seeds import paired_difference, percent
from analysis.train_bench import TrainStepResult
from analysis.verdicts import Judgement, Verdict, judge, judge_interval
from toolkit.models import PAPER, architecture_names

UNIFORM_RATIO = 10.0  # "nearly uniform" gradients: first/last layer RMS within 10x either way
SIMILAR_LATENCY = 2.0  # claim 5(iii) holds if the slowest model is within 2x of the fastest
MODEST_MEMORY = 1.10  # claim 5(i) holds if skips add at most 10% training activation memory


def _acc(rows: list[CompareRow]) -> dict[str, float]:
    return {r.arch: r.test_acc for r in rows}


def accuracy_claim(rows: list[CompareRow]) -> Verdict:
    claim = (
        "1. ResNet-18 beats the baseline by 5.8 points; "
        "ranking ResNet-18 > Mini-ResNet > no-skip > baseline"
    )
    acc = _acc(rows)
    order = ["resnet18", "mini-resnet", "resnet18-noskip", "baseline-cnn"]
    if not set(order) <= acc.keys():
        return Verdict(claim, "not measured", f"needs all four runs; have {sorted(acc)}")
    gap = (acc["resnet18"] - acc["baseline-cnn"]) * 100
    ranked = sorted(order, key=lambda a: -acc[a])
    holds = ranked == order and gap > 0
    evidence = (
        f"ResNet-18 - baseline = {gap:+.1f} points (paper +5.8); measured ranking: "
        + " > ".join(f"{a} {acc[a]:.1%}" for a in ranked)
        + "; rule: the paper's ranking and a positive gap"
    )
    return Verdict(claim, judge(holds), evidence)


def convergence_claim(histories: dict[str, list[dict[str, Any]]]) -> Verdict:
    """Residual models converge faster: at each epoch both runs have, validation accuracy."""
    claim = "2. residual models converge faster (validation accuracy per epoch)"
    pairs = [("resnet18", "resnet18-noskip"), ("mini-resnet", "baseline-cnn")]
    parts, wins, total = [], 0, 0
    for residual, plain in pairs:
        if residual not in histories or plain not in histories:
            continue
        a = [r["val_acc"] for r in histories[residual]]
        b = [r["val_acc"] for r in histories[plain]]
        common = min(len(a), len(b))
        ahead = sum(x > y for x, y in zip(a[:common], b[:common], strict=True))
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


def ablation_claim(rows: list[CompareRow], profiles: dict[str, GradientProfile]) -> Verdict:
    """Claim 4. When both ResNet-18 rows are seed groups, the accuracy part is judged on the
    interval of their paired difference (three-way); a single run's on its one number."""
    claim = "4. ablation: removing skips from ResNet-18 lowers accuracy and gradient flow"
    acc = _acc(rows)
    if (
        not {"resnet18", "resnet18-noskip"} <= acc.keys()
        or not {
            "resnet18",
            "resnet18-noskip",
        }
        <= profiles.keys()
    ):
        return Verdict(claim, "not measured", "needs both ResNet-18 runs and their gradients")
    skip_first = profiles["resnet18"].layers[0].rms_mean
    plain_first = profiles["resnet18-noskip"].layers[0].rms_mean
    by = {r.arch: r for r in rows}
    skip_seeds, plain_seeds = by["resnet18"].seeds, by["resnet18-noskip"].seeds
    if skip_seeds is not None and plain_seeds is not None:
        # Two seed groups: the accuracy part is judged on the paired difference's interval.
        paired = paired_difference(
            skip_seeds, plain_seeds, first_label="resnet18", second_label="resnet18-noskip"
        )
        lower_acc = judge_interval(paired.difference.interval, 0.0)
        acc_text = (
            f"accuracy with minus without skips, paired by seed: "
            f"{percent(paired.difference, difference=True)}"
        )
    else:
        lower_acc = judge(acc["resnet18-noskip"] < acc["resnet18"])
        acc_text = (
            f"accuracy {acc['resnet18-noskip']:.1%} without skips vs {acc['resnet18']:.1%} with"
        )
    lower_flow = plain_first < skip_first
    evidence = f"{acc_text}; first-layer gradient RMS {plain_first:.3g} vs {skip_first:.3g}"
    # Both parts must hold: a failed part fails the claim, an open accuracy part leaves it open.
    verdict: Judgement = lower_acc if lower_flow else "not supported"
    return Verdict(claim, verdict, evidence)


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


def latency_claim(rows: list[BenchRow], provider: str) -> Verdict:
    """Claim (iii): inference latency is similar across the four models at 32x32."""
    claim = "5(iii). inference latency is similar across the models for 32x32 inputs"
    paper = set(architecture_names(PAPER))
    ort_rows = [r for r in rows if r.engine == "onnxruntime" and r.precision == "fp32"]
    by_batch: dict[int, dict[str, float]] = {}
    for r in ort_rows:
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
