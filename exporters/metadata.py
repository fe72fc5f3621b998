"""The names an rtk ONNX file is read by: its input and output, and its metadata keys.

Written by ``exporters.convert`` and read by prediction, metrics and benchmarks; spelt here
only, so a reader and the writer cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

import onnx

INPUT_NAME = "input"  # float32 (N, 3, H, W), normalised as NORMALIZATION says
OUTPUT_NAME = "logits"  # float32 (N, classes)

# ONNX metadata_props (all values strings; JSON where the value is structured).
ARCH = "rtk.arch"
CLASSES = "rtk.classes"
NORMALIZATION = "rtk.normalization"
INPUT_SIZE = "rtk.input_size"
IMAGE_SIZE = "rtk.image_size"
PRECISION = "rtk.precision"
VAL_ACC = "rtk.val_acc"
TEST_ACC = "rtk.test_acc"
CHECKPOINT_SHA256 = "rtk.checkpoint_sha256"
CHECKPOINT_EPOCH = "rtk.checkpoint_epoch"
VERSION = "rtk.version"


def props(model: onnx.ModelProto) -> dict[str, str]:
    """A model's metadata_props as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def load_graph(path: Path) -> onnx.ModelProto:
    """An ONNX file's graph and metadata (weights kept external where they are), or one line
    saying it is no ONNX model."""
    from exporters.errors import ExportError

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ExportError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from exc
