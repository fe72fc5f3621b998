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
    from analysis.bench import resolve_targets, run_bench

    targets, _ = resolve_targets(
        ["baseline-cnn"], runs=tmp_path, workdir=tmp_path, input_shape=None
    )
    report = run_bench(
        targets, provider=provider, batch_sizes=[8], warmup=2, iters=3, seconds=None,
        threads=None, io_binding=True, compare_torch=True, channels_last=False, notes=[],
    )  # fmt: skip
    assert (
        report.running
        == {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[provider]
    )
    assert [r.provider for r in report.rows] == [report.running, "torch cuda"]
