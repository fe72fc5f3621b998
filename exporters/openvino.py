"""OpenVINO on the CPU, from rtk's own ONNX files, with the precision each row claims verified.

OpenVINO reads the ONNX files ``rtk export`` writes (fp32, and the int8 copy with Q/DQ nodes).
Two traps make an unchecked number lie, and both are closed here:

- On a CPU with native bf16, OpenVINO's default inference precision is bf16: an "fp32" row
  timed with default settings ran in bf16. rtk always sets the precision hint (``f32`` for the
  fp32 and int8 rows, ``bf16`` for bf16 rows).
- A hint is a wish. After compiling, the runtime model names the precision every layer runs in
  (``runtimePrecision`` in each node's runtime info); rtk reads it for the layers that carry the
  arithmetic (convolutions and the classifier) and refuses, before anything is timed, a row
  whose layers ran in another precision, and bf16 on a CPU that OpenVINO does not list as
  having it (it would emulate it, slower than fp32).

Each batch size is compiled with the whole input shape fixed (``reshape``), as OpenVINO's own
benchmark_app does with ``-shape``: static shapes let the CPU plugin pick its kernels once.
Performance hint LATENCY, one stream: each timed call is one synchronous request, the way
PyTorch eager and ONNX Runtime are timed beside it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from toolkit.errors import RtkError

if TYPE_CHECKING:  # openvino loads in about a second: only where a model is compiled
    from openvino import CompiledModel

OVPrecision = Literal["fp32", "bf16", "int8"]
# The precision hint per row precision: an int8 file's quantized layers run in int8 whatever the
# hint; f32 keeps its other layers in fp32 (bf16 would change two things at once).
HINTS: dict[str, str] = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
# Runtime precisions that count as the row's, for the layers that carry the arithmetic.
EXPECTED: dict[str, frozenset[str]] = {
    "fp32": frozenset({"f32"}),
    "bf16": frozenset({"bf16"}),
    "int8": frozenset({"u8", "i8"}),  # a quantized layer reports its (unsigned) input type
}
COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul")
PERFORMANCE_HINT = "LATENCY"


class OpenVINOError(RtkError):
    """OpenVINO cannot load a model, or would not run it in the precision asked."""


@dataclass(frozen=True)
class OVInfo:
    version: str
    precision: str  # the row's precision, verified against the layers below
    hint: str  # the inference precision hint it was compiled with
    threads: int | None  # INFERENCE_NUM_THREADS; None: OpenVINO's default
    performance_hint: str
    layers: dict[str, int]  # "Convolution bf16" -> how many such layers ran in that precision

    @property
    def label(self) -> str:
        """What ran, for a table cell: ``Convolution 21 bf16, FullyConnected 1 bf16``."""
        return ", ".join(
            f"{k.split(' ')[0]} {n} {k.split(' ')[1]}" for k, n in sorted(self.layers.items())
        )


def version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin says this CPU can compute natively (FP32, BF16, INT8, ...)."""
    import openvino

    return [str(c) for c in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def runtime_layers(compiled: CompiledModel) -> dict[str, int]:
    """How many compute layers ran in each precision, read from the compiled runtime model."""
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in COMPUTE_LAYERS:
            counts[f"{kind} {info['runtimePrecision'].astype(str)}"] += 1
    return dict(counts)


def compile_verified(
    model: Path,
    *,
    shape: tuple[int, ...],
    precision: OVPrecision,
    threads: int | None = None,
) -> tuple[CompiledModel, OVInfo]:
    """``model`` compiled for the CPU with its input fixed at ``shape`` (batch first), running
    in ``precision`` or refused."""
    import openvino

    if precision == "bf16" and "BF16" not in cpu_capabilities():
        raise OpenVINOError(
            "this CPU has no native bf16 (OpenVINO's CPU plugin does not list BF16; lscpu shows "
            "no avx512_bf16 or amx_bf16), so a bf16 row would time an emulation slower than "
            "fp32; drop --bf16 or run on a CPU that has it"
        )
    core = openvino.Core()
    try:
        network = core.read_model(str(model))
        network.reshape({network.inputs[0]: list(shape)})
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": HINTS[precision],
            "PERFORMANCE_HINT": PERFORMANCE_HINT,
            "NUM_STREAMS": 1,
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(network, "CPU", config)
    except RuntimeError as exc:  # OpenVINO raises its own errors as RuntimeError subclasses
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OpenVINOError(f"OpenVINO cannot load {model}: {first}") from exc
    layers = runtime_layers(compiled)
    astray = {k: n for k, n in layers.items() if k.split(" ")[1] not in EXPECTED[precision]}
    if not layers or astray:
        ran = ", ".join(f"{n} {k}" for k, n in sorted(layers.items())) or "no compute layer"
        raise OpenVINOError(
            f"{model}: OpenVINO would not run it in {precision} ({ran}); "
            + (
                "an int8 row needs a quantized file: `rtk export RUN --onnx --int8`"
                if precision == "int8"
                else "no row is timed under a precision that did not run"
            )
        )
    info = OVInfo(
        version=version(),
        precision=precision,
        hint=HINTS[precision],
        threads=threads,
        performance_hint=PERFORMANCE_HINT,
        layers=layers,
    )
    return compiled, info


def openvino_logits(
    model: Path,
    images: np.ndarray,
    *,
    precision: OVPrecision,
    threads: int | None = None,
    batch: int = 250,
) -> np.ndarray:
    """Float32 logits of normalised (N, C, H, W) ``images`` through OpenVINO in ``precision``
    (verified as for timing), ``batch`` at a time; the last batch is padded to the compiled
    size and trimmed."""
    batch = min(batch, len(images))
    compiled, _ = compile_verified(
        model, shape=(batch, *images.shape[1:]), precision=precision, threads=threads
    )
    request = compiled.create_infer_request()
    outputs = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        padded = np.concatenate(
            [chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)]
        )
        logits = next(iter(request.infer({0: padded}).values()))
        outputs.append(np.asarray(logits[: len(chunk)], dtype=np.float32))
    return np.concatenate(outputs)
