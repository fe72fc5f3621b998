"""A seed group: one architecture trained with one set of settings under several seeds, so that
a difference between models can be told from seed-to-seed noise.

``GROUP/group.json`` is the manifest (architecture, seeds, the settings every seed shares, the
dataset) and ``GROUP/seed-N/`` is seed N's run, an ordinary run folder that every command
reads. ``SeedGroup`` is the one class that names these files. ``open_run`` decides for any run
folder whether it is reused, resumed or started, for seed groups and ``rtk reproduce`` alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from toolkit import __version__
from toolkit.config import ConfigError, TrainConfig, config_from_settings
from toolkit.data import Dataset
from toolkit.errors import RtkError
from toolkit.fileio import (
    FORMAT_KEY,
    LOCK_NAME,
    TEMP_SUFFIX,
    FolderLock,
    atomic_path,
    check_format,
    parse_json,
    remove_leftover_temps,
)
from toolkit.training.engine import Observer, Trainer, TrainingInterrupted
from toolkit.training.rundir import RunDir, resume_config

KIND = "rtk seed group"  # tells a manifest from any other group.json
MANIFEST_FORMAT = 1  # the layout of group.json this rtk writes and reads

RunAction = Literal["reuse", "resume", "start"]


class SeedGroupError(RtkError):
    pass


@dataclass(frozen=True)
class SeedGroup:
    path: Path
    arch: str
    seeds: tuple[int, ...]  # in the order they train
    settings: dict[str, Any]  # every TrainConfig field but the seed, shared by all seeds
    data: str  # the dataset source every seed trains on

    MANIFEST = "group.json"

    def run_path(self, seed: int) -> Path:
        return self.path / f"seed-{seed}"

    def config(self, seed: int) -> TrainConfig:
        return config_from_settings({**self.settings, "seed": seed}, where=self.manifest)

    @property
    def manifest(self) -> Path:
        return self.path / self.MANIFEST

    @classmethod
    def is_group(cls, path: Path) -> bool:
        return (path / cls.MANIFEST).is_file()

    @classmethod
    def check_new(cls, path: Path) -> None:
        """Fail unless ``path`` can become a new group: absent, or an empty folder (or one
        holding only a manifest's temporary file: a group killed while it was written)."""
        if path.exists() and not path.is_dir():
            raise SeedGroupError(f"{path} is a file, not a seed group; pick another --name")
        if cls.is_group(path):
            raise SeedGroupError(
                f"seed group {path} already exists; pick another --name or continue it with "
                f"--resume {path}"
            )
        left = (p for p in path.iterdir() if p.name != LOCK_NAME) if path.is_dir() else ()
        if any(not _manifest_leftover(p) for p in left):
            raise SeedGroupError(
                f"{path} already exists and is not a seed group; pick another --name"
            )

    @classmethod
    def create(
        cls, path: Path, config: TrainConfig, seeds: tuple[int, ...], *, data: str
    ) -> SeedGroup:
        """A new group for ``config`` (its own seed aside) under ``seeds``; the manifest is
        written whole before any seed trains."""
        cls.check_new(path)
        # As the manifest holds them (tuples become lists), so a reopened group is equal.
        settings = json.loads(
            json.dumps({k: v for k, v in config.to_dict().items() if k != "seed"})
        )
        group = cls(path=path, arch=config.arch, seeds=seeds, settings=settings, data=data)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SeedGroupError(f"cannot create seed group {path} ({exc.strerror})") from exc
        with FolderLock(path):
            cls.check_new(path)  # again: another process may have made it since
            group._write_manifest(data)
        return group

    def _write_manifest(self, data: str) -> None:
        remove_leftover_temps(self.manifest)
        content = {
            FORMAT_KEY: MANIFEST_FORMAT,
            "kind": KIND,
            "arch": self.arch,
            "seeds": list(self.seeds),
            "settings": self.settings,
            "data": data,
            "rtk": __version__,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with atomic_path(self.manifest) as tmp:
            tmp.write_text(json.dumps(content, indent=2) + "\n")

    @classmethod
    def open(cls, path: Path) -> SeedGroup:
        manifest = path / cls.MANIFEST
        if not path.is_dir():
            raise SeedGroupError(f"{path} is not a seed group (no such folder)")
        try:
            content = parse_json(manifest.read_text())
        except FileNotFoundError as exc:
            raise SeedGroupError(
                f"{path} has no {cls.MANIFEST}; is it a seed group of `rtk train --seeds`?"
            ) from exc
        except (OSError, ValueError) as exc:
            raise SeedGroupError(f"{manifest} is not readable JSON ({exc})") from exc
        check_format(content, MANIFEST_FORMAT, manifest)
        seeds = content.get("seeds") if isinstance(content, dict) else None
        if (
            not isinstance(content, dict)
            or content.get("kind") != KIND
            or not isinstance(content.get("arch"), str)
            or not isinstance(content.get("settings"), dict)
            or not isinstance(content.get("data"), str)
            or not isinstance(seeds, list)
            or not seeds
            or not all(type(s) is int and 0 <= s < 2**64 for s in seeds)  # True is no seed
            or len(set(seeds)) != len(seeds)
        ):
            raise SeedGroupError(
                f"{manifest} is not an rtk seed group manifest (it needs kind, arch, distinct "
                "seeds, settings and data)"
            )
        group = cls(
            path=path,
            arch=content["arch"],
            seeds=tuple(seeds),
            settings=content["settings"],
            data=content["data"],
        )
        group.config(seeds[0])  # settings of the right types and values, or one line now
        return group

    def check_data(self, dataset: Dataset) -> None:
        """Every seed trains on the same data: a resumed group refuses another dataset."""
        if str(dataset.source.path) != self.data:
            raise ConfigError(
                f"seed group {self.path} trains on {self.data}, not {dataset.source.path}: "
                "pass the group's own --data"
            )


def _manifest_leftover(path: Path) -> bool:
    """A temporary file of ``atomic_path`` writing the manifest (``.group.json.RANDOM.tmp``)."""
    name = path.name
    return name.startswith(f".{SeedGroup.MANIFEST}.") and name.endswith(TEMP_SUFFIX)


def open_run(
    config: TrainConfig, run: Path, dataset: Dataset, *, observer: Observer | None = None
) -> tuple[RunAction, Trainer | None]:
    """How ``run`` gets ``config`` trained, and the trainer that does it: a finished run is
    reused as it is (no trainer), a started one resumed with its own stored settings, any other
    (absent, or killed before its first checkpoint) started afresh with ``config``."""
    RunDir.refuse_link(run)
    rundir = RunDir(run)
    if rundir.finished:
        return "reuse", None
    if rundir.started:
        trainer = Trainer(resume_config(run), dataset, run, observer=observer, resume=True)
        return "resume", trainer
    return "start", Trainer(config, dataset, run, observer=observer)


@contextmanager
def rerun_on_interrupt(run: Path, rerun: str) -> Iterator[None]:
    """Ctrl-C inside a larger job (a seed group, ``rtk reproduce``): the message names the
    command that continues the whole job, not only the run it interrupted."""
    try:
        yield
    except TrainingInterrupted:
        raise TrainingInterrupted(
            f"interrupted; {run} keeps every finished epoch: rerun `{rerun}` to continue"
        ) from None
