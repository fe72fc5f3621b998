"""The paper's Table I beside this machine's runs (single runs or seed groups), from the files
runs leave behind."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.seeds import Estimate, percent, summarize_group
from analysis.sources import SourceError
from toolkit.data.sources import CIFAR10_CLASSES
from toolkit.models import (
    CONTROL,
    PAPER,
    Architecture,
    Published,
    architecture_names,
    get_architecture,
)
from toolkit.training import RunDir, SeedGroup, trained_precision


@dataclass(frozen=True)
class CompareRow:
    model: str  # as Table I names it
    arch: str
    run: str
    recipe: str
    test_acc: float
    paper_test_acc: float | None  # None: a control, which the paper does not train
    train_min: float
    paper_train_min: float | None
    epochs: int
    max_epochs: int
    stopped_early: bool
    train_images: int
    params: int
    paper_params: int | None
    device: str
    precision: str  # what training computed in (the test pass is fp32 since rtk recorded it)
    # A seed group's row: test_acc is the mean over its seeds, train_min the mean per seed,
    # epochs the most any seed ran, and this its test accuracy estimate. None: a single run.
    seeds: Estimate | None = None


def read_history(run: Path) -> list[dict[str, Any]]:
    return RunDir.open(run).read_history()


TABLE_ONE_GROUPS = (PAPER, CONTROL)  # the paper's four, then rtk's controls (no paper figures)


def table_one_architecture(name: str) -> tuple[Architecture, Published | None]:
    """A Table I model with its paper figures: one of the paper's four, or one of rtk's
    controls (a paper model without skips, which the paper never trained: no figures)."""
    arch = get_architecture(name)
    if arch.group not in TABLE_ONE_GROUPS:
        names = [n for group in TABLE_ONE_GROUPS for n in architecture_names(group)]
        raise SourceError(
            f"Table I has no row for {arch.name}: it compares the paper's four models and "
            f"their controls ({', '.join(names)})"
        )
    return arch, arch.published


def runs_under(folder: Path) -> list[Path]:
    """Every finished run and every seed group whose seeds have all finished in ``folder``."""
    found = [p.parent for p in folder.glob(f"*/{RunDir.METRICS}")]
    for manifest in folder.glob(f"*/{SeedGroup.MANIFEST}"):
        group = SeedGroup.open(manifest.parent)
        if all(RunDir(group.run_path(seed)).finished for seed in group.seeds):
            found.append(group.path)
    return sorted(found)


def _group_reading(group: Path) -> tuple[dict[str, Any], dict[str, Any], Estimate]:
    """A seed group read as one run's metrics and config, and its accuracy over the seeds."""
    summary = summarize_group(group)
    runs = summary.runs
    metrics = {
        "arch": summary.arch,
        "test_acc": summary.accuracy.mean,
        "train_s": statistics.fmean(r.train_s for r in runs),
        "epochs_run": max(r.epochs_run for r in runs),
        "stopped_early": any(r.stopped_early for r in runs),
        "device": runs[0].device,
    }
    # Every seed has the group's settings and data (summarize_group checks the settings).
    return metrics, RunDir.open(runs[0].run).read_config(), summary.accuracy


def _on_cifar10(data: dict[str, Any]) -> bool:
    """Whether a run's recorded data is CIFAR-10 as the paper trains on it (a run from before
    rtk took other datasets recorded no input size: CIFAR-10's)."""
    return tuple(data.get("classes") or CIFAR10_CLASSES) == CIFAR10_CLASSES and data.get(
        "input_size", [3, 32, 32]
    ) == [3, 32, 32]


def compare_runs(
    runs: list[Path], *, skip_others: bool = False, allow_none: bool = False
) -> list[CompareRow]:
    """Table I's rows for these runs or seed groups; a run of a network outside the paper is an
    error, or left out with ``skip_others`` (when every run under a folder is compared). No row
    at all is an error unless ``allow_none``."""
    rows = []
    for run in runs:
        seeds: Estimate | None = None
        if SeedGroup.is_group(run):
            metrics, config, seeds = _group_reading(run)
        else:
            rundir = RunDir.open(run)
            metrics, config = rundir.read_metrics(), rundir.read_config()
        if skip_others and get_architecture(metrics["arch"]).group not in TABLE_ONE_GROUPS:
            continue
        arch, paper = table_one_architecture(metrics["arch"])
        data = config["data"]
        classes = data.get("classes") or list(CIFAR10_CLASSES)
        if not _on_cifar10(data):  # the paper's figures are CIFAR-10's: nothing to set beside
            paper = None
        model = arch.build(**arch.kwargs_for(num_classes=len(classes)))
        params = sum(p.numel() for p in model.parameters())
        # register() gives every paper model all three figures; a control has none.
        paper_acc = paper.test_acc if paper else None
        paper_min = paper.train_min if paper else None
        rows.append(
            CompareRow(
                model=paper.name if paper else arch.name,
                arch=arch.name,
                run=run.name,
                recipe=str(config["settings"].get("recipe", "?")),
                test_acc=float(metrics["test_acc"]),
                paper_test_acc=paper_acc,
                train_min=float(metrics["train_s"]) / 60,
                paper_train_min=paper_min,
                epochs=int(metrics["epochs_run"]),
                max_epochs=int(config["settings"]["epochs"]),
                stopped_early=bool(metrics["stopped_early"]),
                train_images=int(config["data"]["train_images"]),
                params=params,
                paper_params=paper.params if paper else None,
                device=str(metrics.get("device", "?")),
                precision=trained_precision(config),
                seeds=seeds,
            )
        )
    if not rows and not allow_none:
        raise SourceError(
            "no finished runs (with metrics.json) of Table I's models to compare; train some"
        )
    table_one = [n for group in TABLE_ONE_GROUPS for n in architecture_names(group)]
    order = {name: i for i, name in enumerate(table_one)}  # the paper's order, then controls
    return sorted(rows, key=lambda r: (order.get(r.arch, len(order)), r.run))


