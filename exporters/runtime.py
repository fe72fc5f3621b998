"""The one place that creates ONNX Runtime sessions, with the provider verified.

ONNX Runtime falls back to the CPU silently when the CUDA or TensorRT provider cannot load
(it only logs to the C++ stderr). rtk never lets that pass: after creating a session it checks
which provider actually runs and raises ``ProviderUnavailableError`` when it is not the one
asked for, quoting ORT's own reason from the log it wrote while the session was created.

A GPU provider that loaded can still leave nodes to the CPU. For cuda and tensorrt the session
is created with ORT's verbose log on, which names the provider of every node
(``VerifyEachNodeIsAssignedToAnEp`` in ORT's session_state.cc); a node on the CPU is refused
unless the caller allows it, and then ``SessionInfo.label`` says so. TensorRT is registered as
[TensorRT, CUDA]: CUDA takes the nodes TensorRT rejects, and the label says that too.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout, suppress
from dataclasses import dataclass, field
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
    # GPU sessions: nodes per ORT provider name, from ORT's verbose placement log (empty when
    # the log gave none), and the op types it listed for each (ORT lists them only when more
    # than one provider took nodes).
    placements: dict[str, int] = field(default_factory=dict)
    placed_ops: dict[str, tuple[str, ...]] = field(default_factory=dict)
    cpu_fallback: bool = False  # some nodes ran on the CPU (allowed by the caller)

    @property
    def label(self) -> str:
        """Every provider that runs nodes, the asked one first: a row never names a GPU
        alone when the CPU (or, under TensorRT, CUDA) ran part of the graph."""
        order = [self.running, *(p for p in PROVIDERS.values() if p != self.running)]
        taking = [p for p in order if self.placements.get(p)] or [self.running]
        if self.cpu_fallback and PROVIDERS["cpu"] not in taking:
            taking.append(PROVIDERS["cpu"])  # the warning said so, the counts did not
        return "+".join(taking)


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

# ORT's warning when a provider loaded but left some nodes to the CPU: the session then runs
# partly on the CPU under a GPU provider's name, which rtk refuses to report as GPU numbers.
_PARTIAL = "Some nodes were not assigned to the preferred execution providers"


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


# ORT's verbose placement log (session_state.cc, VerifyEachNodeIsAssignedToAnEp): a header per
# provider, then (when several providers took nodes) one "  OpType (name)" line per node.
_PLACED = re.compile(r"(?:All nodes|Node\(s\)) placed on \[(\w+)\]\. Number of nodes: (\d+)")
_PLACED_NODE = re.compile(r"VerifyEachNodeIsAssignedToAnEp\] {3}(\S+) \(")


def _placements(lines: list[str]) -> tuple[dict[str, int], dict[str, tuple[str, ...]]]:
    counts: dict[str, int] = {}
    ops: dict[str, list[str]] = {}
    current: str | None = None
    for line in lines:
        header = _PLACED.search(line)
        node = _PLACED_NODE.search(line)
        if header:
            current = header.group(1)
            counts[current] = int(header.group(2))
            ops[current] = []
        elif node and current is not None:
            ops[current].append(node.group(1))
    return counts, {p: tuple(o) for p, o in ops.items()}


ProviderEntry = str | tuple[str, dict[str, str]]


def execution_providers(
    provider: Provider, *, precision: str = "fp32", tensorrt_cache: Path | None = None
) -> list[ProviderEntry]:
    """ORT's ``providers`` argument for ``provider``. TensorRT comes with CUDA behind it for
    the nodes it rejects, its reduced-precision modes only for a model of that precision (an
    fp32 row must not compute in fp16), and its engine and timing caches in
    ``tensorrt_cache``, so the next session on the same model skips the engine build."""
    if provider != "tensorrt":
        return [PROVIDERS[provider]]
    flag = {True: "True", False: "False"}  # ORT parses provider options from strings
    options = {
        "trt_fp16_enable": flag[precision == "fp16"],
        # A Q/DQ model is explicitly quantized: TensorRT needs INT8 mode, not a calibration table.
        "trt_int8_enable": flag[precision == "int8"],
    }
    if tensorrt_cache is not None:
        options |= {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(tensorrt_cache),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(tensorrt_cache),
        }
    return [(PROVIDERS["tensorrt"], options), PROVIDERS["cuda"]]


def create_session(
    model: Path | bytes,
    provider: Provider = "cpu",
    *,
    threads: int | None = None,
    precision: str = "fp32",
    tensorrt_cache: Path | None = None,
    allow_cpu_fallback: bool = False,
) -> tuple[InferenceSession, SessionInfo]:
    """An ``InferenceSession`` that runs on ``provider`` or raises; never a silent fallback.
    On cuda and tensorrt, a node left to the CPU raises too, unless ``allow_cpu_fallback``."""
    if provider not in PROVIDERS:
        raise ProviderUnavailableError(
            f"unknown provider {provider!r}; choose one of: {', '.join(PROVIDERS)}"
        )
    providers = execution_providers(provider, precision=precision, tensorrt_cache=tensorrt_cache)
    # TensorRT creates only the last folder of its cache path; a refused session leaves none.
    made = _new_folders(tensorrt_cache) if provider == "tensorrt" and tensorrt_cache else []
    try:
        return _open_verified(model, provider, providers, threads, allow_cpu_fallback)
    except RtkError:
        for folder in reversed(made):
            with suppress(OSError):  # not empty: TensorRT wrote to it after all
                folder.rmdir()
        raise


def _new_folders(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; return those created, outermost first."""
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
    path.mkdir(parents=True, exist_ok=True)
    return missing


