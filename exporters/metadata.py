"""The names an rtk ONNX file is read by: its input and output, and its metadata keys.

Written by ``exporters.convert`` and read by prediction, metrics and benchmarks; spelt here
only, so a reader and the writer cannot drift apart.
"""

from __future__ import annotations

INPUT_NAME = "input"  # float32 (N, 3, H, W), normalised as NORMALIZATION says
OUTPUT_NAME = "logits"  # float32 (N, classes)

# ONNX metadata_props (all values strings; JSON where the value is structured).
ARCH = "rtk.arch"
CLASSES = "rtk.classes"
NORMALIZATION = "rtk.normalization"
INPUT_SIZE = "rtk.input_size"
PRECISION = "rtk.precision"
VAL_ACC = "rtk.val_acc"
TEST_ACC = "rtk.test_acc"
CHECKPOINT_SHA256 = "rtk.checkpoint_sha256"
CHECKPOINT_EPOCH = "rtk.checkpoint_epoch"
VERSION = "rtk.version"
