"""Which ONNX opset to export to: the newest that both the exporter and the runtime know."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

MIN_OPSET = 18  # the oldest opset the torch.export-based exporter writes


@dataclass(frozen=True)
class OpsetSupport:
    exporter_max: int  # onnxscript (the exporter's op library) and the onnx package
    runtime_max: int  # the newest opset the installed ONNX Runtime loads, probed
    default: int


def _runtime_loads(opset: int) -> bool:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [value],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    opsets = [helper.make_opsetid("", opset)]
    # The oldest IR version that can hold this opset: the probe asks about the opset only.
    ir_version = helper.find_min_ir_version_for(opsets)
    model = helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # ORT's Fail: "opset ... is under development / not supported"
        return False
    return True


@cache
def opset_support() -> OpsetSupport:
    import onnx
    import onnxscript.onnx_opset as opsets

    numbers = [int(m.group(1)) for n in dir(opsets) if (m := re.fullmatch(r"opset(\d+)", n))]
    exporter_max = min(max(numbers), onnx.defs.onnx_opset_version())
    runtime_max = MIN_OPSET
    # A tiny model per opset, newest first: ORT has no API that states its newest opset.
    for candidate in range(exporter_max, MIN_OPSET - 1, -1):
        if _runtime_loads(candidate):
            runtime_max = candidate
            break
    return OpsetSupport(exporter_max, runtime_max, min(exporter_max, runtime_max))