def _open_verified(
    model: Path | bytes,
    provider: Provider,
    providers: list[ProviderEntry],
    threads: int | None,
    allow_cpu_fallback: bool,
) -> tuple[InferenceSession, SessionInfo]:
    import onnxruntime as ort

    wanted = PROVIDERS[provider]
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if provider != "cpu":
        # Verbose: the only log in which ORT names the provider of each node (captured below).
        options.log_severity_level = 0
    source = str(model) if isinstance(model, Path) else model
    with _captured_output() as log:
        if provider != "cpu" and hasattr(ort, "preload_dlls"):
            # Lets ORT find CUDA/cuDNN libraries installed from PyPI (nvidia-* wheels).
            ort.preload_dlls()
        try:
            session = ort.InferenceSession(source, sess_options=options, providers=providers)
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
    placements, placed_ops = _placements(log) if provider != "cpu" else ({}, {})
    cpu_nodes = placements.get(PROVIDERS["cpu"], 0)
    # The warning alone covers a log without placements; under [TensorRT, CUDA] ORT warns only
    # when all three providers took nodes, so the counts are what catch the rest.
    fell_back = provider != "cpu" and (cpu_nodes > 0 or any(_PARTIAL in line for line in log))
    if fell_back and not allow_cpu_fallback:
        ops = ", ".join(sorted(set(placed_ops.get(PROVIDERS["cpu"], ())))) or "ops not listed"
        count = f"{cpu_nodes} of {sum(placements.values())} nodes" if cpu_nodes else "some nodes"
        raise ProviderUnavailableError(
            f"{provider}: ONNX Runtime runs {count} of this model on the CPU ({ops}), so no "
            f"result would be a {provider} result; `rtk bench --allow-cpu-fallback` measures it "
            "anyway (the rows then say so), or use --provider cpu"
        )
    if provider != "cpu":
        # The verbose session would log on every run too (its run logger inherits the level),
        # which would be timed: the caller gets a second, quiet session, placed the same way
        # (TensorRT then loads the engine the first one cached, when there is a cache).
        options.log_severity_level = 2
        with _captured_output():
            session = ort.InferenceSession(source, sess_options=options, providers=providers)
    info = SessionInfo(
        provider=provider,
        running=running,
        ort_version=ort.__version__,
        intra_op_threads=threads,
        placements=placements,
        placed_ops=placed_ops,
        cpu_fallback=fell_back,
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
