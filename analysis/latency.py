"""Inference latency and throughput: ONNX Runtime beside PyTorch eager, in one run.

timm's benchmark habits: warm up, time each call with the device synchronised before the
clock is read, return plain results (writing them is a separate step). Latency does not
depend on the weights, so an architecture name benches a freshly initialised model.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from exporters.openvino import OVInfo, OVPrecision, compile_verified
from exporters.runtime import Provider, SessionInfo, create_session


@dataclass(frozen=True)
class LatencyStats:
    batch: int
    iters: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    images_per_s: float
    ms_per_image: float


@dataclass(frozen=True)
class BenchRow:
    model: str
    arch: str | None  # the rtk architecture, where the model says (claims group by it)
    precision: str
    engine: str  # "onnxruntime", "openvino" or "torch-eager"
    provider: str  # the provider/device that actually ran, verified
    stats: LatencyStats
    speedup_vs_eager: float | None = None  # eager mean / this row's mean, same model and batch
    gflops: float | None = None  # achieved: 2 x MACs x images/s, where the MACs are known
    detail: str = ""  # what the numbers mean beyond the columns (io-binding, fallbacks, ...)
    # ONNX Runtime fp32's mean / this row's, same model and batch: the reference every CPU
    # precision and runtime is measured against (issue 29's goals are ratios to it)
    vs_ort_fp32: float | None = None


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    torch_threads: int
    device: str
    ort_version: str
    torch_version: str
    openvino_version: str | None = None  # when OpenVINO ran


@dataclass(frozen=True)
class BenchTarget:
    """One model to bench: an ONNX file, and (when known) its PyTorch twin for comparison."""

    name: str
    onnx_path: Path
    precision: str
    arch: str | None = None
    torch_model: torch.nn.Module | None = field(default=None, repr=False)
    input_shape: tuple[int, ...] = (3, 32, 32)  # per image, without the batch
    macs: int | None = None  # per image, from the PyTorch twin
    fresh: bool = False  # exported from untrained weights (an architecture name): no accuracy


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stats_from(times_s: list[float], batch: int) -> LatencyStats:
    """Percentiles and moments of per-call wall times, in milliseconds."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    mean = float(ms.mean())
    return LatencyStats(
        batch=batch,
        iters=len(ms),
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=mean,
        std_ms=float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        images_per_s=batch / (mean / 1e3),
        ms_per_image=mean / batch,
    )


def time_calls(
    call: Callable[[], object],
    *,
    warmup: int,
    iters: int | None,
    seconds: float | None,
    sync: Callable[[], None] = lambda: None,
) -> list[float]:
    """Wall time of each call after ``warmup`` untimed ones: ``iters`` calls, or as many as
    fit in ``seconds`` (at least 3)."""
    for _ in range(warmup):
        call()
    sync()
    times: list[float] = []
    deadline = time.perf_counter() + (seconds or 0.0)
    while (iters is not None and len(times) < iters) or (
        iters is None and (time.perf_counter() < deadline or len(times) < 3)
    ):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return times


def matmul_gflops(
    size: int = 2048, repeats: int = 5, *, dtype: torch.dtype = torch.float32
) -> float:
    """This machine's matrix-product rate through PyTorch in ``dtype`` (best of ``repeats``):
    the ceiling a convolutional network's throughput in that precision is compared against."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = min(time_calls(lambda: torch.mm(a, b), warmup=1, iters=repeats, seconds=None))
    return 2 * size**3 / best / 1e9


def bench_onnx(
    target: BenchTarget,
    batch: int,
    *,
    provider: Provider,
    threads: int | None,
    warmup: int,
    iters: int | None,
    seconds: float | None,
    io_binding: bool = False,
    tensorrt_cache: Path | None = None,
    allow_cpu_fallback: bool = False,
) -> tuple[LatencyStats, SessionInfo]:
    session, info = create_session(
        target.onnx_path,
        provider,
        threads=threads,
        precision=target.precision,
        tensorrt_cache=tensorrt_cache,
        allow_cpu_fallback=allow_cpu_fallback,
    )
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, *target.input_shape)).astype(np.float32)
    if io_binding and provider != "cpu":
        import onnxruntime as ort

        # Inputs and outputs stay on the GPU, as eager's do: the clock sees compute, not PCIe
        # copies. The input is copied once, here; ORT allocates each run's output on the device.
        binding = session.io_binding()
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        for output in session.get_outputs():
            binding.bind_output(output.name, "cuda")

        def call() -> object:
            return session.run_with_iobinding(binding)

        sync = binding.synchronize_outputs
    else:

        def call() -> object:
            return session.run(None, {name: x})

        def sync() -> None:
            return None

    times = time_calls(call, warmup=warmup, iters=iters, seconds=seconds, sync=sync)
    return stats_from(times, batch), info


def bench_openvino(
    target: BenchTarget,
    batch: int,
    *,
    precision: OVPrecision,
    threads: int | None,
    warmup: int,
    iters: int | None,
    seconds: float | None,
) -> tuple[LatencyStats, OVInfo]:
    """One synchronous request per call, the batch fixed at compile time."""
    compiled, info = compile_verified(
        target.onnx_path, shape=(batch, *target.input_shape), precision=precision, threads=threads
    )
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((batch, *target.input_shape)).astype(np.float32)

    def call() -> object:
        return request.infer({0: x})

    times = time_calls(call, warmup=warmup, iters=iters, seconds=seconds)
    return stats_from(times, batch), info


def bench_torch(
    model: torch.nn.Module,
    batch: int,
    *,
    device: str,
    input_shape: tuple[int, ...],
    warmup: int,
    iters: int | None,
    seconds: float | None,
    channels_last: bool = False,
) -> LatencyStats:
    model = model.eval().to(device)
    x = torch.randn(batch, *input_shape, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def call() -> object:
        with torch.inference_mode():
            return model(x)

    return stats_from(
        time_calls(call, warmup=warmup, iters=iters, seconds=seconds, sync=sync), batch
    )
