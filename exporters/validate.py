"""Validation after every export: the ONNX checker, an ONNX Runtime session, a dynamic batch
that really works, then parity with PyTorch on real test images.

Like optimum's validator, it collects every failure and raises one ``ExportError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from exporters.errors import ExportError
from exporters.runtime import create_session
from toolkit.data import Dataset, Split, normalize

FP32_TOLERANCE = 1e-4  # max |logit difference| allowed between PyTorch and ONNX Runtime, fp32
MAX_ACC_DROP = 0.01  # FP16 and INT8 may lose at most one point of accuracy against fp32
ODD_BATCH = 37  # a batch size no exporter would guess, to prove the batch is dynamic


@dataclass(frozen=True)
class ParityReport:
    precision: str
    images: int
    max_abs_diff: float  # against PyTorch fp32 logits
    tolerance: float | None  # enforced for fp32 only
    agreement: float  # top-1 agreement with PyTorch fp32
    acc_torch: float  # PyTorch fp32 accuracy on the same images
    acc_onnx: float


def parity_images(dataset: Dataset, count: int) -> Split:
    """``count`` test images spread evenly over the test split (which is sorted by class)."""
    count = max(1, min(count, len(dataset.test)))
    index = torch.linspace(0, len(dataset.test) - 1, count).round().long()
    return dataset.test.subset(index)


def run_onnx(session: object, images: torch.Tensor, batch_size: int = 250) -> np.ndarray:
    """Logits for float32 (N, 3, 32, 32) inputs, in batches."""
    outputs = [
        session.run(None, {"input": images[i : i + batch_size].numpy()})[0]  # type: ignore[attr-defined]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32)


def validate_export(
    path: Path,
    model: torch.nn.Module,
    dataset: Dataset,
    *,
    precision: str,
    images: int,
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

    split = parity_images(dataset, images)
    inputs = normalize(split.images)
    for size in (1, ODD_BATCH):
        batch = inputs[torch.arange(size) % len(inputs)]  # repeated when there are fewer images
        shape = run_onnx(session, batch).shape
        if shape != (size, 10):
            failures.append(f"batch {size} gives logits of shape {shape}")
    with torch.inference_mode():
        expected = torch.cat([model(inputs[i : i + 250]) for i in range(0, len(inputs), 250)])
    expected_np = expected.numpy()
    got = run_onnx(session, inputs)
    labels = split.labels.numpy()
    report = ParityReport(
        precision=precision,
        images=len(labels),
        max_abs_diff=float(np.abs(got - expected_np).max()),
        tolerance=FP32_TOLERANCE if precision == "fp32" else None,
        agreement=float((got.argmax(1) == expected_np.argmax(1)).mean()),
        acc_torch=float((expected_np.argmax(1) == labels).mean()),
        acc_onnx=float((got.argmax(1) == labels).mean()),
    )
    if precision == "fp32":
        if not np.isfinite(report.max_abs_diff) or report.max_abs_diff > FP32_TOLERANCE:
            failures.append(
                f"max |logit difference| {report.max_abs_diff:.2e} exceeds {FP32_TOLERANCE:.0e}"
            )
        if report.agreement < 1.0:
            failures.append(f"top-1 agreement with PyTorch is {report.agreement:.2%}, not 100%")
    if precision != "fp32" and reference_acc is not None:
        drop = reference_acc - report.acc_onnx
        if not np.isfinite(got).all() or drop > MAX_ACC_DROP:
            failures.append(
                f"{precision.upper()} accuracy {report.acc_onnx:.2%} is {drop:.2%} below fp32 "
                f"({reference_acc:.2%}); the limit is {MAX_ACC_DROP:.0%}: "
                + ("calibrate on more images (--calib-images) or " if precision == "int8" else "")
                + "keep fp32"
            )
    if failures:
        raise ExportError(f"{label} failed validation: " + "; ".join(failures))
    return report
