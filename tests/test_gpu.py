"""CUDA paths, written from PyTorch's documentation; they skip where CUDA is absent."""

from __future__ import annotations

import json
import subprocess
import sys
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
    settings = BenchSettings(provider=provider, batch_sizes=(8,), warmup=2, iters=3)
    report = run_bench(targets, settings=settings, notes=[])
    assert (
        report.running
        == {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[provider]
    )
    # Every node on the asked provider (no CPU, nor CUDA under TensorRT), data on the device.
    assert [r.provider for r in report.rows] == [report.running, "torch cuda"]
    assert report.io_binding and not report.cpu_fallback
    assert report.rows[0].detail == "io-binding (data on the device)"


# The README's "Running on a GPU" commands, each run here as written (with a tiny dataset, one
# epoch and small batches added).


def _rtk(*args: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("rtk")), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=1200)


def _quick(imagefolder: Path, out: Path, name: str) -> list[str]:
    return ["--epochs", "1", "--val-size", "50", "--data", str(imagefolder),
            "--out", str(out), "--name", name, "--quiet"]  # fmt: skip


def test_readme_one_gpu(imagefolder: Path, tmp_path: Path):
    done = _rtk(
        "train", "mini-resnet", "--device", "cuda", "--amp", *_quick(imagefolder, tmp_path, "one")
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "one" / "metrics.json").read_text())["epochs_run"] == 1


def test_readme_several_gpus(imagefolder: Path, tmp_path: Path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    args = ["--device", "cuda", "--amp", "--nproc", "2", *_quick(imagefolder, tmp_path, "ddp")]
    done = _rtk("train", "mini-resnet", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2


def test_readme_multi_node_command_on_one_node(imagefolder: Path, tmp_path: Path):
    """The README's torchrun line, with one node (its rendezvous on this machine)."""
    gpus = min(2, torch.cuda.device_count())
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--nnodes", "1", "--node-rank", "0", "--nproc-per-node", str(gpus),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:29531",
               "-m", "toolkit", "train", "mini-resnet", "--device", "cuda", "--amp",
               *_quick(imagefolder, tmp_path, "nodes")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "nodes" / "config.json").read_text())["world_size"] == gpus


@pytest.fixture
def exported_for_tensorrt(imagefolder: Path, tmp_path: Path) -> Path:
    """A run folder with fp32 and TensorRT-recipe INT8 exports (the README's export line)."""
    from tests.test_export import write_checkpoint

    run = write_checkpoint(tmp_path / "run", "baseline-cnn")
    quick = ["--data", str(imagefolder), "--parity-images", "50", "--calib-images", "64"]
    done = _rtk("export", str(run), "--onnx", "--int8", "--int8-for", "tensorrt", *quick)
    assert done.returncode == 0, done.stderr[-2000:]
    return run


def _bench_rows(run: Path, runs: Path, provider: str) -> list[dict]:
    out = runs / f"{provider}.json"
    done = _rtk("bench", str(run), "--provider", provider, "--batch-sizes", "8", "--iters", "5",
                "--runs", str(runs), "--json-out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())["rows"]


def test_readme_tensorrt_bench_reuses_its_engines(exported_for_tensorrt: Path, tmp_path: Path):
    runs = tmp_path / "runs"
    rows = _bench_rows(exported_for_tensorrt, runs, "tensorrt")
    by = {(r["precision"], r["engine"]): r for r in rows}
    assert (
        by["int8", "onnxruntime"]["provider"] == "TensorrtExecutionProvider"
    )  # symmetric Q/DQ taken
    assert by["fp32", "onnxruntime"]["provider"] == "TensorrtExecutionProvider"
    engines = sorted((runs / "bench" / "tensorrt-cache").glob("*/*.engine"))
    assert len({e.parent for e in engines}) == 2  # one folder per model file
    built = {e: e.stat().st_mtime_ns for e in engines}
    _bench_rows(exported_for_tensorrt, runs, "tensorrt")
    after = sorted((runs / "bench" / "tensorrt-cache").glob("*/*.engine"))
    assert {e: e.stat().st_mtime_ns for e in after} == built  # loaded, not rebuilt


def test_readme_cuda_bench_says_int8_computes_in_fp32(exported_for_tensorrt: Path, tmp_path: Path):
    rows = _bench_rows(exported_for_tensorrt, tmp_path / "runs", "cuda")
    int8 = next(r for r in rows if r["precision"] == "int8")
    assert int8["provider"] == "CUDAExecutionProvider"
    assert "int8 weights, fp32 compute" in int8["detail"]


def test_readme_bench_train_on_cuda_measures_activations(tmp_path: Path):
    from analysis.train_bench import saved_activation_bytes
    from toolkit.models import create_model

    args = ["bench", "train", "resnet18", "resnet18-noskip", "--batch-size", "8", "--json"]
    done = _rtk(*args, "--device", "cuda")
    assert done.returncode == 0, done.stderr[-2000:]
    cuda = json.loads(done.stdout)
    on_cpu = json.loads(_rtk(*args, "--device", "cpu").stdout)
    for gpu_row, cpu_row in zip(cuda["results"], on_cpu["results"], strict=True):
        assert gpu_row["device"] == "cuda" and gpu_row["memory_method"] == cpu_row["memory_method"]
        assert gpu_row["memory_mb"] == pytest.approx(cpu_row["memory_mb"], rel=0.2)
    # The measure agrees with what CUDA's allocator holds after the forward pass.
    model = create_model("resnet18").cuda().train()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (8,), device="cuda")
    saved = saved_activation_bytes(model, x, y)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    held = torch.cuda.memory_allocated() - before
    del loss
    assert 0.5 < saved / held <= 1.1


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
