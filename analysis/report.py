"""The paper's Table I beside this machine's runs, from the files runs leave behind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.sources import SourceError
from toolkit.models import PAPER, Architecture, Published, architecture_names, get_architecture
from toolkit.training.rundir import RunDir


@dataclass(frozen=True)
class CompareRow:
    model: str  # as Table I names it
    arch: str
    run: str
    recipe: str
    test_acc: float
    paper_test_acc: float
    train_min: float
    paper_train_min: float
    epochs: int
    max_epochs: int
    stopped_early: bool
    train_images: int
    params: int
    paper_params: int
    device: str


def read_history(run: Path) -> list[dict[str, Any]]:
    return RunDir.open(run).read_history()


def table_one_architecture(name: str) -> tuple[Architecture, Published]:
    """One of the paper's four models with its Table I figures; Table I has no other rows."""
    arch = get_architecture(name)
    if arch.group != PAPER or arch.published is None:
        raise SourceError(
            f"Table I has no row for {arch.name}: it compares the paper's four models "
            f"({', '.join(architecture_names(PAPER))})"
        )
    return arch, arch.published


def compare_runs(runs: list[Path], *, skip_others: bool = False) -> list[CompareRow]:
    """Table I's rows for these runs; a run of a network outside the paper is an error, or
    left out with ``skip_others`` (when every run under a folder is compared)."""
    rows = []
    for run in runs:
        rundir = RunDir.open(run)
        metrics, config = rundir.read_metrics(), rundir.read_config()
        if skip_others and get_architecture(metrics["arch"]).group != PAPER:
            continue
        arch, paper = table_one_architecture(metrics["arch"])
        params = sum(p.numel() for p in arch.build().parameters())
        rows.append(
            CompareRow(
                model=paper.name,
                arch=arch.name,
                run=run.name,
                recipe=str(config["settings"].get("recipe", "?")),
                test_acc=float(metrics["test_acc"]),
                paper_test_acc=float(paper.test_acc or 0),  # register() requires it
                train_min=float(metrics["train_s"]) / 60,
                paper_train_min=float(paper.train_min or 0),
                epochs=int(metrics["epochs_run"]),
                max_epochs=int(config["settings"]["epochs"]),
                stopped_early=bool(metrics["stopped_early"]),
                train_images=int(config["data"]["train_images"]),
                params=params,
                paper_params=int(paper.params or 0),
                device=str(metrics.get("device", "?")),
            )
        )
    if not rows:
        raise SourceError(
            "no finished runs (with metrics.json) of the paper's models to compare; train some"
        )
    order = {name: i for i, name in enumerate(architecture_names(PAPER))}  # the paper's order
    return sorted(rows, key=lambda r: (order.get(r.arch, len(order)), r.run))


# Epochs and training images per run: a row reused from another budget says how it was trained.
TABLE_COLUMNS = (
    "model", "run", "recipe", "test acc", "paper", "difference", "train min", "paper min", "epochs",
    "train images", "params",
)  # fmt: skip


def table_cells(r: CompareRow) -> list[str]:
    early = ", early stop" if r.stopped_early else ""
    return [
        r.model, r.run, r.recipe, f"{r.test_acc:.2%}", f"{r.paper_test_acc:.1%}",
        f"{(r.test_acc - r.paper_test_acc) * 100:+.1f} pt", f"{r.train_min:.1f} ({r.device})",
        f"{r.paper_train_min:g}", f"{r.epochs} of {r.max_epochs}{early}", f"{r.train_images:,}",
        f"{r.params:,}",
    ]  # fmt: skip


def table_markdown(rows: list[CompareRow]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"
