"""The device logic of GPU benchmarks, checked here on the CPU: which providers and options
ONNX Runtime is given, what ORT's placement log makes rtk refuse, and what a row says. ORT's
``InferenceSession`` is replaced by a stand-in that writes the log lines ORT 1.31 writes
(``VerifyEachNodeIsAssignedToAnEp`` in session_state.cc) to file descriptor 2, as ORT does.
(The real GPU runs are in test_gpu.py, marked ``gpu``.)"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from analysis.bench import BenchSettings, resolve_targets, row_detail, run_bench
from analysis.train_bench import bench_train_step
from exporters import metadata
from exporters.quantize import tensorrt_qdq_problem
from exporters.runtime import (
    _PARTIAL,
    PROVIDERS,
    ProviderUnavailableError,
    SessionInfo,
    _captured_output,
    _placements,
    _relu_model,
    create_session,
    execution_providers,
)
from toolkit.cli import app

CPU, CUDA, TRT = PROVIDERS["cpu"], PROVIDERS["cuda"], PROVIDERS["tensorrt"]
_LOG = (
    "2026-11-23 18:00:49.2 [V:onnxruntime:, session_state.cc:1578 VerifyEachNodeIsAssignedToAnEp]"
)


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def placement_log(nodes: dict[str, list[str]], explicit: int) -> list[str]:
    """ORT's verbose placement lines for ``nodes`` (provider -> op types), as session_state.cc
    writes them: one header when a single provider took every node, else a header and one
    "  OpType (name)" line per node for each provider; then its warning, which it gives only
    when more providers took nodes than the caller named (``explicit``)."""
    lines = [f"{_LOG} Node placements"]
    if len(nodes) == 1:
        ((provider, ops),) = nodes.items()
        lines.append(f"{_LOG}  All nodes placed on [{provider}]. Number of nodes: {len(ops)}")
    else:
        for provider, ops in nodes.items():
            lines.append(f"{_LOG}  Node(s) placed on [{provider}]. Number of nodes: {len(ops)}")
            lines += [f"{_LOG}   {op} (/layer{i}/{op})" for i, op in enumerate(ops)]
    if len(nodes) > explicit:
        lines.append(f"2026-11-23 [W:onnxruntime:, session_state.cc:1598 Verify...] {_PARTIAL}.")
    return lines


class FakeSession:
    """Stands in for ``onnxruntime.InferenceSession`` on a GPU box: records what it was given,
    logs the placements it was told to, and runs (or io-binds) like ORT's Python API."""

    created: ClassVar[list[FakeSession]] = []
    nodes: ClassVar[dict[str, list[str]]] = {CUDA: ["Conv", "Relu", "Gemm"]}

    def __init__(self, source, sess_options=None, providers=None):
        self.options, self.providers = sess_options, providers
        self.log_level = sess_options.log_severity_level  # as ORT reads it, at creation
        self.runs = self.bound_runs = 0
        self.binding: FakeBinding | None = None
        log = placement_log(self.nodes, explicit=len(providers))
        os.write(2, ("\n".join(log) + "\n").encode())
        FakeSession.created.append(self)

    def get_providers(self) -> list[str]:
        names = [p if isinstance(p, str) else p[0] for p in self.providers]
        return [*names, CPU]

    def get_inputs(self):
        return [type("Arg", (), {"name": metadata.INPUT_NAME})()]

    def get_outputs(self):
        return [type("Arg", (), {"name": "logits"})()]

    def run(self, outputs, feed):
        self.runs += 1
        return [np.zeros((len(feed[metadata.INPUT_NAME]), 10), np.float32)]

    def io_binding(self) -> FakeBinding:
        self.binding = FakeBinding()
        return self.binding

    def run_with_iobinding(self, binding: FakeBinding) -> None:
        self.bound_runs += 1


