"""Where the dataset lives on disk, and how to read each of its formats into uint8 tensors.

Three formats are read: CIFAR-10's official Python release (``cifar-10-batches-py/`` or its
``.tar.gz``), an ImageFolder tree (``train/<class>/*.jpg`` and ``test/<class>/*.jpg``: CIFAR-10
or any other classification dataset), and a download through torchvision, which produces the
official release.

An ImageFolder tree may hold any number of classes (two or more) and images of any one size
(or of several, resized to one at decode time with ``image_size``); images that are not RGB
(greyscale, palette, RGBA, ...) are converted to RGB, and the decoded data records which modes
were, so every network keeps its 3-channel stem.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import pickle
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from toolkit.config import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE
from toolkit.errors import DataError

Format = Literal["imagefolder", "cifar-python", "cifar-tar"]
CIFAR_SIZE = 32  # the official release's images; an ImageFolder tree has its own size
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
_BATCH_DIR = "cifar-10-batches-py"
_TARBALL = "cifar-10-python.tar.gz"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_EXPECTED = (
    f"expected train/ and test/ with one folder per class, a {_BATCH_DIR}/ folder, or {_TARBALL}"
)


@dataclass(frozen=True)
class DataSource:
    path: Path
    format: Format


@dataclass(frozen=True)
class RawData:
    """A decoded dataset: images (N, 3, H, W) uint8 and labels (N,) int64 per split, and the
    image modes converted to RGB on the way (``("L",)`` for a greyscale dataset)."""

    classes: tuple[str, ...]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    converted: tuple[str, ...] = ()


def locate(
    data: Path | None,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    announce: Callable[[str], None] | None = None,
) -> DataSource:
    """Find the dataset: ``data``, then ``$RTK_DATA``, then ``./data``, then a download there."""
    path, origin = lookup(data, env=env, cwd=cwd)
    if origin == "download":
        return download(path, announce=announce)
    return detect(path, origin=origin)


def lookup(
    data: Path | None, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[Path, str]:
    """Where ``locate`` looks and why, without reading or downloading anything: the path and
    its origin (``--data``, ``RTK_DATA``, ``./data``, or ``download`` when nothing is there
    and ``./data`` is where the download would go). ``rtk doctor`` reports it as is."""
    env = dict(os.environ) if env is None else env
    if data is not None:
        return Path(data), "--data"
    if env.get("RTK_DATA"):
        return Path(env["RTK_DATA"]), "RTK_DATA"
    local = (cwd or Path.cwd()) / "data"
    if local.is_dir() and any(local.iterdir()):
        return local, "./data"
    return local, "download"


def detect(path: Path, *, origin: str = "the data path") -> DataSource:
    """Recognise the dataset format at ``path`` or fail with what was expected there."""
    if not path.exists():
        raise DataError(
            f"data path {path} (from {origin}) does not exist; "
            "point --data or RTK_DATA at a CIFAR-10 folder"
        )
    if not path.is_file() and not path.is_dir():  # reading a FIFO would wait for a writer
        raise DataError(
            f"{path} (from {origin}) is neither a folder nor a regular file; "
            "point --data or RTK_DATA at a CIFAR-10 folder or tarball"
        )
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz")):
            return DataSource(path.resolve(), "cifar-tar")
        raise DataError(f"{path} is a file but not a CIFAR-10 tarball; {_EXPECTED}")
    if all((path / name).is_file() for name in (*_TRAIN_BATCHES, "test_batch")):
        return DataSource(path.resolve(), "cifar-python")
    if (path / _BATCH_DIR).is_dir():
        return detect(path / _BATCH_DIR, origin=origin)
    if (path / _TARBALL).is_file():
        return DataSource((path / _TARBALL).resolve(), "cifar-tar")
    if (path / "train").is_dir() and (path / "test").is_dir():
        return DataSource(path.resolve(), "imagefolder")
    if not any(path.iterdir()):
        raise DataError(f"data folder {path} is empty; {_EXPECTED}")
    raise DataError(f"{path} does not look like CIFAR-10; {_EXPECTED}")


def download(root: Path, *, announce: Callable[[str], None] | None = None) -> DataSource:
    """Download the official release into ``root`` with torchvision."""
    from torchvision.datasets import CIFAR10

    if announce is not None:
        announce(f"no dataset found; downloading CIFAR-10 to {root}")
    try:
        for train in (True, False):
            CIFAR10(str(root), train=train, download=True)
    except (OSError, RuntimeError) as exc:  # urllib errors are OSErrors
        raise DataError(
            f"could not download CIFAR-10 to {root} ({exc}); "
            "pass --data PATH or set RTK_DATA to a local copy"
        ) from exc
    return detect(root, origin="the download")


def fingerprint(source: DataSource) -> str:
    """A hash of every file's path, size, mtime and ctime: it changes whenever the source does.

    ctime is in it because ``cp -p`` and ``tar`` restore a replaced file's mtime (and the
    official batches all have one size), but nothing can set ctime back.

    Built from ``os.scandir`` entries rather than ``Path`` objects: it runs on every cached
    load, over 60,000 files, and must stay a small part of a sub-second load.
    """
    digest = hashlib.sha256(f"{source.format}:{source.path}".encode())
    try:
        for name, stat in _source_stats(source):
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns};".encode())
    except OSError as exc:
        raise DataError(f"cannot read {exc.filename} ({exc.strerror}); check the file") from exc
    return digest.hexdigest()


def _source_stats(source: DataSource) -> Iterator[tuple[str, os.stat_result]]:
    if source.format == "cifar-tar":
        yield source.path.name, source.path.stat()
        return
    if source.format == "cifar-python":
        for name in (*_TRAIN_BATCHES, "test_batch", "batches.meta"):
            yield name, (source.path / name).stat()
        return
    for split in ("train", "test"):
        with os.scandir(source.path / split) as classes:
            class_dirs = sorted((e.name, e.path) for e in classes if e.is_dir())
        for class_name, class_path in class_dirs:
            with os.scandir(class_path) as entries:
                images = sorted(
                    (e.name, e)
                    for e in entries
                    if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
                )
            for name, entry in images:
                yield f"{split}/{class_name}/{name}", entry.stat()


def check_image_size(image_size: int | None, source: DataSource) -> None:
    """``--image-size`` resizes an ImageFolder tree's images; the official release is 32x32."""
    if image_size is None:
        return
    if not MIN_IMAGE_SIDE <= image_size <= MAX_IMAGE_SIDE:
        raise DataError(
            f"--image-size must be in [{MIN_IMAGE_SIDE}, {MAX_IMAGE_SIDE}] pixels, got {image_size}"
        )
    if source.format != "imagefolder" and image_size != CIFAR_SIZE:
        raise DataError(
            f"--image-size {image_size}: {source.path} is CIFAR-10's official release, whose "
            f"images are {CIFAR_SIZE}x{CIFAR_SIZE}; drop --image-size or use an ImageFolder tree"
        )


