from __future__ import annotations

import csv
import json
from pathlib import Path

import onnx
import pytest
import torch
from typer.testing import CliRunner

from analysis.bench import BenchSettings, keep_in_history, resolve_targets, run_bench
from analysis.claims import latency_claim, memory_claim
from analysis.latency import BenchRow, stats_from, time_calls
from analysis.train_bench import bench_train_step
from exporters import metadata
from exporters.convert import file_sha256
from exporters.errors import ExportError
from exporters.runtime import create_session
from toolkit.cli import app
from toolkit.models import PAPER, architecture_names


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
        "--threads", "1", "--json-out", str(report), "--csv", str(rows_csv),
        "--runs", str(tmp_path), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    content = json.loads(report.read_text())
    assert json.loads(result.stdout) == content  # --json prints what --json-out writes
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


def test_benches_ending_in_the_same_second_each_keep_their_report(tmp_path: Path):
    """History files were named to the second: the second bench overwrote the first."""
    from concurrent.futures import ThreadPoolExecutor

    contents = [f'{{"bench": {i}}}\n' for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        kept = list(pool.map(lambda c: keep_in_history(tmp_path, "bench-x", c), contents))
    assert len(set(kept)) == 8 and {p.read_text() for p in kept} == set(contents)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)


def test_an_architecture_name_is_benched_from_a_validated_rtk_export(tmp_path: Path):
    targets, notes = resolve_targets(
        ["resnet18-noskip"], runs=tmp_path, workdir=tmp_path, input_shape=None
    )
    (target,) = targets
    assert target.name == target.arch == "resnet18-noskip" and "freshly initialised" in notes[0]
    model = onnx.load(str(target.onnx_path))
    # Written by export_onnx: the full metadata, the input name, the checked dynamic batch.
    props = {p.key: p.value for p in model.metadata_props}
    assert set(props) == {v for k, v in vars(metadata).items() if k.isupper() and "." in v}
    assert props[metadata.CHECKPOINT_SHA256] == file_sha256(target.onnx_path.parent / "best.pt")
    assert [i.name for i in model.graph.input] == [metadata.INPUT_NAME]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert target.input_shape == (3, 32, 32) and target.macs and target.torch_model is not None


def test_thread_settings_are_respected(tmp_path: Path):
    targets, _ = resolve_targets(
        ["baseline-cnn"], runs=tmp_path, workdir=tmp_path, input_shape=None
    )
    session, info = create_session(targets[0].onnx_path, "cpu", threads=1)
    assert session.get_session_options().intra_op_num_threads == 1 and info.intra_op_threads == 1
    before = torch.get_num_threads()
    try:
        settings = BenchSettings(provider="cpu", batch_sizes=(2,), warmup=1, iters=2, threads=1)
        report = run_bench(targets, settings=settings, notes=[])
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
        "--json-out", str(tmp_path / "r.json"), "--runs", str(tmp_path),
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
    verdict = memory_claim(results)
    assert (
        verdict.verdict in ("supported", "not supported") and "resnet18-noskip" in verdict.evidence
    )
    assert memory_claim(results[:1]).verdict == "not measured"


def _row(model: str, batch: int, mean_ms: float) -> BenchRow:
    # Named like a run directory: the claim must group by the architecture, not the name.
    stats = stats_from([mean_ms / 1e3] * 2, batch)
    return BenchRow(
        f"{model}-20261122", model, "fp32", "onnxruntime", "CPUExecutionProvider", stats
    )