class FakeBinding:
    def __init__(self) -> None:
        self.inputs: list[tuple[str, object]] = []
        self.outputs: list[tuple[str, str]] = []

    def bind_ortvalue_input(self, name: str, value: object) -> None:
        self.inputs.append((name, value))

    def bind_output(self, name: str, device: str) -> None:
        self.outputs.append((name, device))

    def synchronize_outputs(self) -> None:
        pass


@pytest.fixture
def gpu_ort(monkeypatch: pytest.MonkeyPatch) -> type[FakeSession]:
    FakeSession.created = []
    FakeSession.nodes = {CUDA: ["Conv", "Relu", "Gemm"]}
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a GPU")
    # A device copy of the input, as ORT makes one on a GPU (the build here has no device).
    monkeypatch.setattr(
        ort.OrtValue, "ortvalue_from_numpy", staticmethod(lambda x, device, index: ("on", device))
    )
    return FakeSession


def tiny_onnx(path: Path, precision: str = "fp32") -> Path:
    """A real ONNX classifier file (dynamic batch, 3x32x32) with rtk's precision metadata."""
    x = helper.make_tensor_value_info(metadata.INPUT_NAME, TensorProto.FLOAT, ["n", 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3, 1, 1])
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", [metadata.INPUT_NAME], ["logits"])], "g", [x], [y]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    helper.set_model_props(model, {metadata.PRECISION: precision})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_placements_are_read_from_orts_own_verbose_log():
    """The header format is read from this build's real output; the per-node format (only
    written when several providers share a graph) from session_state.cc's."""
    options = ort.SessionOptions()
    options.log_severity_level = 0
    with _captured_output() as log:
        ort.InferenceSession(_relu_model(), sess_options=options, providers=[CPU])
    assert _placements(log) == ({CPU: 1}, {CPU: ()})
    log = placement_log({TRT: ["TRTKernel_graph_main_1"], CPU: ["Shape"]}, explicit=2)
    counts, ops = _placements(log)
    assert counts == {TRT: 1, CPU: 1} and ops == {TRT: ("TRTKernel_graph_main_1",), CPU: ("Shape",)}


def test_a_cuda_session_with_nodes_on_the_cpu_is_refused_naming_them(gpu_ort, tmp_path: Path):
    gpu_ort.nodes = {CUDA: ["Conv", "Relu"], CPU: ["Shape", "Gather", "Shape"]}
    model = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(ProviderUnavailableError) as caught:
        create_session(model, "cuda")
    message = str(caught.value)
    assert message.startswith("cuda: ONNX Runtime runs 3 of 5 nodes of this model on the CPU")
    assert "(Gather, Shape)" in message and "--allow-cpu-fallback" in message
    session = gpu_ort.created[-1]
    assert session.providers == [CUDA]  # CUDA alone: ORT adds the CPU behind it by itself
    assert session.log_level == 0  # the only log that names placements
    # Allowed: the session opens, and its label never names CUDA alone.
    _, info = create_session(model, "cuda", allow_cpu_fallback=True)
    assert info.cpu_fallback and info.label == f"{CUDA}+{CPU}"
    detail = row_detail(info, "fp32", io_binding=True)
    assert "3 nodes on the CPU (Gather, Shape), --allow-cpu-fallback" in detail


def test_the_partial_assignment_warning_alone_is_a_fallback(gpu_ort, tmp_path: Path, monkeypatch):
    """A log without placements (a build that writes none) still has ORT's warning."""
    monkeypatch.setattr(
        "exporters.runtime._placements", lambda lines: ({}, {})
    )  # as if no placement lines were written
    gpu_ort.nodes = {CUDA: ["Conv"], CPU: ["Shape"]}
    with pytest.raises(ProviderUnavailableError, match="runs some nodes of this model on the CPU"):
        create_session(tiny_onnx(tmp_path / "m.onnx"), "cuda")


