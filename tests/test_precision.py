"""bf16 on the CPU: how rtk tells whether the CPU computes it natively (both answers, from real
cpuinfo text), the refusal where it does not, what config.json and metrics.json record, the
fp32 test pass, and the exact-history resume of a bf16 run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.test_training import QUICK, _history, _InterruptAt
from toolkit.cli.app import app
from toolkit.data import Dataset, load_dataset
from toolkit.training import Trainer, TrainingInterrupted, make_config
from toolkit.training import device as device_module
from toolkit.training.device import cpu_bf16_support, resolve_precision

# Real /proc/cpuinfo lines (flags shortened): an AMD EPYC Zen 4 with AVX512-BF16, a Sapphire
# Rapids Xeon with AMX, and an AVX-512 Xeon (Skylake) and an AVX2 EPYC without either.
ZEN4 = (
    "cpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9R14\n"
    "flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16\n"
)
SAPPHIRE = "model name\t: Intel Xeon 8488C\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
SKYLAKE = "model name\t: Intel Xeon Platinum 8175M\nflags\t\t: fpu sse avx2 avx512f avx512bw\n"
ZEN3 = "model name\t: AMD EPYC 7R13\nflags\t\t: fpu sse avx2 fma\n"

runner = CliRunner()


def _host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpuinfo: str) -> None:
    """Make rtk read ``cpuinfo`` as this machine's /proc/cpuinfo."""
    fake = tmp_path / "cpuinfo"
    fake.write_text(cpuinfo)
    monkeypatch.setattr(device_module, "CPUINFO", fake)


@pytest.fixture
def dataset(imagefolder: Path) -> Dataset:
    return load_dataset(imagefolder)


