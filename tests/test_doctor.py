"""``rtk doctor`` on this machine: each check runs for real and reports what it finds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from analysis.doctor import Check, DoctorReport, data_checks, diagnose, view_checks
from exporters.runtime import PROVIDERS, probe_provider
from exporters.view import find_browser
from toolkit.cli.app import app
from toolkit.data import load_dataset
from toolkit.training.device import cpu_flags

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
def report() -> DoctorReport:
    return diagnose()


def by_name(report: DoctorReport) -> dict[str, Check]:
    return {check.name: check for check in report.checks}


def test_every_section_reports_once_and_none_broke(report: DoctorReport):
    names = [check.name for check in report.checks]
    assert len(names) == len(set(names))
    sections = {check.section for check in report.checks}
    assert sections == {"cpu", "torch", "onnxruntime", "openvino", "view", "data"}
    assert not sections & set(names)  # a group that raised is reported under its own name
    rows = by_name(report)
    assert rows["PyTorch"].detail.startswith(torch.__version__)
    assert rows["fp32 matmul"].status == "ok" and "GFLOP/s" in rows["fp32 matmul"].detail


def test_cpu_provider_takes_and_runs_the_node(report: DoctorReport):
    probe = probe_provider(PROVIDERS["cpu"])
    assert probe.listed and probe.ran and probe.running == "CPUExecutionProvider"
    row = by_name(report)["ORT CPUExecutionProvider"]
    assert row.status == "ok" and "ran a one-node model" in row.detail


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")
def test_without_a_gpu_the_cuda_rows_say_so(report: DoctorReport):
    rows = by_name(report)
    assert rows["CUDA"].status == "missing" and "no CUDA device" in rows["CUDA"].detail
    assert not [name for name in rows if name.startswith("GPU ")]
    probe = probe_provider(PROVIDERS["cuda"])
    assert not probe.ran
    cuda = rows["ORT CUDAExecutionProvider"]
    if probe.listed:
        # The GPU build lists CUDA here and silently runs the node on the CPU: caught, with
        # ORT's own reason quoted.
        assert probe.running == "CPUExecutionProvider"
        assert cuda.status == "failed" and "fell back to CPUExecutionProvider" in cuda.detail
        assert "gave no reason" not in cuda.detail
    else:
        assert cuda.status == "missing"
    assert rows["ORT TensorrtExecutionProvider"].status != "ok"
    tensorrt = rows["TensorRT libraries"]  # the sonames read from the provider with ldd
    assert tensorrt.status == "missing"
    assert "libnvinfer.so" in tensorrt.detail or "no TensorRT provider" in tensorrt.detail


def test_a_provider_this_build_lacks_is_missing_not_an_error():
    probe = probe_provider("NoSuchExecutionProvider")
    assert (probe.listed, probe.ran, probe.running) == (False, False, None)
    assert "not in this ONNX Runtime build" in probe.reason


def test_cpu_flags_are_read_from_cpuinfo(report: DoctorReport):
    x86 = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
    assert cpu_flags(x86) == {"fpu", "sse", "avx2", "avx512f", "avx512_vnni"}
    assert cpu_flags("processor\t: 0\nFeatures\t: fp asimd\n") == {"fp", "asimd"}
    assert cpu_flags("") == set()
    here = cpu_flags(Path("/proc/cpuinfo").read_text())
    rows = by_name(report)
    assert (rows["AVX2"].status == "ok") == ("avx2" in here)
    assert (rows["AVX-512"].status == "ok") == ("avx512f" in here)


def test_data_rows_follow_the_lookup_and_the_cache(
    imagefolder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)  # no ./data here, and RTK_DATA is unset (conftest)
    data, cache = data_checks()
    assert data.status == "missing" and f"download CIFAR-10 into {tmp_path / 'data'}" in data.detail
    assert cache.status == "ok" and "0 files" in cache.detail

    monkeypatch.setenv("RTK_DATA", str(imagefolder))
    load_dataset()  # decodes and writes the one cache file into $RTK_CACHE_DIR
    data, cache = data_checks()
    assert data.status == "ok"
    assert data.detail == f"{imagefolder.resolve()} (imagefolder, from RTK_DATA)"
    assert "1 file," in cache.detail and "holds this data's decoded copy" in cache.detail

    monkeypatch.setenv("RTK_DATA", str(tmp_path / "nowhere"))
    data, _ = data_checks()
    assert data.status == "failed" and "does not exist" in data.detail

    (tmp_path / "a-file").write_text("")  # the cache cannot be made where a file is
    monkeypatch.setenv("RTK_CACHE_DIR", str(tmp_path / "a-file"))
    _, cache = data_checks()
    assert cache.status == "failed" and "is a file, not a folder" in cache.detail


def test_browser_row_follows_rtk_views_rule(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if sys.platform == "linux":
        browser = view_checks()[-1]
        assert browser.status == "missing" and "no display" in browser.detail
    monkeypatch.setenv("DISPLAY", ":0")
    browser = view_checks()[-1]
    assert (browser.status == "ok") == (find_browser() is not None)


def test_json_has_the_same_rows_as_the_table():
    table = run_cli("doctor")
    as_json = run_cli("doctor", "--json")
    assert table.exit_code == 0 and as_json.exit_code == 0, table.stderr + as_json.stderr
    checks = json.loads(as_json.stdout)["checks"]
    cells = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in table.stdout.splitlines()
        if line.startswith("│")
    ]
    table_rows = [(row[0], row[1]) for row in cells if row[0]]  # wrapped details leave row[0] ""
    assert table_rows == [(c["name"], c["status"]) for c in checks]
    assert {c["status"] for c in checks} <= {"ok", "missing", "failed"}


def test_bad_option_exits_2():
    result = run_cli("doctor", "--verbose")
    assert result.exit_code == 2


def test_importing_the_cli_does_not_import_torch():
    code = "import toolkit.cli.app, sys; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.gpu
def test_cuda_rows_are_ok_on_a_cuda_host(report: DoctorReport):
    rows = by_name(report)
    assert rows["CUDA"].status == "ok"
    assert rows["GPU 0"].status == "ok" and "ran a float16" in rows["GPU 0"].detail
    assert rows["cuDNN"].status == "ok" and "ran a convolution" in rows["cuDNN"].detail
    cuda = rows["ORT CUDAExecutionProvider"]
    assert cuda.status == "ok", cuda.detail
    assert probe_provider(PROVIDERS["cuda"]).running == "CUDAExecutionProvider"