def read(source: DataSource, *, image_size: int | None = None) -> RawData:
    """Decode the whole dataset into memory (each image resized to ``image_size`` square, when
    given); raise ``DataError`` naming any bad file."""
    check_image_size(image_size, source)
    if source.format == "imagefolder":
        return _read_imagefolder(source.path, image_size)
    if source.format == "cifar-tar":
        try:
            with tarfile.open(source.path, "r:gz") as tar:

                def open_member(name: str) -> BinaryIO:
                    member = tar.extractfile(f"{_BATCH_DIR}/{name}")
                    if member is None:
                        raise KeyError(name)
                    return member

                return _read_batches(open_member, str(source.path))
        except (OSError, EOFError, tarfile.TarError) as exc:  # EOFError: a cut-off gzip stream
            raise DataError(f"cannot read {source.path} ({exc}); re-download CIFAR-10") from exc
    return _read_batches(lambda name: (source.path / name).open("rb"), str(source.path))


# --- the official Python release -------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickle the CIFAR batches without running arbitrary code: only numpy arrays and
    builtin containers are allowed, since that is all the official files hold."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(handle: BinaryIO, where: str) -> dict[bytes, Any]:
    try:
        content = _ArrayUnpickler(io.BytesIO(handle.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{where} is not a readable CIFAR-10 batch ({exc})") from exc
    if not isinstance(content, dict):
        raise DataError(f"{where} is not a CIFAR-10 batch (holds a {type(content).__name__})")
    return content


def _read_batches(open_file: Callable[[str], BinaryIO], where: str) -> RawData:
    def load(name: str) -> dict[bytes, Any]:
        try:
            with open_file(name) as handle:
                return _unpickle(handle, f"{where}/{name}")
        except (OSError, KeyError, tarfile.TarError) as exc:
            raise DataError(f"cannot read {where}/{name} ({exc}); re-download CIFAR-10") from exc

    meta = load("batches.meta")
    classes = tuple(name.decode() for name in meta.get(b"label_names", []))
    if not classes:
        raise DataError(f"{where}/batches.meta has no label_names; re-download CIFAR-10")

    def split(names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for name in names:
            batch = load(name)
            data = np.asarray(batch.get(b"data"))
            if data.ndim != 2 or data.shape[1] != 3 * CIFAR_SIZE * CIFAR_SIZE:
                raise DataError(f"{where}/{name}: images are {data.shape}, expected (N, 3072)")
            images.append(
                torch.from_numpy(data.astype(np.uint8).reshape(-1, 3, CIFAR_SIZE, CIFAR_SIZE))
            )
            labels.append(torch.as_tensor(batch.get(b"labels"), dtype=torch.int64))
            if len(labels[-1]) != len(images[-1]) or not _labels_ok(labels[-1], len(classes)):
                raise DataError(f"{where}/{name}: labels do not match the images or the classes")
        return torch.cat(images), torch.cat(labels)

    train_images, train_labels = split(_TRAIN_BATCHES)
    test_images, test_labels = split(("test_batch",))
    return RawData(classes, train_images, train_labels, test_images, test_labels)


def _labels_ok(labels: torch.Tensor, num_classes: int) -> bool:
    return bool(labels.numel() == 0 or (labels.min() >= 0 and labels.max() < num_classes))


# --- ImageFolder trees ----------------------------------------------------------------------


def _is_image(path: Path) -> bool:
    # By name only: a broken link or a folder named like an image is reported, not skipped.
    return path.suffix.lower() in IMAGE_SUFFIXES


def _class_folders(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir())


def _read_imagefolder(root: Path, image_size: int | None) -> RawData:
    train_dirs, test_dirs = _class_folders(root / "train"), _class_folders(root / "test")
    train_names = [p.name for p in train_dirs]
    test_names = [p.name for p in test_dirs]
    if not train_names:
        raise DataError(f"{root / 'train'} has no class folders; {_EXPECTED}")
    if len(train_names) < 2:
        raise DataError(
            f"{root / 'train'} has one class folder ({train_names[0]}); a classifier needs at "
            "least two: add a folder per class"
        )
    if train_names != test_names:
        only_train = sorted(set(train_names) - set(test_names)) or "-"
        only_test = sorted(set(test_names) - set(train_names)) or "-"
        raise DataError(
            f"train/ and test/ in {root} have different classes "
            f"(only in train: {only_train}; only in test: {only_test}); give both the same folders"
        )
    train_files, train_labels = _list_split(train_dirs)
    test_files, test_labels = _list_split(test_dirs)
    # One size for every image: the one asked for, else the first training image's.
    size = (image_size, image_size) if image_size else _stored_size(train_files[0])
    if max(size) > MAX_IMAGE_SIDE:  # 60,000 photographs as stored would not fit in memory
        raise DataError(
            f"the images of {root} are {size[0]}x{size[1]}, more than rtk holds in memory "
            f"(sides up to {MAX_IMAGE_SIDE}); pass --image-size N to resize them"
        )
    train_images, train_modes = _decode_all(train_files, size, resize=image_size is not None)
    test_images, test_modes = _decode_all(test_files, size, resize=image_size is not None)
    return RawData(
        tuple(train_names),
        train_images,
        train_labels,
        test_images,
        test_labels,
        converted=tuple(sorted(train_modes | test_modes)),
    )


def _list_split(class_dirs: list[Path]) -> tuple[list[Path], torch.Tensor]:
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        images = sorted(p for p in class_dir.iterdir() if _is_image(p))
        if not images:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise DataError(f"class folder {class_dir} holds no images ({suffixes})")
        files += images
        labels += [label] * len(images)
    return files, torch.tensor(labels, dtype=torch.int64)


def _stored_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding it."""
    with _opened(path) as image:
        return image.size


_CHUNK = 1_000  # images per worker task: large enough that process overhead vanishes


def _decode_all(
    files: list[Path], size: tuple[int, int], *, resize: bool
) -> tuple[torch.Tensor, set[str]]:
    """Decode every file with Pillow, on all cores (60,000 JPEGs take about 5 s on two), to
    ``size`` (width, height); the image modes converted to RGB on the way."""
    chunks = [files[start : start + _CHUNK] for start in range(0, len(files), _CHUNK)]
    workers = min(os.cpu_count() or 1, len(chunks), 8)
    decode = partial(_decode_chunk, size=size, resize=resize)
    if workers <= 1:
        results = [decode(chunk) for chunk in chunks]
    else:
        # fork: the workers need no imports of their own, and they touch only Pillow and NumPy.
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = list(pool.map(decode, chunks))
    images = np.concatenate([array for array, _ in results])
    modes = set().union(*(m for _, m in results))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), modes


def _decode_chunk(
    files: list[Path], *, size: tuple[int, int], resize: bool
) -> tuple[np.ndarray, set[str]]:
    out = np.empty((len(files), size[1], size[0], 3), dtype=np.uint8)
    modes: set[str] = set()
    for index, path in enumerate(files):
        out[index], mode = _decode_one(path, size, resize=resize)
        if mode != "RGB":
            modes.add(mode)
    return out, modes


@contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    # Image.open on a FIFO waits forever for a writer, and a device may never end.
    if path.exists() and not path.is_file():
        raise DataError(f"{path} is not a regular file; remove it from the dataset")
    try:
        with Image.open(path) as image:
            yield image
    except UnidentifiedImageError as exc:
        raise DataError(f"cannot decode image {path} (not an image); replace or remove it") from exc
    except Image.DecompressionBombError as exc:  # not an OSError: Pillow's guard on huge images
        raise DataError(
            f"image {path} has more pixels than Pillow decodes safely; shrink or remove it"
        ) from exc
    except OSError as exc:
        if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
            raise DataError(f"cannot read image {path} ({exc.strerror}); check the file") from exc
        raise DataError(f"cannot decode image {path} ({exc}); replace or remove it") from exc


def _decode_one(path: Path, size: tuple[int, int], *, resize: bool) -> tuple[np.ndarray, str]:
    """The image as (H, W, 3) uint8 RGB at ``size``, and its stored mode."""
    with _opened(path) as image:
        image.load()  # decode fully here: a truncated file fails now, not later
        mode = image.mode
        if image.size != size and not resize:
            raise DataError(
                f"image {path} is {image.size[0]}x{image.size[1]} but the first training "
                f"image is {size[0]}x{size[1]}; the images must share one size: pass "
                "--image-size N to resize every image to NxN"
            )
        rgb = _as_rgb(image, path)
        if rgb.size != size:
            # Pillow's bilinear filter widens with the scale: an antialiased reduction.
            rgb = rgb.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(rgb), mode


def _as_rgb(image: Image.Image, path: Path) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):  # 16-bit greyscale: its top 8 bits, not a clipped copy
        grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("I", "F"):
        kind = "integer" if image.mode == "I" else "floating-point"
        raise DataError(
            f"image {path} holds 32-bit {kind} pixels (mode {image.mode}), whose range rtk "
            "cannot know; convert it to an 8-bit (or 16-bit greyscale) PNG"
        )
    return image.convert("RGB")
