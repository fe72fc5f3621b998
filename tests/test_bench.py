from __future__ import annotations

import csv
import json
from pathlib import Path

import onnx
import pytest
import torch
from typer.testing import CliRunner

from analysis.bench import resolve_targets, run_bench
from analysis.claims import latency_verdict, memory_verdict
from analysis.latency import BenchRow, stats_from, time_calls
from analysis.train_bench import bench_train_step
from exporters.errors import ExportError
from exporters.runtime import create_session
from toolkit.cli import app
from toolkit.models import architecture_names


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def test_statistics_on_known_timings():
    stats = stats_from([0.001, 0.002, 0.003, 0.004], batch=8)
    assert stats.mean_ms == pytest.approx(2.5)
    assert stats.p50_ms == pytest.approx(2.5)
    assert stats.p90_ms == pytest.approx(3.7)  # numpy's linear interpolation
    assert stats.std_ms == pytest.approx(1.2909944, rel=1e-6)  # sample standard deviation
    assert stats.images_per_s == pytest.approx(3200)
    assert stats.ms_per_image == pytest.approx(2.5 / 8)


def test_warmup_is_not_timed_and_iters_are_counted():
    calls = []
    times = time_calls(lambda: calls.append(1), warmup=4, iters=6, seconds=None)
    assert len(calls) == 10 and len(times) == 6


