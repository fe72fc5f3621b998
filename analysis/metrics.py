"""Test-set predictions from a checkpoint (PyTorch) or an ONNX model (ONNX Runtime), and the
confusion matrix and per-class report computed from them with scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix

from analysis.sources import SourceError, read_checkpoint
from exporters import metadata
from exporters.errors import MetadataError
from toolkit.data import Dataset, Normalization, check_fits, normalize
from toolkit.data.dataset import imbalance
from toolkit.models import batched_logits


@dataclass(frozen=True)
class Predictions:
    source: Path
    engine: str  # "pytorch" or "onnxruntime"
    classes: list[str]
    labels: np.ndarray
    predicted: np.ndarray


@dataclass(frozen=True)
class ClassRow:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassReport:
    source: Path
    engine: str
    rows: list[ClassRow]  # one per class, then "macro avg" and "weighted avg"
    accuracy: float
    images: int
    imbalance: float  # the largest class's test images over the smallest's


@dataclass(frozen=True)
class Confusion:
    source: Path
    engine: str
    classes: list[str]
    matrix: list[list[float]]  # rows: true class, columns: predicted class
    normalized: bool
    accuracy: float
    imbalance: float  # the largest class's test images over the smallest's


def predict_test(source: Path, dataset: Dataset, *, batch_size: int = 500) -> Predictions:
    """Top-1 predictions on the whole test split from a run directory, a ``.pt`` checkpoint
    (PyTorch, fp32) or an ``.onnx`` model (ONNX Runtime on the CPU)."""
    images = dataset.test.images
    if source.suffix == ".onnx":
        from exporters.predict import read_meta
        from exporters.runtime import create_session
        from exporters.validate import run_onnx

        if not source.is_file():
            raise SourceError(f"model {source} does not exist")
        session, _ = create_session(source, "cpu")
        props = dict(session.get_modelmeta().custom_metadata_map)
        if metadata.CLASSES not in props:
            raise MetadataError(
                f"{source} carries no class names ({metadata.CLASSES}); export it with `rtk export`"
            )
        # The model's own input size and normalisation, read as rtk predict reads them.
        meta = read_meta(props, session.get_inputs()[0].shape)
        classes = meta.classes
        check_fits(classes, meta.input_size, dataset, source)
        normalization = Normalization(tuple(meta.mean), tuple(meta.std), "the model's metadata")
        logits = run_onnx(session, normalize(images, normalization), batch_size)
        predicted = logits.argmax(1)
        engine = "onnxruntime"
    else:
        from toolkit.training import RunDir, model_from_checkpoint

        payload = read_checkpoint(source)
        classes = list(payload["classes"])
        check_fits(classes, payload["input_size"], dataset, source)
        # A finished run kept the predictions of its own test pass: the same weights, the
        # same images, the same PyTorch forward; no need to run 10,000 images again.
        stored = (
            RunDir(source).read_test_predictions(
                source=str(dataset.source.path), images=len(images), classes=classes
            )
            if source.is_dir()
            else None
        )
        if stored is not None:
            predicted = np.asarray(stored)
        else:
            model = model_from_checkpoint(payload)
            norm = Normalization.from_record(payload["normalization"])
            inputs = (normalize(batch, norm) for batch in images.split(batch_size))
            predicted = batched_logits(model, inputs).argmax(1).numpy()
        engine = "pytorch"
    return Predictions(
        source=source,
        engine=engine,
        classes=classes,
        labels=dataset.test.labels.numpy(),
        predicted=predicted,
    )


def class_report(predictions: Predictions) -> ClassReport:
    """Per-class precision, recall, F1 and support: scikit-learn's ``classification_report``."""
    report = classification_report(
        predictions.labels,
        predictions.predicted,
        labels=list(range(len(predictions.classes))),
        target_names=predictions.classes,
        output_dict=True,
        zero_division=0,
    )
    names = [*predictions.classes, "macro avg", "weighted avg"]
    rows = [
        ClassRow(
            name=name,
            precision=float(report[name]["precision"]),
            recall=float(report[name]["recall"]),
            f1=float(report[name]["f1-score"]),
            support=int(report[name]["support"]),
        )
        for name in names
    ]
    accuracy = float((predictions.labels == predictions.predicted).mean())
    return ClassReport(
        predictions.source,
        predictions.engine,
        rows,
        accuracy,
        len(predictions.labels),
        imbalance=_imbalance(predictions),
    )


def _imbalance(predictions: Predictions) -> float:
    counts = np.bincount(predictions.labels, minlength=len(predictions.classes))
    return imbalance(counts.tolist())


def confusion(predictions: Predictions, *, normalize_rows: bool = False) -> Confusion:
    matrix = confusion_matrix(
        predictions.labels,
        predictions.predicted,
        labels=list(range(len(predictions.classes))),
        normalize="true" if normalize_rows else None,
    )
    return Confusion(
        source=predictions.source,
        engine=predictions.engine,
        classes=predictions.classes,
        matrix=matrix.tolist(),
        normalized=normalize_rows,
        accuracy=float((predictions.labels == predictions.predicted).mean()),
        imbalance=_imbalance(predictions),
    )
