"""The paper's Table I beside this machine's runs, from the files runs leave behind."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.metrics import SourceError
from toolkit.models import architecture_names, get_architecture


@dataclass(frozen=True)
class CompareRow:
    model: str  # as Table I names it
    arch: str
    run: str
    test_acc: float
    paper_test_acc: float
    train_min: float
    paper_train_min: float
    epochs: int
    stopped_early: bool
    params: int
    paper_params: int
    device: str


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SourceError(f"{path.parent} has no {path.name}; {what}") from exc
    except ValueError as exc:
        raise SourceError(f"{path} is not valid JSON ({exc})") from exc


def read_history(run: Path) -> list[dict[str, Any]]:
    path = run / "history.jsonl"
    if not path.is_file():
        raise SourceError(f"{run} has no history.jsonl; is it an rtk run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare_runs(runs: list[Path]) -> list[CompareRow]:
    if not runs:
        raise SourceError("no finished runs (with metrics.json) to compare; train some first")
    rows = []
    for run in runs:
        metrics = _read_json(run / "metrics.json", "the run has not finished")
        arch = get_architecture(metrics["arch"])
        params = sum(p.numel() for p in arch.build().parameters())
        rows.append(
            CompareRow(
                model=arch.paper_name,
                arch=arch.name,
                run=run.name,
                test_acc=float(metrics["test_acc"]),
                paper_test_acc=arch.paper_test_acc,
                train_min=float(metrics["train_s"]) / 60,
                paper_train_min=arch.paper_train_min,
                epochs=int(metrics["epochs_run"]),
                stopped_early=bool(metrics["stopped_early"]),
                params=params,
                paper_params=arch.paper_params,
                device=str(metrics.get("device", "?")),
            )
        )
    order = {name: i for i, name in enumerate(architecture_names())}  # the paper's order
    return sorted(rows, key=lambda r: (order.get(r.arch, len(order)), r.run))


def table_markdown(rows: list[CompareRow]) -> str:
    lines = [
        "| model | run | test acc | paper | difference | train min | paper min | epochs | params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        early = " (early stop)" if r.stopped_early else ""
        lines.append(
            f"| {r.model} | {r.run} | {r.test_acc:.2%} | {r.paper_test_acc:.1%} | "
            f"{(r.test_acc - r.paper_test_acc) * 100:+.1f} pt | {r.train_min:.1f} ({r.device}) | "
            f"{r.paper_train_min:g} | {r.epochs}{early} | {r.params:,} |"
        )
    return "\n".join(lines) + "\n"