def test_a_cuda_session_wholly_on_cuda_is_verified(gpu_ort, tmp_path: Path):
    _, info = create_session(tiny_onnx(tmp_path / "m.onnx"), "cuda")
    assert info.running == CUDA and info.label == CUDA and not info.cpu_fallback
    assert info.placements == {CUDA: 3}


def test_tensorrt_is_registered_with_cuda_behind_it_and_caches(gpu_ort, tmp_path: Path):
    cache = tmp_path / "cache"
    assert execution_providers("tensorrt", precision="int8", tensorrt_cache=cache) == [
        (
            TRT,
            {
                "trt_fp16_enable": "False",
                "trt_int8_enable": "True",
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(cache),
            },
        ),
        CUDA,
    ]
    # fp32 stays fp32 on TensorRT: neither reduced-precision mode is switched on.
    (_, fp32), _ = execution_providers("tensorrt")
    assert fp32 == {"trt_fp16_enable": "False", "trt_int8_enable": "False"}
    assert execution_providers("cuda") == [CUDA] and execution_providers("cpu") == [CPU]
    # CUDA taking the nodes TensorRT rejects is allowed, and said.
    gpu_ort.nodes = {TRT: ["TRTKernel_graph_main_0"], CUDA: ["Gather", "Gather"]}
    _, info = create_session(tiny_onnx(tmp_path / "m.onnx"), "tensorrt", tensorrt_cache=cache)
    assert gpu_ort.created[-1].providers[1] == CUDA
    assert cache.is_dir()  # made for TensorRT, which creates only the last folder of the path
    assert info.label == f"{TRT}+{CUDA}" and not info.cpu_fallback
    assert "2 nodes TensorRT rejected ran on CUDA" in row_detail(info, "fp32", io_binding=True)
    # ORT does not warn when TensorRT and the CPU (not CUDA) share the graph: the counts catch it.
    gpu_ort.nodes = {TRT: ["TRTKernel_graph_main_0"], CPU: ["NonMaxSuppression"]}
    unused = tmp_path / "runs" / "bench" / "tensorrt-cache" / "0123"
    with pytest.raises(ProviderUnavailableError, match=r"tensorrt: .* 1 of 2 nodes"):
        create_session(tiny_onnx(tmp_path / "m.onnx"), "tensorrt", tensorrt_cache=unused)
    assert not (tmp_path / "runs").exists()  # a refused bench leaves no folder behind


def test_a_cuda_int8_row_says_it_computes_in_fp32():
    info = SessionInfo("cuda", CUDA, ort.__version__, None, placements={CUDA: 9})
    assert "int8 weights, fp32 compute" in row_detail(info, "int8", io_binding=True)
    assert "fp32 compute" not in row_detail(info, "fp32", io_binding=True)
    # Were ORT ever to run an int8 kernel on CUDA, the placement log would name it.
    fused = SessionInfo(
        "cuda", CUDA, ort.__version__, None, placements={CUDA: 1, CPU: 0},
        placed_ops={CUDA: ("QLinearConv",)},
    )  # fmt: skip
    assert "fp32 compute" not in row_detail(fused, "int8", io_binding=True)
    trt = SessionInfo("tensorrt", TRT, ort.__version__, None, placements={TRT: 1})
    assert "fp32 compute" not in row_detail(trt, "int8", io_binding=True)
    cpu = SessionInfo("cpu", CPU, ort.__version__, None)
    assert row_detail(cpu, "int8", io_binding=False) == ""


def _gpu_bench(tmp_path: Path, *extra: str):
    model = tiny_onnx(tmp_path / "m.onnx")
    return run_cli(
        "bench", str(model), "--provider", "cuda", "--batch-sizes", "2", "--iters", "2",
        "--warmup", "1", "--no-compare-torch", "--runs", str(tmp_path),
        "--json-out", str(tmp_path / "r.json"), *extra,
    )  # fmt: skip


