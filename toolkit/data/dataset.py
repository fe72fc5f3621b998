"""The dataset as uint8 tensors in memory: decoded once, cached in one file, split by seed."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from toolkit.data import sources
from toolkit.data.sources import CIFAR10_CLASSES, CIFAR_SIZE, DataSource
from toolkit.data.transforms import PAPER_NORMALIZATION, Normalization, measure_normalization
from toolkit.errors import DataError
from toolkit.fileio import atomic_path

CACHE_VERSION = 1  # bump when the cache's layout changes, so old files are rebuilt
CACHE_PREFIX = "cifar10-"  # cache files are CACHE_PREFIX + a hash of the source + ".pt"
# A cache file, or atomic_path's temporary for one (".NAME.<random>.tmp").
_CACHE_NAME = re.compile(
    rf"{CACHE_PREFIX}[0-9a-f]{{16}}\.pt|\.{CACHE_PREFIX}[0-9a-f]{{16}}\.pt\.\w+\.tmp"
)


@dataclass(frozen=True)
class Split:
    """Images (N, 3, H, W) uint8 in [0, 255] and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()

    def subset(self, indices: torch.Tensor) -> Split:
        return Split(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class Dataset:
    """The whole dataset as the source gave it (CIFAR-10: 50,000 training and 10,000 test
    images)."""

    classes: tuple[str, ...]
    train: Split
    test: Split
    source: DataSource
    cache_path: Path | None  # None when the cache directory could not be written
    from_cache: bool
    load_s: float
    converted: tuple[str, ...] = ()  # image modes converted to RGB at decode ("L": greyscale)
    image_size: int | None = None  # the side every image was resized to; None: stored size

    @property
    def input_size(self) -> list[int]:
        """[channels, height, width] of every image: what a model trained on it takes."""
        return [int(d) for d in self.train.images.shape[1:]]

    @property
    def is_cifar10(self) -> bool:
        """CIFAR-10 as the paper trains on it: its ten classes, 32x32 RGB as stored."""
        return (
            self.classes == CIFAR10_CLASSES
            and self.input_size == [3, CIFAR_SIZE, CIFAR_SIZE]
            and not self.converted
        )

    def normalization(self, mode: str, train: Split) -> Normalization:
        """How a run normalises its inputs (``TrainConfig.normalize``): the paper's on CIFAR-10
        under ``auto``, else the per-channel statistics of ``train``, the images it trains on."""
        if mode == "paper" or (mode == "auto" and self.is_cifar10):
            return PAPER_NORMALIZATION
        return measure_normalization(train.images)

    def split(self, *, val_size: int, seed: int) -> tuple[Split, Split]:
        """Hold ``val_size`` training images out for validation, stratified by class.

        The test split is never touched here: model selection only ever sees validation.
        """
        if val_size == 0:
            return self.train, Split(self.train.images[:0], self.train.labels[:0])
        if not 0 < val_size < len(self.train):
            raise DataError(
                f"validation size {val_size} must be between 0 and {len(self.train) - 1}; "
                "pass a smaller --val-size"
            )
        indices = np.arange(len(self.train))
        try:
            train_idx, val_idx = train_test_split(
                indices, test_size=val_size, random_state=seed, stratify=self.train.labels.numpy()
            )
        except ValueError as exc:  # too few images per class for a stratified split
            raise DataError(f"cannot hold out {val_size} validation images: {exc}") from exc
        # Sorted, so the split depends only on the seed, not on sklearn's internal order.
        train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
        return (
            self.train.subset(torch.from_numpy(train_idx)),
            self.train.subset(torch.from_numpy(val_idx)),
        )


def check_fits(
    model_classes: Sequence[str], input_size: Sequence[int], dataset: Dataset, source: Path | str
) -> None:
    """A model meets a dataset only when it was trained on its classes, at its image size."""
    if list(model_classes) != list(dataset.classes):
        raise DataError(
            f"{source} was trained on classes {list(model_classes)}, but the dataset has "
            f"{list(dataset.classes)}; point --data at the data the model was trained for"
        )
    if list(input_size) != dataset.input_size:
        want, got = list(input_size), dataset.input_size
        raise DataError(
            f"{source} takes {want[2]}x{want[1]} images, but the dataset's are {got[2]}x{got[1]}; "
            "point --data at the data the model was trained for (its --image-size is recorded "
            "in the run)"
        )


def default_cache_dir() -> Path:
    if os.environ.get("RTK_CACHE_DIR"):
        return Path(os.environ["RTK_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rtk"


def cache_file_for(
    source: DataSource, cache_dir: Path | None = None, *, image_size: int | None = None
) -> Path:
    """The one cache file of ``source`` (at ``image_size``), named by its format and path."""
    resized = f":{image_size}" if image_size is not None else ""  # stored size: the old name
    key = hashlib.sha256(f"{source.format}:{source.path}{resized}".encode()).hexdigest()[:16]
    return (cache_dir or default_cache_dir()) / f"{CACHE_PREFIX}{key}.pt"


def cache_files(directory: Path) -> list[Path]:
    """The files rtk wrote in ``directory`` (caches and a killed writer's temporaries), and
    no other: the directory may be shared."""
    return [
        path
        for path in sorted(directory.glob(f"*{CACHE_PREFIX}*"))
        if _CACHE_NAME.fullmatch(path.name)
    ]


def load_dataset(
    data: Path | None = None,
    *,
    image_size: int | None = None,
    cache_dir: Path | None = None,
    announce: Callable[[str], None] | None = None,
) -> Dataset:
    """Find, decode (or load from the cache) and return the whole dataset, every image
    resized to ``image_size`` square when given (ImageFolder trees only).

    The cache is one file per source, named by the source's path; it holds a fingerprint of
    every source file's size and mtime and is rebuilt when that changes. It is written only
    after the whole source decoded cleanly, and atomically.
    """
    start = time.perf_counter()
    source = sources.locate(data, announce=announce)
    sources.check_image_size(image_size, source)
    # The official release is 32x32: --image-size 32 there decodes (and caches) as stored.
    resize = None if source.format != "imagefolder" else image_size
    cache_file = cache_file_for(source, cache_dir, image_size=resize)
    stamp = sources.fingerprint(source)
    raw = _read_cache(cache_file, stamp)
    from_cache = raw is not None
    if raw is None:
        raw = sources.read(source, image_size=resize)
        cached = _write_cache(cache_file, stamp, source, raw)
    return Dataset(
        classes=raw.classes,
        train=Split(raw.train_images, raw.train_labels),
        test=Split(raw.test_images, raw.test_labels),
        source=source,
        cache_path=cache_file if from_cache or cached else None,
        from_cache=from_cache,
        load_s=time.perf_counter() - start,
        converted=raw.converted,
        image_size=image_size,
    )


@dataclass(frozen=True)
class CacheCleanup:
    directory: Path
    removed: list[Path]
    freed_bytes: int


def clear_cache(cache_dir: Path | None = None) -> CacheCleanup:
    """Delete every decoded-dataset file (and any temporary left by a killed writer) from the
    cache directory; the next load decodes its source again (~5 s for 60,000 JPEGs). Only
    names rtk writes are touched: the directory may be shared."""
    directory = cache_dir or default_cache_dir()
    removed: list[Path] = []
    freed = 0
    for path in cache_files(directory):
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:  # another process removed or renamed it meanwhile
            continue
        except OSError as exc:
            raise DataError(f"cannot delete {path} ({exc.strerror}); remove it by hand") from exc
        removed.append(path)
        freed += size
    return CacheCleanup(directory, removed, freed)


def _read_cache(path: Path, stamp: str) -> sources.RawData | None:
    if not path.is_file():
        return None
    try:
        content = torch.load(path, weights_only=True, mmap=True)
    except Exception:  # a truncated or foreign file is just a cache miss: rebuild it
        return None
    if content.get("version") != CACHE_VERSION or content.get("fingerprint") != stamp:
        return None
    return sources.RawData(
        classes=tuple(content["classes"]),
        train_images=content["train_images"],
        train_labels=content["train_labels"],
        test_images=content["test_images"],
        test_labels=content["test_labels"],
        converted=tuple(content.get("converted", ())),
    )


def _write_cache(path: Path, stamp: str, source: DataSource, raw: sources.RawData) -> bool:
    content = {
        "version": CACHE_VERSION,
        "fingerprint": stamp,
        "source": str(source.path),
        "format": source.format,
        "classes": list(raw.classes),
        "train_images": raw.train_images,
        "train_labels": raw.train_labels,
        "test_images": raw.test_images,
        "test_labels": raw.test_labels,
        "converted": list(raw.converted),
    }
    try:
        with atomic_path(path) as tmp:
            torch.save(content, tmp)
    except (OSError, RuntimeError):  # torch.save reports a full disk as RuntimeError
        return False  # an unwritable cache only costs the next run a decode
    return True


@dataclass(frozen=True)
class ClassCount:
    name: str
    train: int
    val: int
    test: int


IMBALANCED = 1.5  # largest class over smallest from which accuracy alone misleads


def imbalance(counts: list[int]) -> float:
    """The largest class's count over the smallest's (1.0: balanced; inf: a class is empty)."""
    smallest = min(counts)
    return max(counts) / smallest if smallest else float("inf")


@dataclass(frozen=True)
class DataInfo:
    """What ``rtk data info`` reports: where the data came from and what it holds."""

    source: Path
    format: str
    cache_path: Path | None
    from_cache: bool
    load_s: float
    val_size: int
    split_seed: int
    train: int
    val: int
    test: int
    classes: list[ClassCount]
    input_size: list[int]  # channels, height, width of every image as decoded
    image_size: int | None  # the side every image was resized to; None: their stored size
    converted: list[str]  # image modes converted to RGB ("L": greyscale)
    train_imbalance: float  # largest training class over the smallest
    test_imbalance: float


def describe(dataset: Dataset, *, val_size: int, seed: int) -> DataInfo:
    train, val = dataset.split(val_size=val_size, seed=seed)
    k = len(dataset.classes)
    counts = zip(
        dataset.classes,
        train.class_counts(k),
        val.class_counts(k),
        dataset.test.class_counts(k),
        strict=True,
    )
    return DataInfo(
        source=dataset.source.path,
        format=dataset.source.format,
        cache_path=dataset.cache_path,
        from_cache=dataset.from_cache,
        load_s=dataset.load_s,
        val_size=val_size,
        split_seed=seed,
        train=len(train),
        val=len(val),
        test=len(dataset.test),
        classes=[ClassCount(name, *c) for name, *c in counts],
        input_size=dataset.input_size,
        image_size=dataset.image_size,
        converted=list(dataset.converted),
        train_imbalance=imbalance(dataset.train.class_counts(k)),
        test_imbalance=imbalance(dataset.test.class_counts(k)),
    )
