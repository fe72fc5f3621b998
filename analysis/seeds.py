"""Statistics over seeds: what a seed group's runs say once seed-to-seed noise is counted.

Per metric: the mean over the seeds, the sample standard deviation (n - 1), n, and the 95%
confidence interval for the mean from Student's t with n - 1 degrees of freedom (few seeds:
the normal 1.96 would claim too much). Two groups trained under the same seeds are compared
seed by seed: a seed fixes the validation split, the data order and the augmentation of both
runs, so the paired difference carries less noise than two means apart. With one seed there is
no spread and no interval: those fields are None, never a guess.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from analysis.sources import SourceError
from toolkit.config import differing_settings
from toolkit.training import RunDir, SeedGroup, trained_precision

CONFIDENCE = 0.95
# The test figures a group is summarised by: plain accuracy always, flip-TTA accuracy when
# every seed measured it (the fast recipe).
METRICS = ("test_acc", "test_acc_tta")


@dataclass(frozen=True)
class Estimate:
    """A metric over seeds: its mean, spread and the mean's confidence interval."""

    metric: str
    seeds: list[int]
    values: list[float]  # one per seed, in the order of ``seeds``
    n: int
    mean: float
    std: float | None  # sample standard deviation; None for one seed
    ci_low: float | None  # the mean's Student-t interval; None for one seed
    ci_high: float | None
    confidence: float

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.ci_low is None or self.ci_high is None:
            return None
        return self.ci_low, self.ci_high


@dataclass(frozen=True)
class SeedRun:
    """One seed's run, as its metrics.json tells it."""

    seed: int
    run: Path
    test_acc: float
    test_acc_tta: float | None
    test_loss: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    train_s: float
    device: str


@dataclass(frozen=True)
class GroupSummary:
    group: Path
    arch: str
    recipe: str
    seeds: list[int]
    runs: list[SeedRun]
    estimates: list[Estimate]  # test_acc first, then test_acc_tta where every seed has it

    @property
    def accuracy(self) -> Estimate:
        """Test accuracy over the seeds (every seed measures it)."""
        return self.estimates[0]

    def estimate(self, metric: str) -> Estimate | None:
        return next((e for e in self.estimates if e.metric == metric), None)


@dataclass(frozen=True)
class PairedDifference:
    first: str
    second: str
    difference: Estimate  # of the metric it names: first minus second, seed by seed


def estimate(
    metric: str, seeds: list[int], values: list[float], *, confidence: float = CONFIDENCE
) -> Estimate:
    """Mean, sample standard deviation and the mean's Student-t interval of ``values``."""
    if not values or len(values) != len(seeds):
        raise ValueError(f"{metric}: needs one value per seed, got {len(values)} for {seeds}")
    n, mean = len(values), statistics.fmean(values)
    std = low = high = None
    if n > 1:
        std = statistics.stdev(values)
        half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    return Estimate(
        metric=metric, seeds=list(seeds), values=list(values), n=n, mean=mean, std=std,
        ci_low=low, ci_high=high, confidence=confidence,
    )  # fmt: skip


def paired_difference(
    first: Estimate, second: Estimate, *, first_label: str, second_label: str
) -> PairedDifference:
    """``first - second`` per seed, summarised as an ``Estimate``; both must hold the same
    seeds (a seed present in one group only has nothing to be paired with)."""
    if first.metric != second.metric:
        raise SourceError(f"cannot pair {first.metric} with {second.metric}")
    if sorted(first.seeds) != sorted(second.seeds):
        raise SourceError(
            f"a paired comparison needs the same seeds: {first_label} has "
            f"{_seed_list(first.seeds)}, {second_label} has {_seed_list(second.seeds)}; "
            "train the missing seeds with --seeds"
        )
    by_seed = dict(zip(second.seeds, second.values, strict=True))
    differences = [a - by_seed[seed] for seed, a in zip(first.seeds, first.values, strict=True)]
    return PairedDifference(
        first=first_label,
        second=second_label,
        difference=estimate(first.metric, first.seeds, differences, confidence=first.confidence),
    )


def compare_groups(first: GroupSummary, second: GroupSummary) -> list[PairedDifference]:
    """The paired difference of every metric both groups measured."""
    pairs = []
    for mine in first.estimates:
        theirs = second.estimate(mine.metric)
        if theirs is not None:
            pairs.append(
                paired_difference(
                    mine, theirs, first_label=first.group.name, second_label=second.group.name
                )
            )
    return pairs