def test_gpu_rows_use_io_binding_by_default_and_say_so(gpu_ort, tmp_path: Path):
    result = _gpu_bench(tmp_path)
    assert result.exit_code == 0, result.output
    timed = gpu_ort.created[-1]  # the last session is the one timed
    # Verbose for the placement check only: a verbose session would log on every timed run.
    assert gpu_ort.created[-2].log_level == 0
    assert timed.log_level == 2 and timed.providers == [CUDA]
    assert timed.bound_runs == 1 + 2 and timed.runs == 0  # warm-up + iters, all bound
    assert timed.binding.inputs == [(metadata.INPUT_NAME, ("on", "cuda"))]
    assert timed.binding.outputs == [("logits", "cuda")]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["io_binding"] is True and report["cpu_fallback"] is False
    (row,) = report["rows"]
    assert row["provider"] == CUDA and row["detail"] == "io-binding (data on the device)"
    header = result.stdout.splitlines()[0]
    assert "asked: cuda, verified" in header
    assert "inputs and outputs on the device (io-binding)" in header


def test_no_io_binding_times_the_host_copies_and_says_so(gpu_ort, tmp_path: Path):
    result = _gpu_bench(tmp_path, "--no-io-binding")
    assert result.exit_code == 0, result.output
    assert gpu_ort.created[-1].runs == 1 + 2 and gpu_ort.created[-1].binding is None
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["io_binding"] is False
    assert report["rows"][0]["detail"] == "host copies timed"
    assert "inputs and outputs host copies timed" in result.stdout.splitlines()[0]


def test_a_cpu_fallback_is_refused_in_one_line_before_anything_is_timed(gpu_ort, tmp_path: Path):
    gpu_ort.nodes = {CUDA: ["Conv"], CPU: ["Shape"]}
    refused = _gpu_bench(tmp_path)
    assert refused.exit_code == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "cuda: ONNX Runtime runs 1 of 2 nodes" in line and "--allow-cpu-fallback" in line
    assert not (tmp_path / "bench").exists() and all(s.runs == 0 for s in gpu_ort.created)
    allowed = _gpu_bench(tmp_path, "--allow-cpu-fallback")
    assert allowed.exit_code == 0, allowed.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["cpu_fallback"] is True
    (row,) = report["rows"]
    assert row["provider"] == f"{CUDA}+{CPU}"  # never "CUDA" alone
    assert "1 nodes on the CPU (Shape), --allow-cpu-fallback" in row["detail"]
    assert "asked: cuda, some nodes on the CPU, allowed: see the rows" in allowed.stdout


