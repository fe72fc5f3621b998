"""The one place that creates ONNX Runtime sessions, with the provider verified.

ONNX Runtime falls back to the CPU silently when the CUDA or TensorRT provider cannot load
(it only logs to the C++ stderr). rtk never lets that pass: after creating a session it checks
which provider actually runs and raises ``ProviderUnavailableError`` when it is not the one
asked for, quoting ORT's own reason from the log it wrote while the session was created.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from toolkit.errors import RtkError

if TYPE_CHECKING:  # onnxruntime loads in a second or so: only where a session is made
    from onnxruntime import InferenceSession

Provider = Literal["cpu", "cuda", "tensorrt"]
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class ProviderUnavailableError(RtkError):
    """The requested execution provider is not the one that would run."""


class ModelLoadError(RtkError):
    """ONNX Runtime cannot load the model file."""


@dataclass(frozen=True)
class SessionInfo:
    provider: str  # as asked: cpu, cuda, tensorrt
    running: str  # the provider ORT runs the graph with, verified
    ort_version: str
    intra_op_threads: int | None


@contextmanager
def _captured_output() -> Iterator[list[str]]:
    """Capture what native code writes to file descriptors 1 and 2 (ORT's logger), so the
    terminal stays clean and the reason for a failed provider can be quoted."""
    lines: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            yield lines
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            lines.extend(sink.read().decode(errors="replace").splitlines())


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _reason(lines: list[str]) -> str:
    """ORT's own explanation, shortest form: the missing library, else the failure line."""
    text = [_ANSI.sub("", line).strip() for line in lines if line.strip()]
    for line in text:
        match = re.search(r"with error: (.+)$", line)
        if match:
            return match.group(1)
    for line in text:
        if "Failed to create" in line or "Please install" in line:
            return re.sub(r"^.*?\] ", "", line)
    return "ONNX Runtime gave no reason"


def create_session(
    model: Path | bytes,
    provider: Provider = "cpu",
    *,
    threads: int | None = None,
) -> tuple[InferenceSession, SessionInfo]:
    """An ``InferenceSession`` that runs on ``provider`` or raises; never a silent fallback."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise ProviderUnavailableError(
            f"unknown provider {provider!r}; choose one of: {', '.join(PROVIDERS)}"
        )
    wanted = PROVIDERS[provider]
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model
    with _captured_output() as log:
        if provider != "cpu" and hasattr(ort, "preload_dlls"):
            # Lets ORT find CUDA/cuDNN libraries installed from PyPI (nvidia-* wheels).
            ort.preload_dlls()
        try:
            session = ort.InferenceSession(source, sess_options=options, providers=[wanted])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            failure: Exception | None = exc
        else:
            failure = None
    if failure is not None:
        where = model if isinstance(model, Path) else "the model"
        first = str(failure).strip().splitlines()[0] if str(failure).strip() else ""
        raise ModelLoadError(f"ONNX Runtime cannot load {where}: {first}") from failure
    running = session.get_providers()[0]
    if running != wanted:
        available = ", ".join(ort.get_available_providers())
        raise ProviderUnavailableError(
            f"asked for {provider} ({wanted}) but ONNX Runtime would run {running}: "
            f"{_reason(log)} (this build lists: {available}); use --provider cpu or fix "
            "the GPU libraries"
        )
    info = SessionInfo(
        provider=provider,
        running=running,
        ort_version=ort.__version__,
        intra_op_threads=threads,
    )
    return session, info


@dataclass(frozen=True)
class ProviderProbe:
    """One ONNX Runtime provider tried for real on a one-node model (``rtk doctor``)."""

    provider: str  # ORT's name, e.g. CUDAExecutionProvider
    listed: bool  # in this build's get_available_providers()
    running: str | None  # the provider that took the node (get_providers()[0]), if a session opened
    ran: bool  # took the node, ran it and gave the right answer
    reason: str  # why not, in ORT's own words where it gave any


# ORT's warning when a provider loaded but left some nodes to the CPU (see docs/environment.md).
_PARTIAL = "Some nodes were not assigned to the preferred execution providers"


def _relu_model() -> bytes:
    """A one-node Relu graph on a fixed (1, 8) float input: every provider has the kernel,
    and a static shape spares TensorRT its dynamic-shape profiles."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    # Opset 13 and IR 8: old enough for any ONNX Runtime rtk supports.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return model.SerializeToString()


def probe_provider(provider: str) -> ProviderProbe:
    """Open a session on ``provider`` alone (any ORT name), run it, and say whether that
    provider really ran the node. Unlike ``create_session`` it never raises: a provider that
    fails to load, falls back to the CPU or computes a wrong answer is a finding."""
    import numpy as np
    import onnxruntime as ort

    listed = provider in ort.get_available_providers()
    if not listed:
        return ProviderProbe(provider, False, None, False, "not in this ONNX Runtime build")
    x = np.linspace(-2.0, 2.0, 8, dtype=np.float32).reshape(1, 8)
    running: str | None = None
    # ORT's Python wrapper print()s its fallback ("EP Error ... Falling back"): where
    # sys.stdout is not file descriptor 1 (pytest, CliRunner) only this redirect catches it.
    printed = io.StringIO()
    with _captured_output() as log, redirect_stdout(printed), redirect_stderr(printed):
        if provider != PROVIDERS["cpu"] and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # as create_session does: finds CUDA/cuDNN from nvidia-* wheels
        try:
            session = ort.InferenceSession(_relu_model(), providers=[provider])
            running = session.get_providers()[0]
            y = session.run(None, {"x": x})[0] if running == provider else None
        except Exception as exc:  # ORT raises its own Fail/RuntimeException types
            failure = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        else:
            failure = None
    log += printed.getvalue().splitlines()
    if failure is not None:
        return ProviderProbe(provider, True, running, False, failure)
    if running != provider:
        return ProviderProbe(
            provider, True, running, False, f"fell back to {running}: {_reason(log)}"
        )
    if any(_PARTIAL in line for line in log):
        return ProviderProbe(provider, True, running, False, f"{_PARTIAL} (the CPU ran the node)")
    if not np.array_equal(y, np.maximum(x, 0)):
        return ProviderProbe(provider, True, running, False, "ran, but gave a wrong Relu result")
    return ProviderProbe(provider, True, running, True, "")
