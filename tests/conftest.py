"""Shared fixtures: tiny real datasets on disk in each format rtk reads.

The images come from the real CIFAR-10 copy in ``../shared/data/cifar10-jpeg`` when it is
there (the first files of each class), and are generated otherwise, so the suite runs on a
machine without the data too.
"""

from __future__ import annotations

import os

# A developer's own models (docs/your-own-model.md) are not the registry the tests know; removed
# before anything imports toolkit (collection reads the registry), and so from every subprocess.
os.environ.pop("RTK_MODELS", None)

import pickle
import re
import shutil
import signal
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg"
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# Table I's models (the paper's four and rtk's control) and one network per other source, each
# new construct once: seed 003's padding-3 stem, He et al.'s option-A shortcuts, seed 004's
# grouped bottleneck. Tests that
# export or bench a model run over these; tests/test_models.py covers every architecture.
SAMPLE_ARCHS = (
    "baseline-cnn", "mini-resnet", "resnet18", "resnet18-noskip", "mini-resnet-noskip",
    "slim-resnet18", "resnet20", "resnext50-32x4d",
)  # fmt: skip
TRAIN_PER_CLASS = 20
TEST_PER_CLASS = 5


@dataclass(frozen=True)
class TinyData:
    """A tiny dataset in memory: images (N, 32, 32, 3) uint8, labels (N,), per split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    files: dict[str, list[Path]]  # split -> source JPEGs, where real files were used


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Each test gets its own cache dir and no RTK_DATA, so lookups are what the test says; and
    sees this machine's CPU without native bf16, so the fast recipe trains in fp32 on every
    host (tests of bf16 describe their CPU themselves: tests/test_precision.py)."""
    from toolkit.training import device

    monkeypatch.setenv("RTK_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("RTK_DATA", raising=False)
    monkeypatch.delenv("RTK_DEBUG", raising=False)
    real = device.CPUINFO.read_text() if device.CPUINFO.is_file() else ""
    without = tmp_path_factory.mktemp("cpu") / "cpuinfo"
    without.write_text(re.sub(rf"\b({'|'.join(device.NATIVE_BF16_FLAGS)})\b", "", real))
    monkeypatch.setattr(device, "CPUINFO", without)


def default_sigint() -> None:
    """``preexec_fn`` for a child that a test stops with SIGINT, as Ctrl-C would. A shell's
    background job (``cmd &``, nohup) starts with SIGINT ignored and passes that on, and
    Python then installs no KeyboardInterrupt at all: restore the terminal's default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _real_files(split: str, per_class: int) -> list[list[Path]] | None:
    if not SHARED_DATA.is_dir():
        return None
    return [sorted((SHARED_DATA / split / c).glob("*.jpg"))[:per_class] for c in CLASSES]


def _load_split(split: str, per_class: int, rng: np.random.Generator):
    real = _real_files(split, per_class)
    images, labels, files = [], [], []
    for label in range(len(CLASSES)):
        for index in range(per_class):
            if real is not None:
                path = real[label][index]
                images.append(np.asarray(Image.open(path).convert("RGB")))
                files.append(path)
            else:
                images.append(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
            labels.append(label)
    return np.stack(images), np.array(labels), files


@pytest.fixture(scope="session")
def tiny_data() -> TinyData:
    rng = np.random.default_rng(0)
    train_images, train_labels, train_files = _load_split("train", TRAIN_PER_CLASS, rng)
    test_images, test_labels, test_files = _load_split("test", TEST_PER_CLASS, rng)
    return TinyData(
        train_images, train_labels, test_images, test_labels,
        {"train": train_files, "test": test_files},
    )  # fmt: skip


def write_imagefolder(root: Path, data: TinyData) -> Path:
    """An ImageFolder tree: the real JPEGs copied as they are, or generated images as PNG
    (lossless, so the decoded pixels equal the arrays)."""
    for split in ("train", "test"):
        images = getattr(data, f"{split}_images")
        labels = getattr(data, f"{split}_labels")
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            if data.files[split]:
                shutil.copy(data.files[split][index], folder / f"{index:04d}.jpg")
            else:
                Image.fromarray(image).save(folder / f"{index:04d}.png")
    return root


def write_cifar_python(folder: Path, data: TinyData) -> Path:
    """The official release's layout: five pickled training batches, a test batch, meta."""
    folder.mkdir(parents=True)

    def dump(name: str, content: dict) -> None:
        with (folder / name).open("wb") as handle:
            pickle.dump(content, handle, protocol=2)  # the protocol of the official files

    flat = data.train_images.transpose(0, 3, 1, 2).reshape(len(data.train_images), -1)
    for index, chunk in enumerate(np.array_split(np.arange(len(flat)), 5), start=1):
        dump(
            f"data_batch_{index}",
            {b"data": flat[chunk], b"labels": data.train_labels[chunk].tolist()},
        )
    test_flat = data.test_images.transpose(0, 3, 1, 2).reshape(len(data.test_images), -1)
    dump("test_batch", {b"data": test_flat, b"labels": data.test_labels.tolist()})
    dump("batches.meta", {b"label_names": [c.encode() for c in CLASSES]})
    return folder


@pytest.fixture
def imagefolder(tmp_path: Path, tiny_data: TinyData) -> Path:
    return write_imagefolder(tmp_path / "cifar10-jpeg", tiny_data)


@pytest.fixture
def cifar_python(tmp_path: Path, tiny_data: TinyData) -> Path:
    return write_cifar_python(tmp_path / "cifar-10-batches-py", tiny_data)


@pytest.fixture
def cifar_tarball(tmp_path: Path, tiny_data: TinyData) -> Path:
    folder = write_cifar_python(tmp_path / "build" / "cifar-10-batches-py", tiny_data)
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return tarball


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip cleanly where CUDA is absent (as on the CI machines)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