@pytest.mark.parametrize(
    ("cpuinfo", "native", "named"),
    [
        (ZEN4, True, "avx512_bf16"),
        (SAPPHIRE, True, "avx512_bf16, amx_bf16"),
        (SKYLAKE, False, "neither avx512_bf16 nor amx_bf16"),
        (ZEN3, False, "neither avx512_bf16 nor amx_bf16"),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path, cpuinfo, native, named):
    _host(monkeypatch, tmp_path, cpuinfo)
    support = cpu_bf16_support()
    assert support.native is native
    assert named in support.source and str(tmp_path / "cpuinfo") in support.source
    cpu = torch.device("cpu")
    auto = resolve_precision("auto", cpu)
    assert (auto.dtype, auto.name) == ((torch.bfloat16, "bf16") if native else (None, "fp32"))
    assert named in auto.why
    assert resolve_precision(False, cpu).dtype is None


def test_an_unreadable_cpuinfo_counts_as_no_native_bf16(monkeypatch, tmp_path):
    monkeypatch.setattr(device_module, "CPUINFO", tmp_path / "absent")
    support = cpu_bf16_support()
    assert not support.native and "unreadable" in support.source


def test_amp_on_a_cpu_without_native_bf16_is_refused_in_one_line(
    monkeypatch, tmp_path, imagefolder
):
    _host(monkeypatch, tmp_path, SKYLAKE)
    out = tmp_path / "runs"
    args = ["train", "baseline-cnn", "--amp", "--device", "cpu", "--data", str(imagefolder)]
    result = runner.invoke(app, [*args, "--out", str(out), "--val-size", "50"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no native bf16" in lines[0] and "drop --amp" in lines[0]
    assert "slower than fp32" in lines[0]
    assert not out.exists() or not any(out.iterdir())  # nothing written
    # `rtk bench train --amp` says the same.
    bench = runner.invoke(app, ["bench", "train", "baseline-cnn", "--amp", "--device", "cpu"])
    assert bench.exit_code == 2 and "no native bf16" in bench.output


@pytest.mark.parametrize("native", [True, False])
def test_the_fast_recipe_records_the_precision_it_trained_in(
    monkeypatch, tmp_path, dataset, native
):
    _host(monkeypatch, tmp_path, ZEN4 if native else ZEN3)
    run = tmp_path / "run"
    result = Trainer(make_config("baseline-cnn", "fast", epochs=1, **QUICK), dataset, run).run()
    trained = "bf16" if native else "fp32"
    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["amp"] == "auto"
    precision = config["precision"]
    assert (precision["train"], precision["validation"], precision["test"]) == (
        trained,
        trained,
        "fp32",
    )
    assert f"native bf16 {'yes' if native else 'no'}" in precision["decided_by"]
    # The record names the CPU, so a time in it can be read without knowing the host.
    named = "AMD EPYC 9R14 (family 25, model 17)" if native else "AMD EPYC 7R13, "
    assert config["cpu"].startswith(named) and "logical CPUs usable" in config["cpu"]
    # The fast recipe keeps the final weights, and best.pt says so.
    assert torch.load(run / "best.pt", weights_only=True)["kept"] == "last epoch"
    assert torch.load(run / "best.pt", weights_only=True)["best_epoch"] == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["precision"], metrics["test_precision"]) == (trained, "fp32")
    assert (result.precision, result.test_precision) == (trained, "fp32")
    # --no-amp opts out; the paper's recipe stays fp32 wherever it runs.
    off = make_config("baseline-cnn", "fast", amp=False, epochs=1, **QUICK)
    assert Trainer(off, dataset, tmp_path / "off").run().precision == "fp32"
    assert make_config("baseline-cnn").amp is False


def test_the_test_pass_runs_in_fp32(monkeypatch, tmp_path, dataset):
    """The reported accuracy is the fp32 one: the same weights give the same test result as
    an fp32 run's evaluation of them, whatever precision trained them."""
    from toolkit.data import TensorLoader
    from toolkit.training import evaluate, load_checkpoint, model_from_checkpoint

    _host(monkeypatch, tmp_path, ZEN4)
    run = tmp_path / "run"
    result = Trainer(make_config("baseline-cnn", "fast", epochs=1, **QUICK), dataset, run).run()
    assert result.precision == "bf16"
    model = model_from_checkpoint(load_checkpoint(run / "best.pt")).to(
        memory_format=torch.channels_last
    )
    loader = TensorLoader(dataset.test, batch_size=500, channels_last=True)
    fp32 = evaluate(model, loader)
    assert result.test_acc == fp32.acc and result.test_loss == pytest.approx(fp32.loss, rel=1e-6)


def test_a_resumed_bf16_run_has_the_history_of_an_uninterrupted_one(monkeypatch, tmp_path, dataset):
    _host(monkeypatch, tmp_path, ZEN4)
    config = make_config("baseline-cnn", "fast", epochs=3, **QUICK)
    straight = Trainer(config, dataset, tmp_path / "straight").run()
    assert straight.precision == "bf16"
    with pytest.raises(TrainingInterrupted):
        Trainer(config, dataset, tmp_path / "cut", observer=_InterruptAt(2)).run()
    resumed = Trainer(config, dataset, tmp_path / "cut", resume=True).run()
    assert _history(resumed) == _history(straight)
    assert resumed.test_acc == straight.test_acc and resumed.test_acc_tta == straight.test_acc_tta
    # The same run on a host without native bf16 would go on in fp32: refused, nothing changed.
    with pytest.raises(TrainingInterrupted):
        Trainer(config, dataset, tmp_path / "moved", observer=_InterruptAt(2)).run()
    before = (tmp_path / "moved" / "last.pt").read_bytes()
    _host(monkeypatch, tmp_path, ZEN3)
    moved = runner.invoke(
        app, ["train", "--resume", str(tmp_path / "moved"), "--data", str(dataset.source.path)]
    )
    assert moved.exit_code == 2
    assert "trained in bf16 but would go on in fp32" in moved.output
    assert (tmp_path / "moved" / "last.pt").read_bytes() == before


def test_amp_through_the_cli_on_a_native_host(monkeypatch, tmp_path, imagefolder):
    _host(monkeypatch, tmp_path, SAPPHIRE)
    args = ["train", "baseline-cnn", "--amp", "--epochs", "1", "--val-size", "50"]
    done = runner.invoke(app, [*args, "--data", str(imagefolder), "--out", str(tmp_path), "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert (result["precision"], result["test_precision"]) == ("bf16", "fp32")


def test_doctor_says_whether_bf16_is_native_and_measures_it_only_then(monkeypatch, tmp_path):
    from analysis.doctor import cpu_checks

    for cpuinfo, native in ((ZEN4, True), (ZEN3, False)):
        _host(monkeypatch, tmp_path, cpuinfo)
        rows = {c.name: c for c in cpu_checks()}
        assert rows["native bf16"].status == ("ok" if native else "missing")
        assert ("lists avx512_bf16" in rows["native bf16"].detail) is native
        assert ("bf16 matmul" in rows) is native and "fp32 matmul" in rows


def test_reproduce_amp_options_reach_every_model_and_the_resume_command():
    from analysis.reproduce import BUDGETS, WITH_CONTROL, budget_config, with_amp

    for amp in (True, False):
        budget = with_amp(BUDGETS["quick"], amp)
        assert {budget_config(a, budget).amp for a in WITH_CONTROL} == {amp}
        assert budget.flags == ("--amp" if amp else "--no-amp")
    assert budget_config("resnet18", BUDGETS["quick"]).amp == "auto"  # the fast recipe's
    assert budget_config("resnet18", BUDGETS["paper"]).amp is False


def test_bench_train_in_bf16_counts_activations_not_autocasts_weight_copies():
    """ResNet-18's bf16 weight copies (22 MB) dwarf its activations at batch 2: counted as
    activations, they would make the bf16 figure larger than the fp32 one, not smaller."""
    from analysis.train_bench import bench_train_step
    from toolkit.training.device import FP32, Precision

    bf16 = Precision(torch.bfloat16, "bf16", "asked for by the test")
    fp32_step = bench_train_step("resnet18", batch=2, precision=FP32, warmup=0, iters=1)
    bf16_step = bench_train_step("resnet18", batch=2, precision=bf16, warmup=0, iters=1)
    assert (fp32_step.precision, bf16_step.precision) == ("fp32", "bf16")
    assert 0 < bf16_step.memory_mb < fp32_step.memory_mb < 22
