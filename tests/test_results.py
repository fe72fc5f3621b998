"""The committed run records under results/: every one reads back through rtk's own reports
(the tables quoting them are checked against them in tests/test_docs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.report import compare_runs, runs_under
from tests.test_cli import rtk
from toolkit.training import RunDir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
# The record sets the README and docs quote (committed; a set still training stays out).
FOLDERS = [
    RESULTS / "precision",
    RESULTS / "goals",
    RESULTS / "r18-proxy",
    RESULTS / "r18-proxy-2ep",
    RESULTS / "r18-full",
]


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_record_reads_back_through_the_reports(folder: Path):
    runs = runs_under(folder)
    assert runs, f"{folder} holds no finished run"
    for run in runs:
        rundir = RunDir.open(run)
        assert rundir.read_history(), run
    rows = compare_runs(runs, skip_others=True)
    shown = rtk("report", "compare", *map(str, runs), env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    for row in rows:
        assert f"{row.test_acc:.2%}" in shown.stdout
