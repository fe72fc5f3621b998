"""Validation after every export: the ONNX checker, an ONNX Runtime session, a dynamic batch
that really works, then parity with PyTorch on real test images (or, for a model whose
weights were never trained, on seeded noise).

Like optimum's validator, it collects every failure and raises one ``ExportError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch

from exporters.errors import ExportError
from exporters.metadata import INPUT_NAME
from exporters.runtime import create_session
from toolkit.data import Dataset, Normalization, normalize
from toolkit.models import batched_logits

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

# Max |logit difference| allowed between PyTorch and ONNX Runtime in fp32 on an image: the
# larger of FP32_TOLERANCE and FP32_RELATIVE times its largest |logit|. Float32 sums taken in
# another order differ in proportion to their size, and a barely trained network (BatchNorm
# statistics of a few steps) can give logits of 1e6; a trained one's, about 10-30, keep 1e-4.
FP32_TOLERANCE = 1e-4
FP32_RELATIVE = 1e-5
MAX_ACC_DROP = 0.01  # FP16 and INT8 may lose at most one point of accuracy against fp32
ODD_BATCH = 37  # a batch size no exporter would guess, to prove the batch is dynamic
BATCH = 250  # images per forward pass, in PyTorch and ONNX Runtime alike


@dataclass(frozen=True)
class ParityReport:
    precision: str
    images: int
    max_abs_diff: float  # against PyTorch fp32 logits
    tolerance: float | None  # fp32 only: the limit of the image nearest its limit (or past it)
    agreement: float  # top-1 agreement with PyTorch fp32
    acc_torch: float | None  # PyTorch fp32 accuracy on the same images; None on noise
    acc_onnx: float | None


@dataclass(frozen=True)
class ParityInputs:
    """What every file of one export is checked on: normalised inputs, labels where real."""

    images: torch.Tensor  # float32 (N, C, H, W), normalised
    labels: torch.Tensor | None  # None for noise: there is no accuracy to report


def parity_inputs(dataset: Dataset | None, count: int, payload: dict[str, Any]) -> ParityInputs:
    """``count`` test images spread evenly over the test split (which is sorted by class);
    without a dataset, seeded noise over the whole input range, which checks the graph as
    well for weights that were never trained. Normalised as the checkpoint ``payload`` says,
    at its input size."""
    norm = Normalization.from_record(payload["normalization"])
    if dataset is None:
        generator = torch.Generator().manual_seed(0)
        noise = torch.rand((count, *payload["input_size"]), generator=generator)
        return ParityInputs(normalize(noise, norm), None)
    count = max(1, min(count, len(dataset.test)))
    index = torch.linspace(0, len(dataset.test) - 1, count).round().long()
    split = dataset.test.subset(index)
    return ParityInputs(normalize(split.images, norm), split.labels)


def run_onnx(
    session: InferenceSession, images: torch.Tensor, batch_size: int = BATCH
) -> np.ndarray:
    """Logits for float32 (N, C, H, W) inputs, in batches."""
    outputs = [
        session.run(None, {INPUT_NAME: batch.numpy()})[0] for batch in images.split(batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32)


def _fp32_worst(got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """The largest |logit difference| relative to its image's limit, as (difference, limit)."""
    limits = np.maximum(FP32_TOLERANCE, FP32_RELATIVE * np.abs(expected).max(axis=1))
    differences = np.abs(got - expected).max(axis=1)
    worst = int(np.argmax(differences / limits))
    return float(differences[worst]), float(limits[worst])


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
        tolerance=_fp32_worst(got, expected)[1] if precision == "fp32" else None,
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
    expected = batched_logits(model, images.split(BATCH)).numpy()
    for size in (1, ODD_BATCH):
        batch = images[torch.arange(size) % len(images)]  # repeated when there are fewer images
        shape = run_onnx(session, batch).shape
        if shape != (size, expected.shape[1]):
            failures.append(f"batch {size} gives logits of shape {shape}")
    got = run_onnx(session, images)
    report = compare_logits(got, expected, inputs.labels, precision)
    got_finite = np.isfinite(report.max_abs_diff)
    if precision == "fp32":
        difference, limit = _fp32_worst(got, expected)
        if not got_finite or difference > limit:
            failures.append(f"max |logit difference| {difference:.2e} exceeds {limit:.0e}")
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
