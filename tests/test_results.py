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
    RESULTS / "cifar-unchanged",
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


def test_the_seed_groups_still_training_are_the_fast_budgets_and_resume():
    """results/fast-seeds holds the seed groups issue 27 trains a seed at a time, on whatever
    machine a session gets: `rtk train --resume` on a copy reuses the finished seeds (records
    only) and trains the rest, under the fast budget's settings for the model."""
    from analysis.reproduce import BUDGETS, budget_config
    from toolkit.config import differing_settings
    from toolkit.training import SeedGroup

    groups = sorted((RESULTS / "fast-seeds").iterdir())
    assert groups
    for path in groups:
        group = SeedGroup.open(path)
        wanted = budget_config(group.arch, BUDGETS["fast"])
        assert group.config(0).to_dict() == {**wanted.to_dict(), "seed": 0}, path
        finished = [s for s in group.seeds if RunDir(group.run_path(s)).finished]
        assert finished, path
        for seed in finished:
            settings = RunDir.open(group.run_path(seed)).read_config()["settings"]
            budget = {**wanted.to_dict(), "seed": seed}
            assert not differing_settings(settings, budget, where=(path, "budget")), (path, seed)
