from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import default_sigint
from toolkit.data import Dataset, load_dataset
from toolkit.training import (
    CheckpointError,
    NonFiniteLossError,
    Trainer,
    TrainingInterrupted,
    load_checkpoint,
    make_config,
    model_from_checkpoint,
    resume_config,
)

TIMING = {"epoch_s", "images_per_s", "peak_mem_mb"}
QUICK = {"val_size": 50, "batch_size": 32, "device": "cpu"}


@pytest.fixture
def dataset(imagefolder: Path) -> Dataset:
    return load_dataset(imagefolder)


def _history(result) -> list[dict]:
    return [
        {k: v for k, v in dataclasses.asdict(r).items() if k not in TIMING} for r in result.history
    ]


def _rtk(*args: str, **kwargs) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("rtk")), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)


class _InterruptAt:
    """An observer that presses Ctrl-C in the middle of a given epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.current = epoch, 0

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        self.current = epoch

    def batch_progress(self, done: int, loss: float, acc: float, images_per_s: float) -> None:
        if self.current == self.epoch:
            raise KeyboardInterrupt

    def epoch_end(self, record) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_training_lowers_the_loss_and_writes_the_run_directory(dataset: Dataset, tmp_path: Path):
    config = make_config("baseline-cnn", epochs=3, **QUICK)
    result = Trainer(config, dataset, tmp_path / "run").run()
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < losses[0]
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {
        "config.json", "history.csv", "history.jsonl", "best.pt", "last.pt", "metrics.json",
        "test_predictions.json",
    }  # fmt: skip
    saved = json.loads((run / "config.json").read_text())
    assert saved["settings"]["arch"] == "baseline-cnn" and saved["settings"]["seed"] == 0
    assert saved["versions"]["torch"] == torch.__version__ and saved["device"] == "cpu"
    assert saved["data"]["val_images"] == 50
    assert saved["allocator"].startswith(("glibc malloc, mmap", "the platform's", "a preloaded"))
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert set(rows[0]["grad_norms"]) == {
        "blocks.0.conv",
        "blocks.1.conv",
        "blocks.2.conv",
        "blocks.3.conv",
        "fc",
    }
    assert all(v > 0 for v in rows[0]["grad_norms"].values())
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
    assert "grad_norm:fc" in header and len((run / "history.csv").read_text().splitlines()) == 4
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_acc"] == result.test_acc and metrics["test_images"] == 50
    assert metrics["best_epoch"] == result.best_epoch


def test_checkpoint_round_trip_gives_identical_logits(dataset: Dataset, tmp_path: Path):
    trainer = Trainer(make_config("mini-resnet", epochs=1, **QUICK), dataset, tmp_path / "run")
    trainer.run()  # ends with the best weights loaded
    payload = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert payload["arch"] == "mini-resnet" and payload["classes"][0] == "airplane"
    assert payload["normalization"]["mean"] == [0.5, 0.5, 0.5]
    assert payload["epoch"] == 1 and "val_acc" in payload["metrics"]
    rebuilt = model_from_checkpoint(payload).eval()
    trained = trainer.model.eval()
    for name, tensor in rebuilt.state_dict().items():
        assert torch.equal(tensor, trained.state_dict()[name]), name
    # The trainer ran channels_last (its default); the same layout gives the same kernels.
    rebuilt = rebuilt.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), trained(x))
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert {"optimizer", "scheduler", "early_stopping", "rng", "history"} <= last.keys()


def test_same_seed_same_history(dataset: Dataset, tmp_path: Path):
    config = make_config("baseline-cnn", epochs=2, **QUICK)
    first = Trainer(config, dataset, tmp_path / "a").run()
    second = Trainer(config, dataset, tmp_path / "b").run()
    assert _history(first) == _history(second)
    other = Trainer(dataclasses.replace(config, seed=1), dataset, tmp_path / "c").run()
    assert _history(other) != _history(first)


def test_interrupted_then_resumed_equals_uninterrupted(dataset: Dataset, tmp_path: Path):
    config = make_config("baseline-cnn", epochs=3, **QUICK)
    straight = Trainer(config, dataset, tmp_path / "straight").run()
    with pytest.raises(TrainingInterrupted, match="--resume"):
        Trainer(config, dataset, tmp_path / "cut", observer=_InterruptAt(3)).run()
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    assert resume_config(tmp_path / "cut") == config
    resumed = Trainer(config, dataset, tmp_path / "cut", resume=True).run()
    assert _history(resumed) == _history(straight)
    assert resumed.test_acc == straight.test_acc
    lines = (tmp_path / "cut" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_early_stopping_and_plateau_reduction(dataset: Dataset, tmp_path: Path):
    config = make_config("baseline-cnn", epochs=30, patience=4, plateau_patience=1, **QUICK)
    trainer = Trainer(config, dataset, tmp_path / "run")
    template = trainer._train_epoch()
    # Crafted validation losses: one improvement, then no progress.
    stopped = []
    lrs = []
    for epoch, val_loss in enumerate([1.0, 0.5, 0.6, 0.7, 0.8, 0.9], start=1):
        record = dataclasses.replace(template, epoch=epoch, val_loss=val_loss)
        stopped.append(trainer._end_epoch(record))
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    assert stopped == [False, False, False, False, False, True]  # 4 epochs without a new best
    assert trainer.best_epoch == 2
    # ReduceLROnPlateau(factor 0.2, patience 1): drops after the 2nd bad epoch, then again.
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 2e-4, 2e-4, 4e-5])
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 2


def test_non_finite_loss_stops_and_keeps_the_good_checkpoints(dataset: Dataset, tmp_path: Path):
    config = make_config("baseline-cnn", recipe="sgd", epochs=2, **QUICK)
    trainer = Trainer(config, dataset, tmp_path / "run")
    trainer.run()
    good = load_checkpoint(tmp_path / "run" / "last.pt")
    blown = Trainer(dataclasses.replace(config, epochs=4), dataset, tmp_path / "run", resume=True)
    with torch.no_grad():
        blown.model.fc.weight[0, 0] = float("nan")  # what a diverged step leaves behind
    with pytest.raises(NonFiniteLossError, match="keeps the last good checkpoints"):
        blown.run()
    kept = load_checkpoint(tmp_path / "run" / "last.pt")
    assert kept["epoch"] == 2
    assert all(torch.equal(kept["state_dict"][k], v) for k, v in good["state_dict"].items())


def test_resume_faults(dataset: Dataset, tmp_path: Path):
    config = make_config("baseline-cnn", epochs=1, **QUICK)
    with pytest.raises(Exception, match="does not exist"):
        Trainer(config, dataset, tmp_path / "nowhere", resume=True)
    Trainer(config, dataset, tmp_path / "run").run()
    last = tmp_path / "run" / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        Trainer(config, dataset, tmp_path / "run", resume=True)
    torch.save({"weights": torch.zeros(3)}, last)
    with pytest.raises(CheckpointError, match="not an rtk checkpoint"):
        Trainer(config, dataset, tmp_path / "run", resume=True)


# --- the command line ----------------------------------------------------------------------


def test_ctrl_c_saves_and_exits_130_then_kill_9_leaves_whole_checkpoints(
    imagefolder: Path, tmp_path: Path
):
    args = ["train", "baseline-cnn", "--data", str(imagefolder), "--out", str(tmp_path)]
    args += ["--val-size", "50", "--batch-size", "2", "--epochs", "200", "--quiet"]
    env = {**os.environ, "COLUMNS": "300"}
    for sig, name in ((signal.SIGINT, "int"), (signal.SIGKILL, "kill")):
        command = [str(Path(sys.executable).with_name("rtk")), *args, "--name", name]
        process = subprocess.Popen(
            command, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=default_sigint
        )
        history = tmp_path / name / "history.jsonl"
        deadline = time.monotonic() + 180  # generous: CI machines are shared
        while time.monotonic() < deadline and not (
            history.is_file() and history.read_text().count("\n") >= 2
        ):
            time.sleep(0.1)
        time.sleep(0.3)  # well inside the next epoch
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=60)
        checkpoint = load_checkpoint(tmp_path / name / "last.pt")  # whole, not truncated
        assert checkpoint["epoch"] >= 2
        if sig == signal.SIGINT:
            assert process.returncode == 130
            assert f"--resume {tmp_path / name}" in stderr and "Traceback" not in stderr
        else:
            assert process.returncode == -signal.SIGKILL
    resumed = _rtk("train", "--resume", str(tmp_path / "kill"), "--epochs", "4", "--json",
                   "--data", str(imagefolder), "--quiet", env=env)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["epochs_run"] == 4


def test_two_process_ddp_run(imagefolder: Path, tmp_path: Path):
    """torchrun with two CPU processes (gloo): completes, and both ranks end identical."""
    worker = Path(__file__).with_name("ddp_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", str(worker), str(imagefolder), str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["world_size"] == 2 and config["effective_batch_size"] == 2 * 16
    assert not (tmp_path / "run-rank1").exists()
    # Each rank its own dropout stream, each kept in last.pt for its own resume.
    ranks = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["rng"]["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
    # And the CLI's own launcher: `rtk train --nproc 2`.
    args = [
        "train",
        "baseline-cnn",
        "--nproc",
        "2",
        "--epochs",
        "1",
        "--val-size",
        "50",
        "--device",
        "cpu",
    ]  # gloo here; a GPU host with one GPU would refuse 2 ranks
    cli = _rtk(*args, "--data", str(imagefolder), "--out", str(tmp_path), "--name", "cli")
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["epochs_run"] == 1


def test_resume_refuses_changed_settings_and_finished_runs(imagefolder: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from toolkit.cli import app

    data = ["--data", str(imagefolder)]
    base = [
        "train",
        "baseline-cnn",
        "--epochs",
        "1",
        "--val-size",
        "50",
        "--quiet",
        "--device",
        "cpu",
        *data,
    ]
    runner = CliRunner()
    assert runner.invoke(app, [*base, "--out", str(tmp_path), "--name", "r"]).exit_code == 0
    run = str(tmp_path / "r")
    cases = {
        ("--lr", "0.5"): "only --epochs may change (got --lr)",
        (): "already trained all 1 epochs",
    }
    files = {p.name: p.read_bytes() for p in Path(run).iterdir()}
    for extra, message in cases.items():
        result = runner.invoke(app, ["train", "--resume", run, *extra, *data])
        assert result.exit_code == 2 and message in result.stderr, result.stderr
    # A refused resume leaves the finished run exactly as it was (metrics.json included).
    assert {p.name: p.read_bytes() for p in Path(run).iterdir()} == files
    again = runner.invoke(app, [*base, "--out", str(tmp_path), "--name", "r", "--nproc", "2"])
    assert again.exit_code == 2 and "already exists" in again.stderr
    more = runner.invoke(app, ["train", "--resume", run, "--epochs", "2", "--json", *data])
    assert more.exit_code == 0 and json.loads(more.stdout)["epochs_run"] == 2


def test_observers_are_closed_while_the_run_folder_is_still_locked(
    dataset: Dataset, tmp_path: Path
):
    """TensorBoard's event files were flushed after the lock was released: a second writer
    could already hold the folder. Observers now close inside the run, lock held."""
    from toolkit.errors import FolderBusyError
    from toolkit.fileio import FolderLock
    from toolkit.training.observers import Observers, TensorBoardObserver

    run = tmp_path / "run"
    held: list[bool] = []

    class LockProbe(_InterruptAt):
        def close(self) -> None:
            try:
                FolderLock(run).acquire().release()
                held.append(False)
            except FolderBusyError:
                held.append(True)

    board = TensorBoardObserver(run)
    observer = Observers(board, LockProbe(0))
    Trainer(make_config("baseline-cnn", epochs=1, **QUICK), dataset, run, observer=observer).run()
    assert held == [True] and board.writer is not None
    assert list(run.glob("events.out.tfevents.*"))  # written, and closed, under the lock
