"""``rtk train --tensorboard``: the event files a user opens in TensorBoard, read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from toolkit.cli import app


def _curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_tensorboard_curves_match_the_history_and_survive_a_resume(
    imagefolder: Path, tmp_path: Path
):
    runner = CliRunner()
    train = ["train", "baseline-cnn", "--val-size", "50", "--batch-size", "32", "--quiet",
             "--tensorboard", "--data", str(imagefolder)]  # fmt: skip
    first = runner.invoke(app, [*train, "--epochs", "1", "--out", str(tmp_path), "--name", "r"])
    assert first.exit_code == 0, first.output
    run = tmp_path / "r"
    resumed = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2", "--quiet",
                                  "--tensorboard", "--data", str(imagefolder)])  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    # Beside history.csv, where the curves are looked for.
    assert list(run.glob("events.out.tfevents.*")) and (run / "history.csv").is_file()
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    curves = _curves(run)
    layers = history[0]["grad_norms"]
    assert set(curves) == {
        "loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr",
        *(f"grad_norm/{layer}" for layer in layers),
    }  # fmt: skip
    columns = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/train": "train_acc",
               "accuracy/val": "val_acc", "lr": "lr"}  # fmt: skip
    for tag, column in columns.items():  # one point per epoch across both processes
        expected = [(row["epoch"], pytest.approx(row[column], rel=1e-6)) for row in history]
        assert curves[tag] == expected, tag
    for layer in layers:
        expected = [(row["epoch"], pytest.approx(row["grad_norms"][layer], rel=1e-6))
                    for row in history]  # fmt: skip
        assert curves[f"grad_norm/{layer}"] == expected, layer
