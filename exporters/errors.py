"""The exporter's errors: each names the problem and the fix, and exits with code 2."""

from __future__ import annotations

from toolkit.errors import RtkError


class ExportError(RtkError):
    """The export could not be made or does not hold up; no file that looks valid is left."""


class MetadataError(RtkError):
    """An ONNX model lacks what rtk needs to feed it (class names, normalisation)."""
