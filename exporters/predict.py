"""Classify image files with an exported model, fed as its metadata says."""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from exporters import metadata
from exporters.errors import ExportError, MetadataError
from exporters.runtime import Provider, create_session
from toolkit.errors import RtkError
from toolkit.fileio import parse_json
from toolkit.model_input import MAX_SIDE, MIN_STD, input_size_ok, normalization_ok


@dataclass(frozen=True)
class ModelMeta:
    arch: str | None
    classes: list[str]
    mean: list[float]
    std: list[float]
    input_size: list[int]  # C, H, W
    precision: str | None


@dataclass(frozen=True)
class Guess:
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    image: Path
    original_size: tuple[int, int]  # width, height
    resized: bool
    top: list[Guess]


def _prop(props: dict[str, str], key: str, kind: type) -> Any:
    """A JSON metadata entry of the model, of ``kind``; None when absent."""
    if key not in props:
        return None
    try:
        value = parse_json(props[key])
    except ValueError as exc:
        raise MetadataError(f"the model's {key} metadata is not JSON ({exc})") from None
    if not isinstance(value, kind):
        raise MetadataError(f"the model's {key} metadata is not a JSON {kind.__name__}")
    return value


def read_meta(
    props: dict[str, str],
    input_shape: list[object],
    *,
    classes: list[str] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> ModelMeta:
    """The model's own metadata, with the caller's overrides; a clear error when neither."""
    norm = _prop(props, metadata.NORMALIZATION, dict) or {}
    meta_classes = _prop(props, metadata.CLASSES, list)
    if meta_classes is not None and not all(isinstance(c, str) for c in meta_classes):
        raise MetadataError(f"the model's {metadata.CLASSES} metadata is not a list of names")
    chosen_classes = classes or meta_classes
    chosen_mean = mean or norm.get("mean")
    chosen_std = std or norm.get("std")
    missing = [
        flag
        for flag, value in (
            ("--classes", chosen_classes),
            ("--mean", chosen_mean),
            ("--std", chosen_std),
        )
        if not value
    ]
    if missing:
        raise MetadataError(
            f"the model carries no rtk metadata for {', '.join(missing)}; pass them, "
            "for example --classes cat,dog --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5"
        )
    assert chosen_classes and chosen_mean and chosen_std
    if not normalization_ok(chosen_mean, chosen_std):
        if mean and std:
            raise MetadataError(
                f"--mean and --std take 3 finite numbers each (std at least {MIN_STD}), got "
                f"{chosen_mean} and {chosen_std}"
            )
        # Name where each value came from: a broken file's values are no fault of the flags.
        stored = f"the model's {metadata.NORMALIZATION} metadata"
        got = (
            f"mean {chosen_mean!r} and std {chosen_std!r} from {stored}"
            if not (mean or std)
            else f"mean {chosen_mean!r} (from {'--mean' if mean else stored}) and std "
            f"{chosen_std!r} (from {'--std' if std else stored})"
        )
        raise MetadataError(
            f"{got} are not 3 finite numbers each (std at least {MIN_STD}); pass --mean and "
            "--std, or re-export the model with `rtk export`"
        )
    size = [d if isinstance(d, int) else None for d in input_shape[1:]]
    if len(size) == 3 and all(d is not None for d in size):
        if not input_size_ok(size):  # a fixed input of the graph itself, resized to at once
            raise MetadataError(
                f"the model's input {size} is no [channels, height, width] of positive sizes "
                f"up to {MAX_SIDE}: rtk predict cannot resize images to it"
            )
    else:
        size = _prop(props, metadata.INPUT_SIZE, list) or [3, 32, 32]
        if not input_size_ok(size):
            raise MetadataError(
                f"the model's {metadata.INPUT_SIZE} metadata {size} is no [channels, height, "
                f"width] of positive sizes up to {MAX_SIDE}; re-export it with `rtk export`"
            )
    return ModelMeta(
        arch=props.get(metadata.ARCH),
        classes=list(chosen_classes),
        mean=[float(v) for v in chosen_mean],
        std=[float(v) for v in chosen_std],
        input_size=[int(d) for d in size],  # type: ignore[arg-type]
        precision=props.get(metadata.PRECISION),
    )


# Caps checked before any pixel is decoded: a small PNG or JPEG can declare a huge image (a
# decompression bomb) whose RGB float copy would take the machine's memory.
MAX_IMAGE_BYTES = 64 * 2**20
MAX_IMAGE_PIXELS = 8192 * 8192  # 67 megapixels, beyond any camera photo; 800 MB as RGB float


def _too_large(path: Path, what: str) -> ExportError:
    return ExportError(
        f"image {path} is {what}, over rtk predict's cap of {MAX_IMAGE_BYTES // 2**20} MiB and "
        f"{MAX_IMAGE_PIXELS:,} pixels; downscale it first"
    )


def _load_image(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int], bool]:
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise ExportError(f"image {path} does not exist") from exc
    except OSError as exc:
        raise ExportError(f"cannot read image {path} ({exc.strerror})") from exc
    if not stat.S_ISREG(info.st_mode):  # opening a FIFO would wait forever for a writer
        raise ExportError(f"image {path} is not a regular file; give an image file")
    if info.st_size > MAX_IMAGE_BYTES:
        raise _too_large(path, f"{info.st_size / 2**20:,.0f} MiB")
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise _too_large(path, f"{width}x{height} pixels")
            image.load()
            rgb = image.convert("RGB")
    except Image.DecompressionBombError as exc:  # Pillow's own, larger cap, hit while opening
        raise _too_large(path, "too many pixels for Pillow") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ExportError(f"cannot read image {path} ({exc}); use a PNG or JPEG file") from exc
    original = rgb.size
    resized = original != size
    if resized:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.float32) / 255.0, original, resized


