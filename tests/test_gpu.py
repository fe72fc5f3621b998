"""CUDA paths, written from PyTorch's documentation; they skip where CUDA is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from toolkit.data import load_dataset
from toolkit.training import Trainer, load_checkpoint, make_config

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("amp", [False, True])
def test_cuda_training_with_and_without_amp(imagefolder: Path, tmp_path: Path, amp: bool):
    config = make_config("mini-resnet", epochs=2, val_size=50, device="cuda", amp=amp)
    result = Trainer(config, load_dataset(imagefolder), tmp_path / "run").run()
    assert result.device.startswith("cuda")
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.history[0].peak_mem_mb > 0  # torch.cuda.max_memory_allocated
    # Checkpoints written on the GPU load on the CPU.
    assert load_checkpoint(tmp_path / "run" / "best.pt")["state_dict"]["fc.weight"].is_cpu


def test_loader_keeps_batches_on_the_device(imagefolder: Path):
    from toolkit.data import PAPER_AUGMENT, TensorLoader

    train = load_dataset(imagefolder).train
    loader = TensorLoader(train, batch_size=32, device="cuda", shuffle=True, augment=PAPER_AUGMENT)
    images, labels = next(iter(loader))
    assert images.is_cuda and labels.is_cuda
    cpu = TensorLoader(train, batch_size=32, device="cpu", shuffle=True, augment=PAPER_AUGMENT)
    torch.testing.assert_close(images.cpu(), next(iter(cpu))[0])  # same seed, same batch


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_bench_runs_on_the_asked_provider(tmp_path: Path, provider: str):
    from analysis.bench import BenchSettings, resolve_targets, run_bench

    targets, _ = resolve_targets(
        ["baseline-cnn"], runs=tmp_path, workdir=tmp_path, input_shape=None
    )
    settings = BenchSettings(
        provider=provider, batch_sizes=(8,), warmup=2, iters=3, io_binding=True
    )
    report = run_bench(targets, settings=settings, notes=[])
    assert (
        report.running
        == {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[provider]
    )
    assert [r.provider for r in report.rows] == [report.running, "torch cuda"]


def test_a_cuda_checkpoint_loads_with_plain_torch_load_where_there_is_no_gpu(
    imagefolder: Path, tmp_path: Path
):
    import subprocess
    import sys

    config = make_config("baseline-cnn", epochs=1, val_size=50, device="cuda")
    Trainer(config, load_dataset(imagefolder), tmp_path / "run").run()
    for name in ("best.pt", "last.pt"):  # the README's promise, in a process that sees no GPU
        code = f"import torch; torch.load({str(tmp_path / 'run' / name)!r}, weights_only=True)"
        env = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
        assert done.returncode == 0, done.stderr


def test_training_batches_need_no_host_sync(imagefolder: Path):
    """An epoch's batches (shuffle, augmentation, normalisation) and a training step run with
    CUDA's sync debug mode set to raise on any synchronising call."""
    from toolkit.data import TensorLoader
    from toolkit.data.transforms import Augment
    from toolkit.models import create_model

    train = load_dataset(imagefolder).train
    spec = Augment(flip=True, brightness=0.1, translate=4)
    loader = TensorLoader(train, batch_size=32, device="cuda", shuffle=True, augment=spec)
    model = create_model("baseline-cnn").cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=True)
    next(iter(loader))  # first-use set-up (constants, cuDNN handles) may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for images, labels in loader:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_compiled_cuda_run_reports_compilation_apart(imagefolder: Path, tmp_path: Path):
    config = make_config("baseline-cnn", epochs=2, val_size=50, device="cuda", compile=True)
    history = Trainer(config, load_dataset(imagefolder), tmp_path / "run").run().history
    assert history[0].compile_s > 0 and history[1].compile_s == 0
    assert history[0].epoch_s > history[0].compile_s


def test_an_fp16_run_resumes_on_a_bf16_gpu(imagefolder: Path, tmp_path: Path, monkeypatch):
    """The scaler state an fp16 run saves means nothing under bf16, and bf16 saves none."""
    from tests.test_training import _InterruptAt
    from toolkit.training import TrainingInterrupted

    dataset = load_dataset(imagefolder)
    config = make_config("baseline-cnn", epochs=2, val_size=50, device="cuda", amp=True)
    with monkeypatch.context() as patch:  # an older GPU: bf16 only through emulation
        patch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
        with pytest.raises(TrainingInterrupted):
            Trainer(config, dataset, tmp_path / "run", observer=_InterruptAt(2)).run()
    result = Trainer(config, dataset, tmp_path / "run", resume=True).run()
    assert result.epochs_run == 2