# Epochs and training images per run: a row reused from another budget says how it was trained.
TABLE_COLUMNS = (
    "model", "run", "recipe", "test acc", "paper", "difference", "train min", "paper min", "epochs",
    "train images", "params",
)  # fmt: skip


NO_FIGURE = "—"  # a control's paper columns: the paper does not train it


def table_cells(r: CompareRow) -> list[str]:
    early = ", early stop" if r.stopped_early else ""
    accuracy = f"{r.test_acc:.2%}" if r.seeds is None else percent(r.seeds)
    per_seed = "" if r.seeds is None else " per seed"
    paper = r.paper_test_acc
    return [
        r.model, r.run, r.recipe, accuracy, NO_FIGURE if paper is None else f"{paper:.1%}",
        NO_FIGURE if paper is None else f"{(r.test_acc - paper) * 100:+.1f} pt",
        f"{r.train_min:.1f}{per_seed} ({r.device}, {r.precision})",
        NO_FIGURE if r.paper_train_min is None else f"{r.paper_train_min:g}",
        f"{r.epochs} of {r.max_epochs}{early}", f"{r.train_images:,}", f"{r.params:,}",
    ]  # fmt: skip


def markdown_table(columns: tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def table_markdown(rows: list[CompareRow]) -> str:
    return markdown_table(TABLE_COLUMNS, [table_cells(r) for r in rows])


ABLATION_COLUMNS = ("run", "changed from the first row", "test acc", "flip TTA", "train min",
                    "epochs", "train images")  # fmt: skip


@dataclass(frozen=True)
class AblationRow:
    run: str
    changes: str  # the settings this run changes from the first run's, "key value, ..."
    test_acc: float
    test_acc_tta: float | None  # None: the run's recipe measured no flip TTA
    train_min: float
    device: str
    precision: str
    epochs: int
    max_epochs: int
    train_images: int


def _setting(value: Any) -> str:
    if isinstance(value, bool):  # yes/no, as rtk's help writes a flag's value
        return "yes" if value else "no"
    return "none" if value is None else str(value)


def _changes(settings: dict[str, Any], reference: dict[str, Any]) -> str:
    keys = sorted(
        k for k in settings.keys() | reference.keys() if settings.get(k) != reference.get(k)
    )
    return ", ".join(f"{k} {_setting(settings.get(k))}" for k in keys) or "(the reference)"


def ablation_rows(runs: list[Path]) -> list[AblationRow]:
    """Single runs against the first, in the order given (an ablation table): the settings each
    changes, its test accuracy and its cost."""
    if not runs:
        raise SourceError("an ablation table needs runs; none were given")
    if any(SeedGroup.is_group(run) for run in runs):
        raise SourceError("an ablation table compares single runs; give a seed's run folder")
    reads = [(run, RunDir.open(run)) for run in runs]
    reference = reads[0][1].read_config()["settings"]
    rows = []
    for run, rundir in reads:
        metrics, config = rundir.read_metrics(), rundir.read_config()
        rows.append(
            AblationRow(
                run=run.name,
                changes=_changes(config["settings"], reference),
                test_acc=float(metrics["test_acc"]),
                test_acc_tta=_optional_float(metrics.get("test_acc_tta")),
                train_min=float(metrics["train_s"]) / 60,
                device=str(metrics.get("device", "?")),
                precision=trained_precision(config),
                epochs=int(metrics["epochs_run"]),
                max_epochs=int(config["settings"]["epochs"]),
                train_images=int(config["data"]["train_images"]),
            )
        )
    return rows


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def ablation_cells(r: AblationRow) -> list[str]:
    tta = NO_FIGURE if r.test_acc_tta is None else f"{r.test_acc_tta:.2%}"
    return [
        r.run, r.changes, f"{r.test_acc:.2%}", tta,
        f"{r.train_min:.1f} ({r.device}, {r.precision})",
        f"{r.epochs} of {r.max_epochs}", f"{r.train_images:,}",
    ]  # fmt: skip


def ablation_markdown(rows: list[AblationRow]) -> str:
    return markdown_table(ABLATION_COLUMNS, [ablation_cells(r) for r in rows])
