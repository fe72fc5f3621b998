"""A run directory: everything one training run leaves behind, each file readable alone.

``config.json`` (settings, versions, device, data), ``history.csv`` and ``history.jsonl``
(one row per epoch), ``best.pt`` and ``last.pt`` (checkpoints), ``metrics.json`` (the test
of the best weights) and ``test_predictions.json`` (that test's top-1 class per image, so the
reports need no second pass over the test split).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torchvision

from toolkit import __version__
from toolkit.errors import RtkError
from toolkit.fileio import atomic_path

if TYPE_CHECKING:
    from toolkit.training.config import TrainConfig
    from toolkit.training.engine import EpochRecord, TrainResult

SCALAR_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "epoch_s",
    "images_per_s",
    "peak_mem_mb",
)


class RunDirError(RtkError):
    pass


def default_run_name(arch: str) -> str:
    return f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _csv_header(record: EpochRecord) -> list[str]:
    return [*SCALAR_COLUMNS, *(f"grad_norm:{name}" for name in record.grad_norms)]


def _csv_row(record: EpochRecord) -> list[Any]:
    row = dataclasses.asdict(record)
    return [row[c] for c in SCALAR_COLUMNS] + list(record.grad_norms.values())


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def check_new(path: Path) -> None:
        """Fail unless ``path`` can become a new run directory."""
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path} is a file, not a run directory; pick another --name")
        if path.is_dir() and any(path.iterdir()):
            raise RunDirError(
                f"run directory {path} already exists; pick another --name or "
                f"continue it with --resume {path}"
            )

    @classmethod
    def create(cls, path: Path) -> RunDir:
        cls.check_new(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {path} ({exc.strerror})") from exc
        return cls(path)

    @classmethod
    def existing(cls, path: Path) -> RunDir:
        if not path.is_dir():
            raise RunDirError(f"run directory {path} does not exist; check the --resume path")
        if not (path / "last.pt").is_file():
            raise RunDirError(f"{path} holds no last.pt to resume from; is it an rtk run?")
        return cls(path)

    def write_config(
        self, config: TrainConfig, *, device: str, world_size: int, data: dict[str, Any]
    ) -> None:
        content = {
            "settings": config.to_dict(),
            "device": device,
            "world_size": world_size,
            "effective_batch_size": config.batch_size * world_size,
            "memory_metric": "cuda max_memory_allocated"
            if device.startswith("cuda")
            else "process peak RSS (ru_maxrss)",
            "data": data,
            "versions": {
                "rtk": __version__,
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
            "git_commit": git_commit(),
            "host": platform.node(),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_text(self.path / "config.json", json.dumps(content, indent=2) + "\n")

    def write_history(self, history: list[EpochRecord]) -> None:
        """Rewrite both history files from ``history`` (on start and on resume, so a row
        half-written before a crash is replaced by the checkpoint's own record)."""
        jsonl = "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in history)
        _write_text(self.path / "history.jsonl", jsonl)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if history:
            writer.writerow(_csv_header(history[0]))
            writer.writerows(_csv_row(r) for r in history)
        _write_text(self.path / "history.csv", buffer.getvalue())

    def append_history(self, record: EpochRecord) -> None:
        with (self.path / "history.jsonl").open("a") as handle:
            handle.write(json.dumps(dataclasses.asdict(record)) + "\n")
        csv_path = self.path / "history.csv"
        header = not csv_path.is_file() or csv_path.stat().st_size == 0
        with csv_path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if header:
                writer.writerow(_csv_header(record))
            writer.writerow(_csv_row(record))

    def write_test_predictions(
        self, predicted: list[int], *, classes: list[str], source: str, best_epoch: int
    ) -> None:
        content = {"source": source, "classes": classes, "best_epoch": best_epoch}
        _write_text(
            self.path / "test_predictions.json",
            json.dumps({**content, "predicted": predicted}) + "\n",
        )

    def read_test_predictions(self, *, source: str, images: int) -> list[int] | None:
        """The stored test predictions of the best weights, if they were made on ``source``
        and cover ``images`` images and are newer than best.pt; None otherwise."""
        path = self.path / "test_predictions.json"
        best = self.path / "best.pt"
        if not path.is_file() or (best.is_file() and best.stat().st_mtime > path.stat().st_mtime):
            return None
        try:
            stored = json.loads(path.read_text())
            predicted = [int(p) for p in stored["predicted"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable: the caller predicts afresh
        if stored.get("source") != source or len(predicted) != images:
            return None
        return predicted

    def write_metrics(self, result: TrainResult) -> None:
        metrics = {
            "arch": result.arch,
            "test_acc": result.test_acc,
            "test_acc_tta": result.test_acc_tta,
            "test_loss": result.test_loss,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "train_s": result.train_s,
            "device": result.device,
            "test_images": result.test_images,
        }
        _write_text(self.path / "metrics.json", json.dumps(metrics, indent=2) + "\n")
