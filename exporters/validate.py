"""Validation after every export: the ONNX checker, an ONNX Runtime session, a dynamic batch
that really works, then parity with PyTorch on real test images (or, for a model whose
weights were never trained, on seeded noise).

Like optimum's validator, it collects every failure and raises one ``ExportError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch

from exporters.errors import ExportError
from exporters.metadata import INPUT_NAME
from exporters.runtime import create_session
from toolkit.data import Dataset, normalize
from toolkit.models import batched_logits

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

FP32_TOLERANCE = 1e-4  # max |logit difference| allowed between PyTorch and ONNX Runtime, fp32
MAX_ACC_DROP = 0.01  # FP16 and INT8 may lose at most one point of accuracy against fp32
ODD_BATCH = 37  # a batch size no exporter would guess, to prove the batch is dynamic
BATCH = 250  # images per forward pass, in PyTorch and ONNX Runtime alike


@dataclass(frozen=True)
class ParityReport:
    precision: str
    images: int
    max_abs_diff: float  # against PyTorch fp32 logits
    tolerance: float | None  # enforced for fp32 only
    agreement: float  # top-1 agreement with PyTorch fp32
    acc_torch: float | None  # PyTorch fp32 accuracy on the same images; None on noise
    acc_onnx: float | None


@dataclass(frozen=True)
class ParityInputs:
    """What every file of one export is checked on: normalised inputs, labels where real."""

    images: torch.Tensor  # float32 (N, C, H, W), normalised
    labels: torch.Tensor | None  # None for noise: there is no accuracy to report


def parity_inputs(dataset: Dataset | None, count: int, input_size: list[int]) -> ParityInputs:
    """``count`` test images spread evenly over the test split (which is sorted by class);
    without a dataset, seeded noise over the whole input range, which checks the graph as
    well for weights that were never trained."""
    if dataset is None:
        generator = torch.Generator().manual_seed(0)
        return ParityInputs(normalize(torch.rand((count, *input_size), generator=generator)), None)
    count = max(1, min(count, len(dataset.test)))
    index = torch.linspace(0, len(dataset.test) - 1, count).round().long()
    split = dataset.test.subset(index)
    return ParityInputs(normalize(split.images), split.labels)


def run_onnx(
    session: InferenceSession, images: torch.Tensor, batch_size: int = BATCH
) -> np.ndarray:
    """Logits for float32 (N, 3, 32, 32) inputs, in batches."""
    outputs = [
        session.run(None, {INPUT_NAME: batch.numpy()})[0] for batch in images.split(batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32)


def compare_logits(
    got: np.ndarray, expected: np.ndarray, labels: torch.Tensor | None, precision: str
) -> ParityReport:
    """A runtime's logits against PyTorch fp32's on the same inputs: the largest difference,
    top-1 agreement and, on labelled images, both accuracies."""
    truth = labels.numpy() if labels is not None else None
    return ParityReport(
        precision=precision,
        images=len(got),
        max_abs_diff=float(np.abs(got - expected).max()),
        tolerance=FP32_TOLERANCE if precision == "fp32" else None,
        agreement=float((got.argmax(1) == expected.argmax(1)).mean()),
        acc_torch=float((expected.argmax(1) == truth).mean()) if truth is not None else None,
        acc_onnx=float((got.argmax(1) == truth).mean()) if truth is not None else None,
    )


def validate_export(
    path: Path,
    model: torch.nn.Module,
    inputs: ParityInputs,
    *,
    precision: str,
    reference_acc: float | None,
    label: str,
) -> ParityReport:
    """Check ``path`` (named ``label`` in messages); raise ``ExportError`` listing failures."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"onnx.checker rejects {label}: {exc}") from exc
    session, _ = create_session(path, "cpu")
    failures: list[str] = []

    images = inputs.images
    for size in (1, ODD_BATCH):
        batch = images[torch.arange(size) % len(images)]  # repeated when there are fewer images
        shape = run_onnx(session, batch).shape
        if shape != (size, 10):
            failures.append(f"batch {size} gives logits of shape {shape}")
    expected = batched_logits(model, images.split(BATCH)).numpy()
    report = compare_logits(run_onnx(session, images), expected, inputs.labels, precision)
    got_finite = np.isfinite(report.max_abs_diff)
    if precision == "fp32":
        if not got_finite or report.max_abs_diff > FP32_TOLERANCE:
            failures.append(
                f"max |logit difference| {report.max_abs_diff:.2e} exceeds {FP32_TOLERANCE:.0e}"
            )
        if report.agreement < 1.0:
            failures.append(f"top-1 agreement with PyTorch is {report.agreement:.2%}, not 100%")
    if precision != "fp32" and reference_acc is not None:
        drop = reference_acc - report.acc_onnx
        if not got_finite or drop > MAX_ACC_DROP:
            failures.append(
                f"{precision.upper()} accuracy {report.acc_onnx:.2%} is {drop:.2%} below fp32 "
                f"({reference_acc:.2%}); the limit is {MAX_ACC_DROP:.0%}: "
                + ("calibrate on more images (--calib-images) or " if precision == "int8" else "")
                + "keep fp32"
            )
    if failures:
        raise ExportError(f"{label} failed validation: " + "; ".join(failures))
    return report