def test_latency_claim_is_judged_from_the_numbers():
    names = architecture_names(PAPER)
    similar = [_row(n, 1, 1.0 + i * 0.2) for i, n in enumerate(names)]
    assert latency_claim(similar, "cpu").verdict == "supported"
    spread = [_row(n, 1, 1.0 + i * 5) for i, n in enumerate(names)]
    verdict = latency_claim(spread, "cpu")
    assert verdict.verdict == "not supported" and "16.0x" in verdict.evidence
    assert latency_claim(spread[:3], "cpu").verdict == "not measured"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["baseline-cnn", "--iters", "0"], "--iters must be in [1, 1,000,000], got 0"),
        (["baseline-cnn", "--threads", "0"], "--threads must be in [1, 1,024], got 0"),
        (["baseline-cnn", "--batch-sizes", "1,x"], "--batch-sizes takes positive integers"),
        (["corrupt.onnx"], "is not a readable ONNX model"),
        (["resnet152"], "is not an ONNX file, a run directory or unknown architecture"),
        (["baseline-cnn", "--json", "out.json"], "--json prints the report on stdout"),
        (["baseline-cnn", "--max-regression", "5"], "takes both --baseline OLD.json and"),
        (["baseline-cnn", "--baseline", "nope.json", "--max-regression", "5"], "does not exist"),
        (["baseline-cnn", "--baseline", "text.json", "--max-regression", "5"], "is not JSON"),
        (
            ["baseline-cnn", "--baseline", "other.json", "--max-regression", "5"],
            "is not an rtk bench report",
        ),
        (
            ["baseline-cnn", "--baseline", "other.json", "--max-regression", "-1"],
            "--max-regression is a percentage of 0 or more",
        ),
    ],
)
def test_bench_faults_are_one_line_exit_2(args: list[str], message: str, tmp_path: Path):
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage")
    (tmp_path / "text.json").write_text("p50 was 1.2 ms\n")
    (tmp_path / "other.json").write_text(json.dumps({"rows": [{"model": "x"}]}))  # not ours
    args = [str(tmp_path / a) if a.endswith((".onnx", ".json")) else a for a in args]
    result = run_cli("bench", *args, "--runs", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _bench(tmp_path: Path, *extra: str):
    """A short CPU bench of baseline-cnn, exported once per test (the export is the slow part)."""
    model = tmp_path / "baseline-cnn" / "model.onnx"
    if not model.exists():
        resolve_targets(["baseline-cnn"], runs=tmp_path, workdir=tmp_path, input_shape=None)
    return run_cli(
        "bench", str(model), "--batch-sizes", "1,2", "--iters", "3", "--warmup", "1",
        "--threads", "1", "--no-compare-torch", "--runs", str(tmp_path), *extra,
    )  # fmt: skip


def test_an_unwritable_json_out_never_loses_the_measurement(tmp_path: Path):
    (tmp_path / "file").write_text("")
    result = _bench(tmp_path, "--json-out", str(tmp_path / "file" / "bench.json"))
    assert result.exit_code == 2, result.output
    # The table and the verdict came first, and the history copy was kept.
    assert "p50" in result.stdout and "fp32 ceiling:" in result.stdout and "5(iii)" in result.stdout
    assert len(list((tmp_path / "bench").glob("bench-*.json"))) == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: cannot write") and "Traceback" not in result.stderr


def test_the_latency_gate_against_a_baseline(tmp_path: Path):
    first = tmp_path / "first.json"
    assert _bench(tmp_path, "--json-out", str(first)).exit_code == 0
    content = json.loads(first.read_text())
    assert [(r["engine"], r["stats"]["batch"]) for r in content["rows"]] == [
        ("onnxruntime", 1), ("onnxruntime", 2),
    ]  # fmt: skip

    def baseline(name: str, factors: tuple[float, float]) -> str:
        # The same report with its medians scaled: x1000 is a baseline no run can fall behind.
        for row, factor in zip(content["rows"], factors, strict=True):
            row["stats"]["p50_ms"] *= factor
        (tmp_path / name).write_text(json.dumps(content))
        return str(tmp_path / name)

    slower_at_2 = baseline("old.json", (1000, 1e-6))
    gate = ("--baseline", slower_at_2, "--max-regression", "10")
    failed = _bench(tmp_path, *gate)
    assert failed.exit_code == 1, failed.output
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("gate failed: median latency grew more than 10% over")
    assert "baseline-cnn fp32 onnxruntime on CPUExecutionProvider, batch 2:" in line
    assert "batch 1" not in line and "fp32 ceiling:" in failed.stdout
    passing = baseline("old2.json", (1, 1e12))  # both rows far slower in this baseline
    passed = _bench(tmp_path, "--baseline", passing, "--max-regression", "10")
    assert passed.exit_code == 0, passed.output
    assert "gate passed" in passed.stderr
    # A baseline of other models gives the gate nothing to compare: exit 2, not a silent pass.
    for row in content["rows"]:
        row["model"] = "resnet18"
    (tmp_path / "other.json").write_text(json.dumps(content))
    other = _bench(tmp_path, "--baseline", str(tmp_path / "other.json"), "--max-regression", "10")
    assert other.exit_code == 2 and "has no row for the models" in other.stderr


def test_bench_train_is_a_subcommand_with_json_on_stdout(tmp_path: Path):
    out = tmp_path / "train.json"
    result = run_cli(
        "bench", "train", "baseline-cnn", "--batch-size", "2", "--json", "--json-out", str(out)
    )
    assert result.exit_code == 0, result.output
    content = json.loads(result.stdout)
    assert content == json.loads(out.read_text())
    assert content["results"][0]["arch"] == "baseline-cnn"
    assert content["verdicts"][0]["verdict"] == "not measured"
