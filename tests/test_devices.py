"""The device logic of the GPU path, checked here on the CPU: which GPU a rank claims, what
it refuses, which precision it picks, what a resume restores. (The parts that need a real
GPU are in test_gpu.py, marked ``gpu``.)"""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.test_training import QUICK, _history, _InterruptAt
from toolkit.cli.app import app
from toolkit.config import ConfigError
from toolkit.data import Dataset, load_dataset
from toolkit.models import create_model
from toolkit.training import Trainer, TrainingInterrupted, distributed, make_config
from toolkit.training.device import Precision, resolve_precision, strict_fp32
from toolkit.training.engine import GradNorms


@pytest.fixture
def dataset(imagefolder: Path) -> Dataset:
    return load_dataset(imagefolder)


def test_a_cuda_rank_claims_its_own_gpu_before_joining_the_group(monkeypatch):
    calls: dict[str, object] = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("set_device", d))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        distributed.dist, "init_process_group", lambda **kw: calls.setdefault("init", kw)
    )
    world = distributed.init_world("cuda")
    assert (world.rank, world.local_rank, world.size) == (1, 1, 2)
    assert calls["set_device"] == torch.device("cuda", 1)
    assert calls["init"] == {"backend": "nccl", "device_id": torch.device("cuda", 1)}


def test_more_processes_than_visible_gpus_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"2 processes .* 1 is visible.*--nproc 1 or fewer"):
        distributed.check_gpus(2)
    distributed.check_gpus(1)  # enough


def test_amp_uses_bf16_only_where_the_gpu_runs_it_natively(monkeypatch):
    asked: list[bool] = []

    def supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return including_emulation  # an older GPU: bf16 only through emulation

    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    monkeypatch.setattr(torch.cuda, "device", lambda device: torch.device("cpu"))  # a no-op
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    older = resolve_precision(True, gpu)
    assert (older.dtype, older.name) == (torch.float16, "fp16")
    assert asked == [False]
    # The fast recipe's "auto" takes only native bf16: an older GPU stays in fp32.
    assert (resolve_precision("auto", gpu).dtype, resolve_precision("auto", gpu).name) == (
        None,
        "fp32",
    )
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve_precision(True, gpu).dtype == torch.bfloat16
    assert resolve_precision("auto", gpu).name == "bf16"
    # "fp32" on an Ampere GPU: cuDNN's convolutions run in TF32, and the record says so.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert resolve_precision(False, gpu) == Precision(None, "tf32", "amp off in the settings")
    with strict_fp32():  # the test pass
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32


def test_gradient_norms_skip_the_steps_the_fp16_scaler_skips():
    model = create_model("baseline-cnn")
    layers = model.weight_layers()
    norms = GradNorms(layers, batches=3, of=3)
    for scale in (1.0, float("inf"), 3.0):  # the middle step overflowed
        for layer in layers:
            layer.module.weight.grad = torch.full_like(layer.module.weight, scale)
        norms.add()
    means = norms.means()
    for layer in layers:
        one = torch.linalg.vector_norm(torch.ones_like(layer.module.weight)).item()
        assert means[layer.name] == pytest.approx(2 * one)  # the mean of 1x and 3x, no inf


def test_the_process_group_is_closed_on_ctrl_c(dataset: Dataset, tmp_path: Path, monkeypatch):
    closed: list[object] = []
    monkeypatch.setattr(distributed, "shutdown", closed.append)
    trainer = Trainer(make_config("baseline-cnn", epochs=2, **QUICK), dataset, tmp_path / "run",
                      observer=_InterruptAt(1))  # fmt: skip
    with pytest.raises(TrainingInterrupted):
        trainer.run()
    assert closed == [trainer.world]


def test_gpu_out_of_memory_is_one_line_naming_the_batch(imagefolder: Path, tmp_path: Path,
                                                        monkeypatch):  # fmt: skip
    def out_of_memory(self: Trainer) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "_train_epoch", out_of_memory)
    result = CliRunner().invoke(app, [
        "train", "baseline-cnn", "--epochs", "1", "--val-size", "50", "--data", str(imagefolder),
        "--out", str(tmp_path), "--batch-size", "32", "--quiet",
    ])  # fmt: skip
    assert result.exit_code == 2
    assert "ran out of memory at batch size 32" in result.output
    assert "smaller --batch-size" in result.output and "Traceback" not in result.output


def test_a_checkpoint_from_before_per_rank_rng_states_resumes_exactly(
    dataset: Dataset, tmp_path: Path
):
    """Runs started before each rank kept its own generator states store one CPU state and a
    list of every visible GPU's: they resume to the uninterrupted history."""
    config = make_config("baseline-cnn", epochs=3, **QUICK)
    whole = Trainer(config, dataset, tmp_path / "whole").run()
    with pytest.raises(TrainingInterrupted):
        Trainer(config, dataset, tmp_path / "cut", observer=_InterruptAt(3)).run()
    last = tmp_path / "cut" / "last.pt"
    payload = torch.load(last, weights_only=True)
    payload["rng"] = {"torch": payload["rng"]["torch"], "cuda": []}  # the old layout
    torch.save(payload, last)
    resumed = Trainer(config, dataset, tmp_path / "cut", resume=True).run()
    assert _history(resumed) == _history(whole)
    assert dataclasses.asdict(resumed.history[0])["compile_s"] == 0.0  # not compiled


_REFAULT = """
import ctypes, resource, sys, torch
from toolkit.training.device import keep_freed_memory
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: count base pages, as THP varies
if sys.argv[1] == "keep":
    print(keep_freed_memory())
def faults_of_one_step() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64, 1024, 1024).sum()  # a 256 MiB activation, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(*[faults_of_one_step() for _ in range(6)])
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_the_cpu_trainer_reuses_freed_activations_instead_of_faulting_them_back():
    # Each case in a fresh process: the setting is process-wide. By default glibc unmaps a
    # 256 MiB block on free and every step faults its pages back in; kept, the heap settles
    # within two steps (a small allocation may split the first freed block).
    def run(case: str) -> tuple[str, list[int]]:
        done = subprocess.run(
            [sys.executable, "-c", _REFAULT, case], capture_output=True, text=True, check=True
        )
        *said, faults = done.stdout.splitlines()
        return " ".join(said), [int(n) for n in faults.split()]

    pages = (256 << 20) // os.sysconf("SC_PAGE_SIZE")
    _, default = run("default")
    said, kept = run("keep")
    if "refused" in said:
        pytest.skip(f"this glibc refuses the setting (before 2.35): {said}")
    assert all(n > 0.9 * pages for n in default), default
    assert sum(kept[2:]) < pages / 64, kept
    assert said == "glibc malloc, mmap threshold 1024 MiB, trim threshold 2048 MiB"