def qdq_onnx(path: Path, zero_point: np.ndarray, bias: np.ndarray | None = None) -> Path:
    """A real Q/DQ graph: input -> QuantizeLinear -> DequantizeLinear (+ a dequantized bias)."""
    x = helper.make_tensor_value_info(metadata.INPUT_NAME, TensorProto.FLOAT, ["n", 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3, 32, 32])
    constants = [
        onnx.numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
        onnx.numpy_helper.from_array(zero_point, "zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", [metadata.INPUT_NAME, "scale", "zero"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["logits"]),
    ]
    if bias is not None:
        constants.append(onnx.numpy_helper.from_array(bias, "bias_q"))
        nodes.append(helper.make_node("DequantizeLinear", ["bias_q", "scale"], ["bias"]))
    graph = helper.make_graph(nodes, "qdq", [x], [y], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    helper.set_model_props(model, {metadata.PRECISION: "int8"})
    onnx.save(model, str(path))
    return path


def test_tensorrt_is_given_only_symmetric_signed_int8(gpu_ort, tmp_path: Path):
    problem = {
        name: tensorrt_qdq_problem(onnx.load(str(qdq_onnx(tmp_path / f"{name}.onnx", *args))))
        for name, args in {
            "cpu-recipe": (np.array(128, np.uint8),),
            "shifted": (np.array(3, np.int8),),
            "int32-bias": (np.array(0, np.int8), np.zeros(3, np.int32)),
            "tensorrt": (np.array(0, np.int8),),
        }.items()
    }
    assert problem == {
        "cpu-recipe": "q has a uint8 zero point",
        "shifted": "q has a non-zero zero point",
        "int32-bias": "bias dequantizes an int32 constant",
        "tensorrt": None,
    }
    gpu_ort.nodes = {TRT: ["TRTKernel_graph_main_0"]}
    bench = ["--provider", "tensorrt", "--iters", "1", "--batch-sizes", "1", "--no-compare-torch"]
    refused = run_cli("bench", str(tmp_path / "cpu-recipe.onnx"), *bench, "--runs", str(tmp_path))
    assert refused.exit_code == 2 and not gpu_ort.created
    (line,) = refused.stderr.strip().splitlines()
    assert "is not quantized for TensorRT (q has a uint8 zero point)" in line
    assert "rtk export RUN --onnx --int8 --int8-for tensorrt" in line
    taken = run_cli("bench", str(tmp_path / "tensorrt.onnx"), *bench, "--runs", str(tmp_path))
    assert taken.exit_code == 0, taken.output
    assert gpu_ort.created[-1].providers[0][1]["trt_int8_enable"] == "True"


def test_tensorrt_caches_live_in_the_bench_folder_one_per_model_content(gpu_ort, tmp_path: Path):
    gpu_ort.nodes = {TRT: ["TRTKernel_graph_main_0"]}
    first, same, other = (
        tiny_onnx(tmp_path / "a" / "model.onnx"),
        tiny_onnx(tmp_path / "b" / "model.onnx"),
        tiny_onnx(tmp_path / "c" / "model.onnx", precision="int8"),  # other bytes
    )
    targets, _ = resolve_targets(
        [str(first), str(same), str(other)], runs=tmp_path, workdir=tmp_path, input_shape=None
    )
    root = tmp_path / "bench" / "tensorrt-cache"
    settings = BenchSettings(
        provider="tensorrt", batch_sizes=(1,), warmup=0, iters=1, compare_torch=False,
        tensorrt_cache=root,
    )  # fmt: skip
    run_bench(targets, settings=settings, notes=[])
    paths = {s.providers[0][1]["trt_engine_cache_path"] for s in gpu_ort.created}
    timing = {s.providers[0][1]["trt_timing_cache_path"] for s in gpu_ort.created}
    assert paths == timing and len(paths) == 2  # same bytes, one folder: the second reuses it
    assert all(Path(p).parent == root and Path(p).is_dir() for p in paths)
    int8 = [s for s in gpu_ort.created if s.providers[0][1]["trt_int8_enable"] == "True"]
    assert len(int8) == 4  # the int8 file's refusal check and its timing, each verified


def test_bench_train_measures_activations_not_weights():
    """The same measure on every device: it grows with the batch (activations do), while the
    weights, gradients and Adam's moments, which do not, are left out."""
    small, large = (bench_train_step("baseline-cnn", batch=b, warmup=0, iters=1) for b in (2, 4))
    # Anything independent of the batch (weights: 4 MiB here) would pull this ratio below 2.
    assert large.memory_mb / small.memory_mb == pytest.approx(2.0, rel=0.05)


def test_bench_train_takes_a_device(tmp_path: Path):
    cpu = run_cli("bench", "train", "baseline-cnn", "--batch-size", "2", "--device", "cpu")
    assert cpu.exit_code == 0, cpu.output
    assert "batch 2, cpu" in cpu.stdout and "saved_tensors_hooks" in cpu.stdout
    wrong = run_cli("bench", "train", "baseline-cnn", "--device", "tpu")
    assert wrong.exit_code == 2 and "unknown device 'tpu'" in wrong.stderr
    if not torch.cuda.is_available():
        refused = run_cli("bench", "train", "baseline-cnn", "--device", "cuda")
        assert refused.exit_code == 2
        (line,) = refused.stderr.strip().splitlines()
        assert "CUDA is not available" in line
