"""Accuracy beside speed: every (runtime, precision) that ``rtk bench`` times, run over the whole
test split and set against PyTorch fp32 of the checkpoint the file was exported from.

A faster row is only worth having if it still answers as the trained model does, so each row
gets the same parity figures ``rtk export`` checks (``exporters.validate.compare_logits``): test
accuracy, top-1 agreement with PyTorch fp32 and the largest logit difference. The checkpoint is
the one beside the ONNX file whose SHA-256 the file's metadata records: a file re-exported from
other weights, or copied away from its run, is refused rather than judged against the wrong
model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.latency import BenchTarget
from exporters import metadata
from exporters.convert import file_sha256
from exporters.errors import ExportError
from exporters.openvino import OVPrecision, openvino_logits
from exporters.runtime import create_session
from exporters.validate import (
    BATCH,
    ParityInputs,
    ParityReport,
    compare_logits,
    parity_inputs,
    run_onnx,
)
from toolkit.data import Dataset, check_fits
from toolkit.models import batched_logits
from toolkit.training import RunDir, load_checkpoint, model_from_checkpoint


@dataclass(frozen=True)
class RowAccuracy:
    model: str
    engine: str  # "onnxruntime" or "openvino", as the timed rows name it
    precision: str
    parity: ParityReport  # against PyTorch fp32 of the same checkpoint, whole test split


def source_checkpoint(path: Path) -> Path:
    """The checkpoint ``path`` was exported from: the run's best.pt beside it, verified by the
    SHA-256 the file records."""
    recorded = metadata.props(metadata.load_graph(path)).get(metadata.CHECKPOINT_SHA256)
    checkpoint = RunDir(path.parent).best  # `rtk export RUN` writes its files beside it
    if recorded is None or not checkpoint.is_file():
        raise ExportError(
            f"{path} has no checkpoint beside it to measure accuracy against; bench the run "
            "folder `rtk export RUN --onnx` wrote it into, or drop --accuracy"
        )
    if file_sha256(checkpoint) != recorded:
        raise ExportError(
            f"{path} was exported from other weights than {checkpoint} (the SHA-256 it records "
            f"differs); re-export it with `rtk export {path.parent} --onnx`"
        )
    return checkpoint


def measure_accuracy(
    targets: list[BenchTarget],
    dataset: Dataset,
    *,
    sources: dict[Path, Path],
    runtimes: tuple[str, ...],
    openvino_precisions: dict[Path, list[OVPrecision]],
    threads: int | None,
    count: int | None = None,
) -> list[RowAccuracy]:
    """Each target through each runtime over ``dataset``'s test split (or ``count`` images of it,
    spread evenly over its classes), against PyTorch fp32 of its checkpoint in ``sources`` (file
    -> ``source_checkpoint``); a checkpoint trained on other classes than the dataset's is
    refused."""
    references: dict[Path, tuple[np.ndarray, ParityInputs]] = {}
    rows = []
    for target in targets:
        checkpoint = sources[target.onnx_path]
        if checkpoint not in references:  # PyTorch fp32 once per checkpoint
            payload = load_checkpoint(checkpoint)
            check_fits(payload["classes"], payload["input_size"], dataset, checkpoint)
            inputs = parity_inputs(dataset, count or len(dataset.test), payload)
            model = model_from_checkpoint(payload)
            expected = batched_logits(model, inputs.images.split(BATCH)).numpy()
            references[checkpoint] = expected, inputs
        expected, inputs = references[checkpoint]
        images, labels = inputs.images, inputs.labels
        if "ort" in runtimes:
            session, _ = create_session(target.onnx_path, "cpu", threads=threads)
            got = run_onnx(session, images)
            parity = compare_logits(got, expected, labels, target.precision)
            rows.append(RowAccuracy(target.name, "onnxruntime", target.precision, parity))
        for precision in openvino_precisions.get(target.onnx_path, []):
            got = openvino_logits(
                target.onnx_path, images.numpy(), precision=precision, threads=threads
            )
            rows.append(
                RowAccuracy(
                    target.name,
                    "openvino",
                    precision,
                    compare_logits(got, expected, labels, precision),
                )
            )
    return rows