def test_bench_cli_writes_json_csv_and_history(tmp_path: Path):
    report, rows_csv = tmp_path / "bench.json", tmp_path / "bench.csv"
    result = run_cli(
        "bench", "baseline-cnn", "--batch-sizes", "1,3", "--iters", "3", "--warmup", "1",
        "--threads", "1", "--json", str(report), "--csv", str(rows_csv), "--runs", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "CPUExecutionProvider (asked: cpu, verified)" in result.stdout
    content = json.loads(report.read_text())
    assert content["running"] == "CPUExecutionProvider" and content["threads"] == 1
    assert content["fp32_ceiling_gflops"] > 0
    rows = content["rows"]
    assert [(r["engine"], r["stats"]["batch"]) for r in rows] == [
        ("onnxruntime", 1), ("torch-eager", 1), ("onnxruntime", 3), ("torch-eager", 3),
    ]  # fmt: skip
    assert rows[0]["speedup_vs_eager"] == pytest.approx(
        rows[1]["stats"]["mean_ms"] / rows[0]["stats"]["mean_ms"]
    )
    assert rows[0]["gflops"] == pytest.approx(
        2 * 15_043_072 * rows[0]["stats"]["images_per_s"] / 1e9
    )
    assert {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "images_per_s"} <= rows[0][
        "stats"
    ].keys()
    with rows_csv.open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4 and table[0]["model"] == "baseline-cnn" and float(table[0]["p99_ms"]) > 0
    history = list((tmp_path / "bench").glob("bench-*.json"))
    assert len(history) == 1 and json.loads(history[0].read_text())["rows"] == rows


def test_thread_settings_are_respected(tmp_path: Path):
    targets, _ = resolve_targets(
        ["baseline-cnn"], runs=tmp_path, workdir=tmp_path, input_shape=None
    )
    session, info = create_session(targets[0].onnx_path, "cpu", threads=1)
    assert session.get_session_options().intra_op_num_threads == 1 and info.intra_op_threads == 1
    before = torch.get_num_threads()
    try:
        report = run_bench(
            targets, provider="cpu", batch_sizes=[2], warmup=1, iters=2, seconds=None,
            threads=1, io_binding=False, compare_torch=True, channels_last=False, notes=[],
        )  # fmt: skip
        assert torch.get_num_threads() == 1 and report.machine.torch_threads == 1
    finally:
        torch.set_num_threads(before)


def test_cuda_is_refused_here_and_nothing_is_recorded(tmp_path: Path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli(
        "bench", "baseline-cnn", "--provider", "cuda", "--iters", "2", "--runs", str(tmp_path)
    )
    assert result.exit_code == 2
    assert "asked for cuda" in result.stderr and "CPUExecutionProvider" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bench").exists()


def test_foreign_onnx_classifier_with_its_own_input_shape(tmp_path: Path):
    """torchvision's ResNet-18 at 224x224, exported here: not rtk's, no metadata."""
    from torchvision.models import resnet18

    foreign = tmp_path / "tv_resnet18.onnx"
    torch.onnx.export(
        resnet18(weights=None).eval(), (torch.zeros(1, 3, 224, 224),), str(foreign),
        input_names=["images"], dynamic_axes={"images": {0: "n"}}, dynamo=False,
    )  # fmt: skip
    result = run_cli(
        "bench", str(foreign), "--batch-sizes", "1,2", "--iters", "2", "--warmup", "1",
        "--json", str(tmp_path / "r.json"), "--runs", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["engine"] for r in rows] == ["onnxruntime", "onnxruntime"]  # no PyTorch twin
    assert rows[0]["model"] == "tv_resnet18" and rows[0]["gflops"] is None
    # A model whose spatial size is dynamic needs --input-shape.
    dynamic = tmp_path / "dynamic.onnx"
    model = onnx.load(str(foreign))
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "side"
    onnx.save(model, str(dynamic))
    with pytest.raises(ExportError, match="--input-shape C,H,W"):
        resolve_targets([str(dynamic)], runs=tmp_path, workdir=tmp_path, input_shape=None)
    targets, _ = resolve_targets(
        [str(dynamic)], runs=tmp_path, workdir=tmp_path, input_shape=(3, 64, 64)
    )
    assert targets[0].input_shape == (3, 64, 64)


def test_training_step_benchmark_and_memory_claim():
    results = [
        bench_train_step(a, batch=2, warmup=1, iters=1) for a in ("resnet18", "resnet18-noskip")
    ]
    skip, plain = results
    assert (
        skip.images_per_s > 0 and skip.memory_mb > 0 and "saved_tensors_hooks" in skip.memory_method
    )
    # The shortcut additions and projections keep activations of their own.
    assert skip.memory_mb > plain.memory_mb
    verdict = memory_verdict(results)
    assert (
        verdict.verdict in ("supported", "not supported") and "resnet18-noskip" in verdict.evidence
    )
    assert memory_verdict(results[:1]).verdict == "not measured"


def _row(model: str, batch: int, mean_ms: float) -> BenchRow:
    # Named like a run directory: the claim must group by the architecture, not the name.
    stats = stats_from([mean_ms / 1e3] * 2, batch)
    return BenchRow(
        f"{model}-20261122", model, "fp32", "onnxruntime", "CPUExecutionProvider", stats
    )


def test_latency_claim_is_judged_from_the_numbers():
    names = architecture_names()
    similar = [_row(n, 1, 1.0 + i * 0.2) for i, n in enumerate(names)]
    assert latency_verdict(similar, "cpu").verdict == "supported"
    spread = [_row(n, 1, 1.0 + i * 5) for i, n in enumerate(names)]
    verdict = latency_verdict(spread, "cpu")
    assert verdict.verdict == "not supported" and "16.0x" in verdict.evidence
    assert latency_verdict(spread[:3], "cpu").verdict == "not measured"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["baseline-cnn", "--iters", "0"], "--iters and --threads must be at least 1"),
        (["baseline-cnn", "--threads", "0"], "--iters and --threads must be at least 1"),
        (["baseline-cnn", "--batch-sizes", "1,x"], "--batch-sizes takes positive integers"),
        (["corrupt.onnx"], "is not a readable ONNX model"),
        (["resnet50"], "is not an ONNX file, a run directory or unknown architecture"),
    ],
)
def test_bench_faults_are_one_line_exit_2(args: list[str], message: str, tmp_path: Path):
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage")
    args = [str(tmp_path / a) if a.endswith(".onnx") else a for a in args]
    result = run_cli("bench", *args, "--runs", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
