"""Everything ONNX: export, validation, quantization, and the one ONNX Runtime session factory."""
