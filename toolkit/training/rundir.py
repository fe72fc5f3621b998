"""A run directory: everything one training run leaves behind, each file readable alone.

``config.json`` (settings, versions, device, data), ``history.csv`` and ``history.jsonl``
(one row per epoch), ``best.pt`` and ``last.pt`` (checkpoints), ``metrics.json`` (the test
of the best weights) and ``test_predictions.json`` (that test's top-1 class per image, so the
reports need no second pass over the test split). ``RunDir`` is the one module that names
these files: it writes them and reads them back for every other tool.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import platform
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from toolkit import __version__
from toolkit.config import ConfigError, TrainConfig, config_from_settings, mistyped
from toolkit.errors import RtkError
from toolkit.fileio import (
    FORMAT_KEY,
    LOCK_NAME,
    TEMP_SUFFIX,
    atomic_path,
    check_format,
    parse_json,
    remove_leftover_temps,
)
from toolkit.training.checkpoint import load_checkpoint, save_checkpoint
from toolkit.training.device import cpu_description
from toolkit.training.records import EpochRecord, TrainResult

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
LATER_COLUMNS = ("compile_s",)  # added after the first runs: history rows may lack them
METRIC_KEYS = (
    "arch",
    "test_acc",
    "test_acc_tta",
    "test_loss",
    "best_epoch",
    "epochs_run",
    "stopped_early",
    "train_s",
    "device",
    "test_images",
)
LATER_METRIC_KEYS = ("precision", "test_precision")  # written since bf16; older runs lack them
# The layouts of config.json, metrics.json (``check_format``) and test_predictions.json this rtk
# writes and reads.
CONFIG_FORMAT = 1
METRICS_FORMAT = 1
PREDICTIONS_FORMAT = 1
_EPOCH_FIELDS = tuple(f.name for f in dataclasses.fields(EpochRecord))


class RunDirError(RtkError):
    pass


def trained_precision(config: dict[str, Any]) -> str:
    """A run's training precision from its config.json; runs from before rtk recorded it
    trained in fp32 on a CPU (where --amp was refused) and in an unknown one on a GPU (fp16,
    bf16, or TF32 convolutions)."""
    recorded = config.get("precision")
    if isinstance(recorded, dict) and isinstance(recorded.get("train"), str):
        return recorded["train"]
    return "fp32" if str(config.get("device", "")).startswith("cpu") else "unrecorded"


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
    names = [*SCALAR_COLUMNS, *LATER_COLUMNS]
    return [*names, *(f"grad_norm:{name}" for name in record.grad_norms)]


def _csv_row(record: EpochRecord) -> list[Any]:
    row = dataclasses.asdict(record)
    names = [*SCALAR_COLUMNS, *LATER_COLUMNS]
    return [row[c] for c in names] + list(record.grad_norms.values())


class RunDir:
    """One run's folder. ``create`` a new one, reopen one to continue with ``resumable``, or
    ``open`` a finished or running one to read it."""

    CONFIG = "config.json"
    HISTORY = "history.jsonl"
    HISTORY_CSV = "history.csv"
    BEST = "best.pt"
    LAST = "last.pt"
    METRICS = "metrics.json"
    PREDICTIONS = "test_predictions.json"
    # What a run holds before its first checkpoint: a run killed then is started afresh.
    _BEFORE_FIRST_CHECKPOINT = frozenset({CONFIG, HISTORY, HISTORY_CSV})

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def started(self) -> bool:
        """True once the first checkpoint exists (there is training state to resume)."""
        return self.last.is_file()

    @property
    def finished(self) -> bool:
        return (self.path / self.METRICS).is_file()

    # --- opening --------------------------------------------------------------------------

    @classmethod
    def check_new(cls, path: Path) -> None:
        """Fail unless ``path`` can become a new run directory: absent, empty, or a run killed
        before its first checkpoint (nothing trained yet, so it is started afresh)."""
        if path.exists() and not path.is_dir():
            raise RunDirError(
                f"{path} is a file, not a run directory; move it away or pick another run name"
            )
        if path.is_dir() and not cls.unstarted(path):
            raise RunDirError(
                f"run directory {path} already exists; pick another --name or "
                f"continue it with --resume {path}"
            )

    @staticmethod
    def refuse_link(path: Path) -> None:
        """A run folder that is a symbolic link (dangling or not) is never trained into:
        writing through it would put the run outside its output folder."""
        if path.is_symlink():
            raise RunDirError(
                f"{path} is a symbolic link; rtk writes a run only inside its own output "
                "folder: remove the link"
            )

    @classmethod
    def unstarted(cls, path: Path) -> bool:
        """Nothing trained yet: only what a run writes before its first checkpoint, a lock or
        leftover temporary files."""
        return all(
            f.name in cls._BEFORE_FIRST_CHECKPOINT or f.name == LOCK_NAME or _leftover(f)
            for f in path.iterdir()
        )

    @classmethod
    def create(cls, path: Path) -> RunDir:
        cls.check_new(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {path} ({exc.strerror})") from exc
        return cls(path)  # its leftovers go once the trainer holds the folder's lock

    @classmethod
    def resumable(cls, path: Path) -> RunDir:
        """A run to continue: one with a checkpoint, or one killed before its first (its
        config.json says how to start it again)."""
        if not path.is_dir():
            raise RunDirError(f"run directory {path} does not exist; check the --resume path")
        rundir = cls(path)
        if not rundir.started and rundir.finished:  # starting it afresh would overwrite it
            raise RunDirError(
                f"{path} is a finished run without its {cls.LAST} (training state), so it cannot "
                f"train further; its results stay as they are (train a new run to go on)"
            )
        if not rundir.started and not (path / cls.CONFIG).is_file():
            raise RunDirError(f"{path} holds no last.pt or config.json; is it an rtk run?")
        return rundir

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """A run to read (finished or not)."""
        if not path.is_dir():
            raise RunDirError(f"{path} is not a run directory (no such folder)")
        return cls(path)

    def remove_leftovers(self) -> None:
        """Delete temporary files a killed writer left behind (never a finished file)."""
        for name in (*self._BEFORE_FIRST_CHECKPOINT, self.BEST, self.LAST, self.METRICS,
                     self.PREDICTIONS):  # fmt: skip
            remove_leftover_temps(self.path / name)

    # --- settings -------------------------------------------------------------------------

    def write_config(
        self,
        config: TrainConfig,
        *,
        device: str,
        world_size: int,
        data: dict[str, Any],
        allocator: str,
        precision: dict[str, str],
    ) -> None:
        content = {
            FORMAT_KEY: CONFIG_FORMAT,
            "settings": config.to_dict(),
            "device": device,
            "precision": precision,
            "world_size": world_size,
            "effective_batch_size": config.batch_size * world_size,
            "memory_metric": "cuda max_memory_allocated"
            if device.startswith("cuda")
            else "process peak RSS (ru_maxrss)",
            "allocator": allocator,
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
            "cpu": cpu_description(),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_text(self.path / self.CONFIG, json.dumps(content, indent=2) + "\n")

    def read_config(self) -> dict[str, Any]:
        content = self._read_json(self.CONFIG, "is it an rtk run directory?")
        check_format(content, CONFIG_FORMAT, self.path / self.CONFIG)
        if not isinstance(content, dict) or not isinstance(content.get("settings"), dict):
            raise RunDirError(f"{self.path / self.CONFIG} holds no training settings")
        return content

    def stored_config(self, *, epochs: int | None = None) -> TrainConfig:
        """The settings the run was started with (from ``last.pt``, or from ``config.json``
        for a run killed before its first checkpoint), optionally with more epochs."""
        if self.started:
            settings = dict(load_checkpoint(self.last).get("config") or {})
            where = self.last
        else:
            settings, where = dict(self.read_config()["settings"]), self.path / self.CONFIG
        if not settings:
            raise ConfigError(f"{where} holds no training settings; cannot resume")
        config = config_from_settings(settings, where=where)
        # --epochs is the user's flag, checked as one (not blamed on the file)
        return config if epochs is None else dataclasses.replace(config, epochs=epochs).validate()

    # --- checkpoints ----------------------------------------------------------------------

    def save_best(self, payload: dict[str, Any]) -> None:
        save_checkpoint(self.best, payload)

    def save_last(self, payload: dict[str, Any]) -> None:
        save_checkpoint(self.last, payload)

    def load_best(self) -> dict[str, Any]:
        if not self.best.is_file():
            raise RunDirError(f"{self.path} holds no best.pt; is it a finished rtk run?")
        return load_checkpoint(self.best)

    def load_last(self) -> dict[str, Any]:
        return load_checkpoint(self.last)

    # --- history --------------------------------------------------------------------------

    def write_history(self, history: list[EpochRecord]) -> None:
        """Rewrite both history files from ``history`` (on start and on resume, so a row
        half-written before a crash is replaced by the checkpoint's own record)."""
        jsonl = "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in history)
        _write_text(self.path / self.HISTORY, jsonl)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if history:
            writer.writerow(_csv_header(history[0]))
            writer.writerows(_csv_row(r) for r in history)
        _write_text(self.path / self.HISTORY_CSV, buffer.getvalue())

    def append_history(self, record: EpochRecord) -> None:
        with (self.path / self.HISTORY).open("a") as handle:
            handle.write(json.dumps(dataclasses.asdict(record)) + "\n")
        csv_path = self.path / self.HISTORY_CSV
        header = not csv_path.is_file() or csv_path.stat().st_size == 0
        with csv_path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if header:
                writer.writerow(_csv_header(record))
            writer.writerow(_csv_row(record))

    def read_history(self) -> list[dict[str, Any]]:
        """One dict per finished epoch, as ``history.jsonl`` holds them."""
        path = self.path / self.HISTORY
        if not path.is_file():
            raise RunDirError(f"{self.path} has no {self.HISTORY}; is it an rtk run directory?")
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = parse_json(line)
            except ValueError:
                row = None
            if not isinstance(row, dict) or any(k not in row for k in SCALAR_COLUMNS):
                raise RunDirError(
                    f"{path} line {number} is not a whole epoch record (a run killed while "
                    f"writing it?); `rtk train --resume {self.path}` rewrites the history"
                )
            if bad := mistyped(row, EpochRecord, _EPOCH_FIELDS):
                raise RunDirError(
                    f"{path} line {number} has {', '.join(bad)}: the file was edited or is not "
                    "rtk's; restore it from the run"
                )
            rows.append(row)
        return rows

    # --- the test of the best weights -----------------------------------------------------

    def write_test_predictions(
        self, predicted: list[int], *, classes: list[str], source: str, best_epoch: int
    ) -> None:
        content = {
            FORMAT_KEY: PREDICTIONS_FORMAT,
            "source": source,
            "classes": classes,
            "best_epoch": best_epoch,
        }
        _write_text(
            self.path / self.PREDICTIONS,
            json.dumps({**content, "predicted": predicted}) + "\n",
        )

    def read_test_predictions(
        self, *, source: str, images: int, classes: list[str]
    ) -> list[int] | None:
        """The stored test predictions of the best weights, if they were made on ``source``,
        cover ``images`` images, name the run's ``classes`` and are newer than best.pt; None
        otherwise (the caller predicts afresh)."""
        path = self.path / self.PREDICTIONS
        if not path.is_file() or (
            self.best.is_file() and self.best.stat().st_mtime > path.stat().st_mtime
        ):
            return None
        try:
            stored = parse_json(path.read_text())
            predicted = stored["predicted"]
            named = stored["classes"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable: the caller predicts afresh
        if stored.get(FORMAT_KEY, 1) != PREDICTIONS_FORMAT:
            return None  # another layout (a newer rtk's): predicted afresh, never misread
        if stored.get("source") != source or len(predicted) != images or named != classes:
            return None  # another dataset, or an edited class list (a class past the run's)
        if not all(type(p) is int and 0 <= p < len(classes) for p in predicted):
            return None  # edited or foreign: a class that does not exist
        return predicted

    def clear_metrics(self) -> None:
        """A run being trained has no test result yet."""
        (self.path / self.METRICS).unlink(missing_ok=True)

    def write_metrics(self, result: TrainResult) -> None:
        summary = result.summary()
        metrics = {
            FORMAT_KEY: METRICS_FORMAT,
            **{key: summary[key] for key in (*METRIC_KEYS, *LATER_METRIC_KEYS)},
        }
        _write_text(self.path / self.METRICS, json.dumps(metrics, indent=2) + "\n")

    def read_metrics(self) -> dict[str, Any]:
        metrics = self._read_json(self.METRICS, "the run has not finished")
        check_format(metrics, METRICS_FORMAT, self.path / self.METRICS)
        missing = [k for k in METRIC_KEYS if not isinstance(metrics, dict) or k not in metrics]
        bad = [] if missing else mistyped(metrics, TrainResult, (*METRIC_KEYS, *LATER_METRIC_KEYS))
        if missing or bad:
            said = f"lacks {', '.join(missing)}" if missing else f"has {', '.join(bad)}"
            raise RunDirError(
                f"{self.path / self.METRICS} {said}; "
                f"`rtk train --resume {self.path}` tests the best weights again"
            )
        return metrics

    def _read_json(self, name: str, hint: str) -> Any:
        path = self.path / name
        try:
            return parse_json(path.read_text())
        except FileNotFoundError as exc:
            raise RunDirError(f"{self.path} has no {name}; {hint}") from exc
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{path} is not readable JSON ({exc})") from exc


def resume_command(path: Path, data: Path) -> str:
    """The shell line that continues the run or seed group at ``path`` on its own data (a
    resume on other data is refused), quoted so that it runs as printed."""
    return shlex.join(["rtk", "train", "--resume", str(path), "--data", str(data)])


def resume_config(run_path: Path, *, epochs: int | None = None) -> TrainConfig:
    """The settings to continue the run at ``run_path`` with (see ``RunDir.stored_config``)."""
    return RunDir.resumable(run_path).stored_config(epochs=epochs)


def _leftover(path: Path) -> bool:
    """A temporary file of ``atomic_path`` (``.NAME.RANDOM.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX) and path.is_file()
