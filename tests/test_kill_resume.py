"""Every kill is resumable: a training run killed with SIGKILL at any moment (while writing
each of its files, before its first checkpoint, during the final test) ends, after one
``rtk train --resume`` (or, if it died before writing its settings, the same command again),
with exactly the history and test result of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from toolkit.cli.app import app
from toolkit.training.rundir import RunDir

TIMING = {"epoch_s", "images_per_s", "peak_mem_mb"}
WORKER = Path(__file__).with_name("kill_worker.py")
# 2 epochs: config.json, last.pt (epoch 0), history.jsonl, history.csv, then best.pt and
# last.pt per epoch, test_predictions.json and metrics.json: 10 atomic writes, 2 appends.
WRITES, APPENDS = 10, 2
KILL_POINTS = [
    *(("write", str(n), when) for n in range(1, WRITES + 1) for when in ("before", "after")),
    *(("append", str(n)) for n in range(1, APPENDS + 1)),
]
RANDOM_TIMES = 4  # seeded random moments on top of every write
# Every process of a case computes on one thread, so that sums are made in the same order
# whichever process (and whatever test ran before in it) trains each epoch.
THREADS = 1


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def _train_args(data: Path, out: Path) -> list[str]:
    # --no-amp: the killed worker sees the real CPU, the resume here conftest's one without bf16.
    return [
        "train", "baseline-cnn", "--recipe", "fast", "--no-amp", "--epochs", "2",
        "--batch-size", "32", "--val-size", "50", "--no-tta", "--device", "cpu", "--quiet",
        "--data", str(data), "--out", str(out), "--name", "run",
    ]  # fmt: skip


def _outcome(run: Path) -> tuple[list[dict], dict]:
    rundir = RunDir.open(run)
    history = [{k: v for k, v in row.items() if k not in TIMING} for row in rundir.read_history()]
    metrics = rundir.read_metrics()
    return history, {k: metrics[k] for k in ("test_acc", "test_loss", "best_epoch", "epochs_run")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_data) -> tuple[Path, tuple]:
    from tests.conftest import write_imagefolder

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        root = tmp_path_factory.mktemp("kill")
        data = write_imagefolder(root / "data", tiny_data)
        result = CliRunner().invoke(app, _train_args(data, root / "reference"))
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    return data, _outcome(root / "reference" / "run")


def _kill_points() -> list[tuple[str, ...]]:
    rng = random.Random(0)
    return KILL_POINTS + [("time", f"{rng.uniform(0.5, 4.0):.2f}") for _ in range(RANDOM_TIMES)]


@pytest.mark.parametrize("point", _kill_points(), ids=lambda p: "-".join(p))
def test_a_killed_run_resumes_to_the_uninterrupted_history(
    point: tuple[str, ...], reference: tuple[Path, tuple], tmp_path: Path
):
    data, expected = reference
    args = _train_args(data, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    killed = subprocess.run(
        [sys.executable, str(WORKER), *point, "--", *args],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )  # fmt: skip
    if point[0] != "time":  # a timed kill may come after the run finished
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / "run"
    if RunDir(run).finished:  # killed after its last write: nothing to resume
        assert _outcome(run) == expected
        return
    if (run / RunDir.CONFIG).is_file():
        again = ["train", "--resume", str(run), "--data", str(data), "--quiet"]
    else:  # killed before it wrote its settings: the same command starts it again
        again = args
    resumed = CliRunner().invoke(app, again)
    assert resumed.exit_code == 0, resumed.output
    assert _outcome(run) == expected
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    csv_rows = (run / RunDir.HISTORY_CSV).read_text().strip().splitlines()
    assert len(csv_rows) == 1 + len(expected[0])  # header + one row per epoch
    assert json.loads((run / RunDir.METRICS).read_text())["epochs_run"] == 2