Runner = Callable[[np.ndarray, ModelMeta], np.ndarray]  # normalised batch -> logits


def _ort_runner(model: Path, provider: Provider) -> tuple[dict[str, str], list[object], Runner]:
    session, _ = create_session(model, provider)
    name = session.get_inputs()[0].name
    props = dict(session.get_modelmeta().custom_metadata_map)

    def run(batch: np.ndarray, meta: ModelMeta) -> np.ndarray:
        return session.run(None, {name: batch})[0]

    return props, list(session.get_inputs()[0].shape), run


def _openvino_runner(model: Path) -> tuple[dict[str, str], list[object], Runner]:
    """OpenVINO on the CPU, in the file's own precision (fp32, or int8 for a Q/DQ copy),
    verified as ``rtk bench --runtime openvino`` verifies it."""
    from exporters.openvino import openvino_logits

    graph = metadata.load_graph(model)
    props = metadata.props(graph)
    dims = graph.graph.input[0].type.tensor_type.shape.dim if graph.graph.input else []
    shape: list[object] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]

    def run(batch: np.ndarray, meta: ModelMeta) -> np.ndarray:
        precision = meta.precision or "fp32"
        if precision not in ("fp32", "int8"):
            raise ExportError(
                f"{model} is {precision}; OpenVINO's CPU plugin computes such a file in fp32 or "
                "bf16, so predict with its fp32 or int8 copy (or --runtime ort)"
            )
        return openvino_logits(model, batch, precision=precision)  # type: ignore[arg-type]

    return props, shape, run


def predict(
    model: Path,
    images: list[Path],
    *,
    top_k: int = 3,
    provider: Provider = "cpu",
    runtime: str = "ort",
    classes: list[str] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> tuple[ModelMeta, list[Prediction]]:
    if top_k < 1:
        raise ExportError(f"--top-k must be at least 1, got {top_k}")
    if runtime not in ("ort", "openvino"):
        raise ExportError(f"--runtime is ort or openvino, got {runtime!r}")
    if not model.is_file():
        raise ExportError(f"model {model} does not exist")
    if runtime == "openvino" and provider != "cpu":
        raise ExportError(
            f"OpenVINO runs on the CPU here, not on {provider}: use --runtime ort with "
            "--provider, or drop --provider"
        )
    props, shape, run = (
        _ort_runner(model, provider) if runtime == "ort" else _openvino_runner(model)
    )
    meta = read_meta(props, shape, classes=classes, mean=mean, std=std)
    channels, height, width = meta.input_size
    if channels != 3:
        raise ExportError(f"{model} takes {channels}-channel input; rtk predict feeds RGB images")
    mean_a = np.array(meta.mean, dtype=np.float32)
    std_a = np.array(meta.std, dtype=np.float32)
    loaded = [_load_image(path, (width, height)) for path in images]
    batch = np.stack([(pixels - mean_a) / std_a for pixels, _, _ in loaded]).transpose(0, 3, 1, 2)
    try:
        logits = run(np.ascontiguousarray(batch, dtype=np.float32), meta)
    except RtkError:
        raise
    except Exception as exc:  # ORT's InvalidArgument for a shape the model does not take
        first = str(exc).strip().splitlines()[0]
        raise ExportError(f"{model} cannot take these images: {first}") from exc
    if logits.shape[1] != len(meta.classes):
        raise MetadataError(
            f"{model} gives {logits.shape[1]} outputs but {len(meta.classes)} class names"
        )
    # The inputs are finite (pixels in [0, 1], std at least MIN_STD), so the weights are at
    # fault; softmax would turn them into "nan%" guesses that look like an answer.
    broken = [path for path, row in zip(images, logits, strict=True) if not np.isfinite(row).all()]
    if broken:
        raise ExportError(
            f"{model} produced non-finite logits (NaN or infinity) for {len(broken)} of "
            f"{len(images)} images (first {broken[0]}): its weights are broken; export a "
            "checkpoint of a run that trained without diverging"
        )
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    probabilities = shifted / shifted.sum(1, keepdims=True)
    predictions = []
    for path, (_, original, resized), probs in zip(images, loaded, probabilities, strict=True):
        order = np.argsort(-probs)[:top_k]
        top = [Guess(meta.classes[i], float(probs[i])) for i in order]
        predictions.append(Prediction(path, original, resized, top))
    return meta, predictions
