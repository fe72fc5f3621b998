from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from analysis.depth import (
    DEPTH_BUDGETS,
    DepthRun,
    EpochErrors,
    degradation_claim,
    depth_study,
    study_configs,
)
from tests.conftest import CLASSES
from tests.test_training import _InterruptAt
from toolkit.cli.app import app
from toolkit.data import load_dataset
from toolkit.training import (
    TrainingInterrupted,
    initial_checkpoint,
    make_config,
    save_checkpoint,
)


def rtk(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def test_quick_budget_trains_both_kinds_per_depth_reports_and_reuses(
    imagefolder: Path, tmp_path: Path
):
    # The quick budget as `rtk study depth` runs it, on the tiny real dataset: its validation
    # split is the only setting that must shrink to fit 200 images.
    args = ["study", "depth", "--depth", "32", "--depth", "20", "--data", str(imagefolder),
            "--out", str(tmp_path), "--val-size", "40", "--quiet", "--json"]  # fmt: skip
    result = rtk(*args)
    assert result.exit_code == 0, result.stderr
    study = json.loads(result.stdout)
    assert study["budget"] == "quick" and study["depths"] == [20, 32]
    runs = {r["arch"]: r for r in study["runs"]}
    assert list(runs) == ["plain20", "resnet20", "plain32", "resnet32"]
    assert {(r["depth"], r["skip"]) for r in runs.values()} == {
        (20, False), (20, True), (32, False), (32, True),
    }  # fmt: skip
    assert runs["resnet20"]["params"] == 269_722
    epochs = DEPTH_BUDGETS["quick"].overrides["epochs"]
    for run in runs.values():
        assert [e["epoch"] for e in run["curve"]] == list(range(1, epochs + 1))
        assert run["train_error"] == run["curve"][-1]["train_error"]
        assert 0 <= run["test_error"] <= 1 and run["val_error"] is not None
        settings = json.loads((Path(run["run"]) / "config.json").read_text())["settings"]
        assert (settings["dropout"], settings["zero_init_residual"]) == (0.0, False)
        assert settings["recipe"] == "fast" and settings["val_size"] == 40
    assert study["verdict"]["verdict"] in ("supported", "not supported")
    report = Path(study["report"]).read_text()
    assert "Budget `quick`" in report and "overridden here: val_size 40" in report
    # The terminal's notice states the same: not the budget's 1,000 validation images alone.
    assert "overridden here: val_size 40" in result.stderr
    for arch in runs:
        assert f"| {arch} |" in report
    assert study["verdict"]["evidence"] in report
    with Image.open(study["figure"]) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]
    # A rerun trains nothing: every run is reused, its checkpoints untouched.
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/*.pt")}
    again = rtk(*args[:-1])  # the table instead of JSON
    assert again.exit_code == 0, again.stderr
    assert again.stderr.count(": reused (") == 4
    assert "Degradation" in again.stdout and "plain32" in again.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_ctrl_c_names_the_command_that_resumes(imagefolder: Path, tmp_path: Path):
    rerun = f"rtk study depth --budget quick --out {tmp_path}"
    with pytest.raises(TrainingInterrupted, match=rerun):
        depth_study(
            budget=DEPTH_BUDGETS["quick"], depths=[20], out=tmp_path,
            dataset=load_dataset(imagefolder), overrides={"val_size": 40}, observer=_InterruptAt(2),
        )  # fmt: skip
    assert (tmp_path / "runs" / "plain20" / "last.pt").is_file()


def test_ctrl_c_prints_the_exact_command_and_following_it_finishes_the_same_study(
    imagefolder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The printed command dropped --depth, --epochs, --train-subset, --val-size and --data:
    following it mixed networks of two schedules in one study."""
    import re
    import shlex

    monkeypatch.setattr("toolkit.cli.train.RichObserver", lambda *a, **k: _InterruptAt(2))
    given = ["--depth", "20", "--epochs", "2", "--train-subset", "120", "--val-size", "40",
             "--data", str(imagefolder), "--out", str(tmp_path / "study x")]  # fmt: skip
    result = rtk("study", "depth", *given)
    assert result.exit_code == 130, result.output
    said = re.search(r"rerun `(.+)` to continue", " ".join(result.stderr.split()))
    assert said, result.stderr
    command = shlex.split(said[1])
    assert command[:3] == ["rtk", "study", "depth"]
    pairs = {(given[i], given[i + 1]) for i in range(0, len(given), 2)}
    assert pairs <= {(command[i], command[i + 1]) for i in range(3, len(command) - 1)}
    monkeypatch.undo()
    # What a kill -9 while writing the figure and the report would have left behind:
    out = tmp_path / "study x"
    (out / "figures").mkdir(exist_ok=True)
    leftovers = [out / "figures" / ".depth.png.k2j4x9q1.tmp", out / ".DEPTH.md.x9q1abcd.tmp"]
    for leftover in leftovers:
        leftover.write_text("half a file")
    done = rtk(*command[1:], "--quiet", "--json")
    assert done.exit_code == 0, done.output
    assert not any(p.exists() for p in leftovers)
    runs = json.loads(done.stdout)["runs"]
    assert [len(r["curve"]) for r in runs] == [2, 2]  # both networks under the given schedule
    for run in runs:
        settings = json.loads((Path(run["run"]) / "config.json").read_text())["settings"]
        assert (settings["train_subset"], settings["val_size"]) == (120, 40)


@pytest.mark.parametrize("found", ["config", "checkpoint", "files", "link"])
def test_anything_but_its_own_run_in_a_studys_place_is_refused(
    imagefolder: Path, tmp_path: Path, found: str
):
    """A foreign run found in OUT/runs/plain20 was tabled as plain20 (a killed one, without
    config.json, too), a stray file there met "pick another --name" (the study has none), and
    a symbolic link there took the run outside --out."""
    place = tmp_path / "runs" / "plain20"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if found == "link":
        place.parent.mkdir()
        place.symlink_to(elsewhere, target_is_directory=True)
    else:
        place.mkdir(parents=True)
    if found == "config":
        (place / "config.json").write_text('{"settings": {"arch": "resnet56"}}')
    elif found == "checkpoint":  # a run of another network killed before config.json
        payload = initial_checkpoint("baseline-cnn", list(CLASSES))
        save_checkpoint(
            place / "last.pt", {**payload, "config": make_config("baseline-cnn").to_dict()}
        )
    elif found == "files":
        (place / "notes.txt").write_text("mine\n")
    before = sorted(p.name for p in place.iterdir())
    result = rtk("study", "depth", "--depth", "20", "--data", str(imagefolder), "--out",
                 str(tmp_path), "--val-size", "40", "--quiet")  # fmt: skip
    assert result.exit_code == 2, result.output
    said = {
        "config": "holds a run of resnet56, not plain20; move it away",
        "checkpoint": "holds a run of baseline-cnn, not plain20; move it away",
        "files": "holds files but no rtk run; move it away",
        "link": "is a symbolic link; rtk writes a run only inside its own output folder",
    }[found]
    assert f"{place} {said}" in " ".join(result.stderr.split())
    assert sorted(p.name for p in place.iterdir()) == before
    assert not any(elsewhere.iterdir())


def test_budgets_share_one_recipe_without_dropout_or_zero_init():
    quick = study_configs(DEPTH_BUDGETS["quick"], [56, 20])
    full = study_configs(DEPTH_BUDGETS["full"], [20, 32, 56])
    assert list(quick) == ["plain20", "resnet20", "plain56", "resnet56"]
    for configs in (quick, full):
        settings = [{k: v for k, v in c.to_dict().items() if k != "arch"} for c in configs.values()]
        assert all(s == settings[0] for s in settings)  # plain and residual on equal terms
        assert settings[0]["dropout"] == 0.0 and not settings[0]["zero_init_residual"]
    assert quick["resnet20"].epochs < full["resnet20"].epochs
    assert quick["resnet20"].train_subset < full["resnet20"].train_subset


def test_unknown_depth_is_one_line_before_any_work(tmp_path: Path):
    result = rtk("study", "depth", "--depth", "21", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: no depth 21 in He et al.'s CIFAR family; choose from 20, 32, 44, 56, 110"
    ]
    assert not (tmp_path / "out").exists()


def _run(depth: int, skip: bool, train_error: float) -> DepthRun:
    curve = [EpochErrors(1, train_error, None)]
    arch = f"{'resnet' if skip else 'plain'}{depth}"
    return DepthRun(arch, depth, skip, arch, 0, 1, train_error, None, 0.5, 1.0, curve)


@pytest.mark.parametrize(
    ("plain", "residual", "verdict"),
    [
        ((0.10, 0.12, 0.15), (0.10, 0.08, 0.07), "supported"),  # He et al.'s Fig. 6
        ((0.10, 0.12, 0.09), (0.10, 0.08, 0.07), "not supported"),  # plain improves with depth
        ((0.10, 0.12, 0.15), (0.10, 0.12, 0.11), "not supported"),  # residual degrades too
    ],
)
def test_degradation_verdict_compares_the_deepest_with_the_shallowest(plain, residual, verdict):
    runs = [_run(d, False, e) for d, e in zip((20, 32, 56), plain, strict=True)]
    runs += [_run(d, True, e) for d, e in zip((20, 32, 56), residual, strict=True)]
    judged = degradation_claim(runs)
    assert judged.verdict == verdict
    trend = f"plain 20: {plain[0]:.2%} -> 32: {plain[1]:.2%} -> 56: {plain[2]:.2%}"
    assert trend in judged.evidence
    assert degradation_claim(runs[:1] + runs[3:4]).verdict == "not measured"
