"""Checkpoint -> ONNX: the model in eval mode, a dynamic batch, metadata, and no half-files.

Every file is validated before it is given its name (``exporters.validate``); a file that
fails validation is deleted, so an ``.onnx`` file under its final name is always a checked one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import onnx
import torch

from exporters.errors import ExportError
from exporters.opset import MIN_OPSET, opset_support
from exporters.quantize import to_fp16, to_int8
from exporters.validate import ParityReport, validate_export
from toolkit import __version__
from toolkit.data import Dataset, Split
from toolkit.fileio import atomic_path
from toolkit.training import load_checkpoint, model_from_checkpoint

Precision = Literal["fp32", "fp16", "int8"]
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    checkpoint: Path
    arch: str
    precision: Precision
    opset: int
    size_bytes: int
    nodes: int
    simplified: bool
    parity: ParityReport


def checkpoint_of(target: Path) -> Path:
    """A run directory stands for its ``best.pt``."""
    return target / "best.pt" if target.is_dir() else target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _metadata(payload: dict[str, Any], checkpoint: Path, precision: Precision) -> dict[str, str]:
    """What a reader needs to use the file alone, as ONNX metadata_props (strings)."""
    metrics = payload.get("metrics") or {}
    return {
        "rtk.arch": payload["arch"],
        "rtk.classes": json.dumps(payload["classes"]),
        "rtk.normalization": json.dumps(payload["normalization"]),
        "rtk.input_size": json.dumps(payload["input_size"]),
        "rtk.precision": precision,
        "rtk.val_acc": json.dumps(metrics.get("val_acc")),
        "rtk.test_acc": json.dumps(_test_acc(checkpoint)),
        "rtk.checkpoint_sha256": file_sha256(checkpoint),
        "rtk.checkpoint_epoch": str(payload.get("epoch")),
        "rtk.version": __version__,
    }


def _test_acc(checkpoint: Path) -> float | None:
    """The run's test accuracy (metrics.json beside the checkpoint), when there is one."""
    metrics = checkpoint.parent / "metrics.json"
    try:
        return float(json.loads(metrics.read_text())["test_acc"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def to_onnx_proto(model: torch.nn.Module, opset: int) -> onnx.ModelProto:
    """The eval-mode graph with a dynamic batch: input ``input``, output ``logits``."""
    batch = torch.export.Dim("batch", min=1, max=65_536)
    try:
        program = torch.onnx.export(
            model,
            (torch.zeros(2, 3, 32, 32),),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {0: batch}},
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    except Exception as exc:  # the exporter raises many types; all mean the same to a user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx.export failed at opset {opset}: {first}") from exc
    assert program is not None
    return program.model_proto


def simplify_proto(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    slim = onnxslim.slim(model)
    dims = slim.graph.input[0].type.tensor_type.shape.dim
    if not dims or not dims[0].dim_param:  # the batch must stay dynamic
        raise ExportError("onnxslim fixed the batch dimension; export with --no-simplify")
    return slim


def export_onnx(
    target: Path,
    *,
    dataset: Dataset,
    out_dir: Path | None = None,
    opset: int | None = None,
    simplify: bool = True,
    fp16: bool = False,
    int8: bool = False,
    calib_images: int = 512,
    parity_images: int = 1000,
) -> list[ExportResult]:
    """Export a checkpoint (or a run directory's best.pt) to validated ONNX files: fp32, and
    on request fp16 and int8 copies checked against it.

    Files go beside the checkpoint as ``model[.fp16|.int8].onnx``, or into ``out_dir`` named
    after the run directory.
    """
    checkpoint = checkpoint_of(target)
    payload = load_checkpoint(checkpoint)
    support = opset_support()
    opset = support.default if opset is None else opset
    if not MIN_OPSET <= opset <= support.default:
        raise ExportError(
            f"opset {opset} is outside what the exporter and ONNX Runtime both support "
            f"({MIN_OPSET}-{support.default}); pick one in that range"
        )
    stem = checkpoint.parent.name if out_dir is not None else "model"
    folder = out_dir if out_dir is not None else checkpoint.parent
    model = model_from_checkpoint(payload).eval()
    proto = to_onnx_proto(model, opset)
    if simplify:
        proto = simplify_proto(proto)
    onnx.helper.set_model_props(proto, _metadata(payload, checkpoint, "fp32"))

    results = []
    fp32_path = folder / f"{stem}.onnx"
    for precision in ("fp16", "int8"):  # copies of an older export would no longer match it
        (folder / f"{stem}.{precision}.onnx").unlink(missing_ok=True)
    with atomic_path(fp32_path) as tmp:
        onnx.save(proto, tmp)
        fp32_report = validate_export(
            tmp, model, dataset, precision="fp32", images=parity_images,
            reference_acc=None, label=fp32_path.name,
        )  # fmt: skip
    results.append(_result(fp32_path, checkpoint, payload, "fp32", opset, simplify, fp32_report))
    variants: list[tuple[Precision, Callable[[Path, Path], None]]] = []
    if fp16:
        variants.append(("fp16", to_fp16))
    if int8:
        variants.append(
            ("int8", partial(to_int8, calibration=_calibration_images(dataset, calib_images)))
        )
    for precision, convert in variants:
        path = folder / f"{stem}.{precision}.onnx"
        with atomic_path(path) as tmp:
            convert(fp32_path, tmp)
            report = validate_export(
                tmp, model, dataset, precision=precision, images=parity_images,
                reference_acc=fp32_report.acc_onnx, label=path.name,
            )  # fmt: skip
        results.append(_result(path, checkpoint, payload, precision, opset, simplify, report))
    return results


def _result(
    path: Path,
    checkpoint: Path,
    payload: dict[str, Any],
    precision: Precision,
    opset: int,
    simplified: bool,
    parity: ParityReport,
) -> ExportResult:
    return ExportResult(
        onnx_path=path,
        checkpoint=checkpoint,
        arch=payload["arch"],
        precision=precision,
        opset=opset,
        size_bytes=path.stat().st_size,
        nodes=len(onnx.load(str(path), load_external_data=False).graph.node),
        simplified=simplified,
        parity=parity,
    )


def _calibration_images(dataset: Dataset, count: int) -> Split:
    """A seeded random sample of training images: calibration never sees the test split."""
    generator = torch.Generator().manual_seed(0)
    index = torch.randperm(len(dataset.train), generator=generator)[:count]
    return dataset.train.subset(index)
