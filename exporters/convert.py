"""Checkpoint -> ONNX: the model in eval mode, a dynamic batch, metadata, and no half-files.

Every file is validated before it is given its name (``exporters.validate``), and the files of
one export replace the previous ones together, only once all of them pass: an ``.onnx`` file
under its final name is always a checked one, and a failed export loses no earlier model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import onnx
import torch

from exporters import metadata
from exporters.errors import ExportError
from exporters.opset import MIN_OPSET, opset_support
from exporters.quantize import Int8Target, to_fp16, to_int8
from exporters.validate import ParityReport, parity_inputs, validate_export
from toolkit import __version__
from toolkit.data import Dataset, Normalization, Split, check_fits
from toolkit.errors import RtkError
from toolkit.fileio import atomic_paths, remove_leftover_temps
from toolkit.training import RunDir, SeedGroup, load_checkpoint, model_from_checkpoint

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")


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
    return RunDir(target).best if target.is_dir() else target


def export_name(target: Path) -> str:
    """The name a target's files take in a shared ``--out`` folder: its run's folder name
    (``GROUP-seed-N`` for a seed group's run, whose folder is seed-N in every group), ``RUN-last``
    for a run's other checkpoint, or a loose checkpoint's file stem."""
    checkpoint = checkpoint_of(target).absolute()
    run = checkpoint.parent
    if checkpoint.name != RunDir.BEST:  # its run's name too, when it lies in a run folder
        in_run = (run / RunDir.CONFIG).is_file()
        return f"{run.name}-{checkpoint.stem}" if in_run else checkpoint.stem
    in_group = SeedGroup.is_group(run.parent)
    return f"{run.parent.name}-{run.name}" if in_group else run.name


def export_paths(target: Path, out_dir: Path | None) -> dict[Precision, Path]:
    """Where each precision's file goes: ``model[.fp16|.int8].onnx`` beside the checkpoint,
    or ``NAME[.fp16|.int8].onnx`` in ``out_dir`` (``export_name``)."""
    stem = export_name(target) if out_dir is not None else "model"
    folder = out_dir if out_dir is not None else checkpoint_of(target).parent
    return {p: folder / (f"{stem}.onnx" if p == "fp32" else f"{stem}.{p}.onnx") for p in PRECISIONS}


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
        metadata.ARCH: payload["arch"],
        metadata.CLASSES: json.dumps(payload["classes"]),
        metadata.NORMALIZATION: json.dumps(payload["normalization"]),
        metadata.INPUT_SIZE: json.dumps(payload["input_size"]),
        # The side the run resized its dataset's images to (None: their stored size), so a
        # reader decodes the dataset as the model saw it.
        metadata.IMAGE_SIZE: json.dumps((payload.get("config") or {}).get("image_size")),
        metadata.PRECISION: precision,
        metadata.VAL_ACC: json.dumps(metrics.get("val_acc")),
        metadata.TEST_ACC: json.dumps(_test_acc(checkpoint)),
        metadata.CHECKPOINT_SHA256: file_sha256(checkpoint),
        metadata.CHECKPOINT_EPOCH: str(payload.get("epoch")),
        metadata.VERSION: __version__,
    }


def _test_acc(checkpoint: Path) -> float | None:
    """The run's test accuracy (metrics.json beside the checkpoint), when there is one."""
    try:
        return float(RunDir(checkpoint.parent).read_metrics()["test_acc"])
    except (RtkError, ValueError, TypeError):
        return None


def check_targets(targets: list[Path], dataset: Dataset) -> None:
    """Every target's model must take ``dataset``'s images and classes, checked for all before
    the first file is written: one export command writes all of its files or none."""
    for target in targets:
        checkpoint = checkpoint_of(target)
        payload = load_checkpoint(checkpoint)
        check_fits(payload["classes"], payload["input_size"], dataset, checkpoint)


def to_onnx_proto(model: torch.nn.Module, opset: int, input_size: Sequence[int]) -> onnx.ModelProto:
    """The eval-mode graph for inputs of ``input_size`` ([C, H, W]) with a dynamic batch,
    named as ``exporters.metadata`` says."""
    batch = torch.export.Dim("batch", min=1, max=65_536)
    try:
        program = torch.onnx.export(
            model,
            (torch.zeros(2, *input_size),),
            input_names=[metadata.INPUT_NAME],
            output_names=[metadata.OUTPUT_NAME],
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
    dataset: Dataset | None,
    out_dir: Path | None = None,
    opset: int | None = None,
    simplify: bool = True,
    fp16: bool = False,
    int8: bool = False,
    int8_target: Int8Target = "cpu",
    calib_images: int = 512,
    parity_images: int = 1000,
) -> list[ExportResult]:
    """Export a checkpoint (or a run directory's best.pt) to validated ONNX files: fp32, and
    on request fp16 and int8 copies checked against it (int8 in the recipe of
    ``int8_target``: see ``exporters.quantize``).

    Files go beside the checkpoint as ``model[.fp16|.int8].onnx``, or into ``out_dir`` named
    after the run (``export_paths``). They replace the previous export only once every new file has
    passed; copies of a precision not made this time are removed then, since they no longer
    match the new fp32 file. Without a dataset (fresh weights, as ``rtk bench ARCH`` uses),
    parity runs on seeded noise and only fp32 can be made.
    """
    if dataset is None and (fp16 or int8):
        raise ExportError(
            "FP16 and INT8 copies are judged by their accuracy on real test images: "
            "give the dataset (--data)"
        )
    checkpoint = checkpoint_of(target)
    payload = load_checkpoint(checkpoint)
    if dataset is not None:  # its test images are the parity check's: the model's kind only
        check_fits(payload["classes"], payload["input_size"], dataset, checkpoint)
    support = opset_support()
    opset = support.default if opset is None else opset
    if not MIN_OPSET <= opset <= support.default:
        raise ExportError(
            f"opset {opset} is outside what the exporter and ONNX Runtime both support "
            f"({MIN_OPSET}-{support.default}); pick one in that range"
        )
    paths = export_paths(target, out_dir)
    for path in paths.values():  # half-files of an export that was killed
        remove_leftover_temps(path)
    model = model_from_checkpoint(payload).eval()
    proto = to_onnx_proto(model, opset, payload["input_size"])
    if simplify:
        proto = simplify_proto(proto)
    onnx.helper.set_model_props(proto, _metadata(payload, checkpoint, "fp32"))
    inputs = parity_inputs(dataset, parity_images, payload)
    copies: dict[Precision, Callable[[Path, Path], None]] = {}
    if fp16:
        copies["fp16"] = to_fp16
    if int8:
        assert dataset is not None  # refused above
        calibration = _calibration_images(dataset, calib_images)
        copies["int8"] = partial(
            to_int8,
            calibration=calibration,
            normalization=Normalization.from_record(payload["normalization"]),
            target=int8_target,
        )
    made: list[Precision] = ["fp32", *copies]

    reports: dict[Precision, ParityReport] = {}
    try:
        with atomic_paths([paths[p] for p in made]) as tmps:
            staged = dict(zip(made, tmps, strict=True))
            onnx.save(proto, staged["fp32"])
            for precision in made:
                if precision != "fp32":
                    copies[precision](staged["fp32"], staged[precision])
                reports[precision] = validate_export(
                    staged[precision], model, inputs, precision=precision,
                    reference_acc=reports["fp32"].acc_onnx if reports else None,
                    label=paths[precision].name,
                )  # fmt: skip
    except OSError as exc:  # a full disk or a read-only folder, while writing
        raise ExportError(
            f"cannot write the ONNX files in {paths['fp32'].parent} ({exc.strerror or exc}); "
            "the files there are as they were: free disk space or export elsewhere (--out)"
        ) from exc
    for precision in PRECISIONS:
        if precision not in made:
            paths[precision].unlink(missing_ok=True)
    return [_result(paths[p], checkpoint, payload, p, opset, simplify, reports[p]) for p in made]


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
