"""Reduced-precision copies of a validated fp32 export: FP16 weights, and static INT8.

INT8 is QDQ static quantization after ``quant_pre_process`` (shape inference and graph
optimisation), per-channel weights, calibrated on real training images through a
``CalibrationDataReader``, in one of two recipes, as ORT's ``quantize_static`` docstring
advises per target:

- ``cpu`` (the default): uint8 activations, int8 7-bit weights (``reduce_range``) and int32
  biases, so that ORT's CPU optimizer fuses each DequantizeLinear -> Conv -> QuantizeLinear
  group into one integer QLinearConv (its Conv selector wants every input, the bias included,
  behind a DequantizeLinear).
- ``tensorrt``: symmetric signed int8 activations and weights (zero point 0) and float biases.
  TensorRT's explicit quantization takes nothing else: a non-zero zero point or a
  DequantizeLinear of an int32 bias stops its ONNX parser (TensorRT folds the bias into the
  int8 convolution itself). On the CPU this file runs, but unfused.

``tensorrt_qdq_problem`` reads which recipe a file follows from its graph, so ``rtk bench
--provider tensorrt`` can refuse a CPU-recipe file in one line instead of a parser error.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import onnx
import torch

from exporters import metadata
from toolkit.data import Normalization, Split, normalize

CALIB_BATCH = 32
Int8Target = Literal["cpu", "tensorrt"]
INT8_TARGETS: tuple[Int8Target, ...] = ("cpu", "tensorrt")


def to_fp16(src: Path, dst: Path) -> None:
    """FP16 weights and compute; the input and output stay float32 for the caller."""
    import onnxslim
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    props = metadata.props(model)
    # The converter appends the input/output Casts at the end of the node list, which the
    # ONNX checker rejects as unsorted; onnxslim sorts the graph (and folds what it can).
    half = onnxslim.slim(convert_float_to_float16(model, keep_io_types=True))
    del half.metadata_props[:]
    onnx.helper.set_model_props(half, {**props, metadata.PRECISION: "fp16"})
    onnx.save(half, str(dst))


def to_int8(
    src: Path,
    dst: Path,
    calibration: Split,
    *,
    normalization: Normalization,
    target: Int8Target = "cpu",
) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            images = normalize(calibration.images, normalization)
            self.batches = iter(torch.split(images, CALIB_BATCH))

        def get_next(self) -> dict[str, object] | None:
            batch = next(self.batches, None)
            return None if batch is None else {metadata.INPUT_NAME: batch.numpy()}

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared))
        if target == "tensorrt":
            recipe: dict[str, object] = {
                "activation_type": QuantType.QInt8,
                "extra_options": {
                    "ActivationSymmetric": True,  # ORT's default gives activations a zero point
                    "WeightSymmetric": True,
                    "QuantizeBias": False,  # TensorRT rejects DequantizeLinear on int32
                },
            }
        else:
            recipe = {
                "activation_type": QuantType.QUInt8,
                # 7-bit weights: without it, x86's u8 x s8 dot product saturates its 16-bit
                # intermediate sums (ORT's documented x86 caveat); a trained baseline CNN lost
                # 8 points to it (docs/log.md).
                "reduce_range": True,
            }
        quantize_static(
            str(prepared),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            **recipe,  # type: ignore[arg-type]
        )
    model = onnx.load(str(dst))
    props = metadata.props(onnx.load(str(src)))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {**props, metadata.PRECISION: "int8"})
    onnx.save(model, str(dst))


def tensorrt_qdq_problem(model: onnx.ModelProto) -> str | None:
    """Why TensorRT would refuse this Q/DQ graph, or None: every zero point must be int8 and
    0, and nothing but int8 may be dequantized (an int32 bias may not)."""
    from onnx import TensorProto, numpy_helper

    constants = {t.name: t for t in model.graph.initializer}

    def kind(tensor: onnx.TensorProto) -> str:
        return TensorProto.DataType.Name(tensor.data_type).lower()

    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        name = node.name or node.output[0]
        source = constants.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if source is not None and source.data_type != TensorProto.INT8:
            return f"{name} dequantizes an {kind(source)} constant"
        zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is not None and zero.data_type != TensorProto.INT8:
            return f"{name} has a {kind(zero)} zero point"
        if zero is not None and numpy_helper.to_array(zero).any():
            return f"{name} has a non-zero zero point"
    return None