def _seed_config(group: SeedGroup, seed: int, rundir: RunDir) -> dict[str, Any]:
    """The config.json of ``group``'s seed ``seed``, checked to be that seed's run under the
    group's settings: a folder swapped, copied or linked in from another seed (or trained
    otherwise) would pass its numbers off as this seed's."""
    path = group.path
    config = rundir.read_config()
    where = rundir.path / RunDir.CONFIG
    wanted = {**group.settings, "seed": seed}  # the group's settings, and this seed
    differ = differing_settings(config["settings"], wanted, where=(where, group.manifest))
    if "seed" in differ:
        raise SourceError(
            f"{rundir.path} holds a run of seed {differ['seed'][0]}, not seed {seed}: its "
            "folder was moved, copied or linked from another seed; retrain it "
            f"(`rtk train --resume {path}` after removing {rundir.path})"
        )
    if apart := sorted(differ):
        raise SourceError(
            f"{rundir.path} was trained under other settings than its group's "
            f"({', '.join(apart)} differ), so its seeds do not measure one recipe"
        )
    return config


def summarize_group(path: Path) -> GroupSummary:
    """Every seed's test result and each metric's estimate over the seeds. A seed that has not
    finished, or that was trained under other settings than the group's, is an error: either
    would make the spread mean something else."""
    group = SeedGroup.open(path)
    precisions: dict[int, str] = {}
    runs = []
    for seed in group.seeds:
        rundir = RunDir(group.run_path(seed))
        if not rundir.finished:  # absent, or still training
            raise SourceError(
                f"seed {seed} of {path} has not finished; `rtk train --resume {path}` trains it"
            )
        config = _seed_config(group, seed, rundir)
        precisions[seed] = trained_precision(config)
        if len(set(precisions.values())) > 1:  # "auto" resolves per host: one group, one kind
            said = ", ".join(f"seed {s} {p}" for s, p in precisions.items())
            raise SourceError(
                f"the seeds of {path} trained in different precisions ({said}), so their spread "
                "mixes precision with seed; retrain the odd ones on a host like the others'"
            )
        metrics = rundir.read_metrics()
        tta = metrics["test_acc_tta"]
        runs.append(
            SeedRun(
                seed=seed,
                run=rundir.path,
                test_acc=float(metrics["test_acc"]),
                test_acc_tta=None if tta is None else float(tta),
                test_loss=float(metrics["test_loss"]),
                best_epoch=int(metrics["best_epoch"]),
                epochs_run=int(metrics["epochs_run"]),
                stopped_early=bool(metrics["stopped_early"]),
                train_s=float(metrics["train_s"]),
                device=str(metrics["device"]),
            )
        )
    seeds = [r.seed for r in runs]
    estimates = []
    for metric in METRICS:
        values = [getattr(r, metric) for r in runs]
        if None not in values:
            estimates.append(estimate(metric, seeds, values))
    return GroupSummary(
        group=path,
        arch=group.arch,
        recipe=str(group.settings.get("recipe", "?")),
        seeds=seeds,
        runs=runs,
        estimates=estimates,
    )


def group_histories(path: Path) -> list[list[dict[str, Any]]]:
    """Each seed's per-epoch history, in the group's seed order, each folder checked to hold
    its seed's run under the group's settings."""
    group = SeedGroup.open(path)
    histories = []
    for seed in group.seeds:
        rundir = RunDir.open(group.run_path(seed))
        _seed_config(group, seed, rundir)
        histories.append(rundir.read_history())
    return histories


@dataclass(frozen=True)
class BandPoint:
    epoch: int
    mean: float
    low: float  # the lowest seed's value
    high: float  # the highest seed's value


def curve_band(histories: list[list[dict[str, Any]]], key: str) -> list[BandPoint]:
    """Per epoch, the mean of ``key`` over the seeds and its min-max range, for the epochs
    every seed ran (a seed that stopped early would otherwise change what the mean averages)."""
    common = min(len(rows) for rows in histories)
    points = []
    for index in range(common):
        values = [rows[index][key] for rows in histories]
        if None not in values:
            epoch = int(histories[0][index]["epoch"])
            points.append(BandPoint(epoch, statistics.fmean(values), min(values), max(values)))
    return points


def percent(e: Estimate, *, difference: bool = False) -> str:
    """An accuracy estimate in words: ``82.00% ± 2.00 pt std, 95% CI [77.03%, 86.97%], n = 3``
    (a ``difference`` in signed points); one seed: ``82.00%, n = 1 (no interval)``."""
    sign, unit = ("+", " pt") if difference else ("", "%")
    head = f"{e.mean * 100:{sign}.2f}{unit}"
    if e.std is None or e.ci_low is None or e.ci_high is None:
        return f"{head}, n = {e.n} (no interval)"
    low, high = f"{e.ci_low * 100:{sign}.2f}", f"{e.ci_high * 100:{sign}.2f}"
    interval = f"[{low}, {high}] pt" if difference else f"[{low}%, {high}%]"
    return f"{head} ± {e.std * 100:.2f} pt std, {e.confidence:.0%} CI {interval}, n = {e.n}"


def _seed_list(seeds: list[int]) -> str:
    return ",".join(map(str, seeds))
