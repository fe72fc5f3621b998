"""The bad-input catalogue: every input a careless user or an attacker can give rtk, one row each.

A row is the command line, an optional setup that makes the bad input from real files (real
JPEGs, a real checkpoint, a real ONNX file), the exit code, and a phrase of the message. Every
row runs through the real CLI and must end in exactly one line on stderr, no traceback, never
torch's ``weights_only=False`` advice, and nothing created or changed under the workspace (the
data, the runs folder, the checkpoint: every file and folder, by type, size and mtime). Adding
a case is adding a row.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import struct
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import CLASSES, TinyData, write_cifar_python
from tests.test_export import _bare_model
from toolkit.cli import app
from toolkit.training import SeedGroup, initial_checkpoint, make_config, save_checkpoint

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
HANG_S = 60  # a FIFO opened for reading waits forever for a writer: fail instead of hanging
FAST_S = 20  # rows refused before anything is timed or trained: far more means no refusal


@dataclass(frozen=True)
class Workspace:
    """Real inputs for the rows: ``cifar10-jpeg/`` (an ImageFolder of real JPEGs), ``runs/``
    (empty), ``ckpt.pt`` (a real checkpoint of baseline-cnn), ``model.onnx`` (an ONNX
    classifier of 4 classes without rtk metadata) and ``file`` (a regular file, so that
    ``file/sub`` is an output folder nobody can create, not even root)."""

    root: Path
    tiny: TinyData

    @property
    def data(self) -> Path:
        return self.root / "cifar10-jpeg"

    @property
    def image(self) -> Path:
        return sorted((self.data / "test" / "cat").iterdir())[0]


Setup = Callable[[Workspace], object]


# --- the commands the rows run ----------------------------------------------------------------


def train(*extra: str) -> list[str]:
    base = ["train", "baseline-cnn", "--epochs", "1", "--val-size", "50"]
    return [*base, "--data", "{data}", "--out", "{ws}/runs", *extra]


def predict(*extra: str, model: str = "{ws}/model.onnx", image: str = "{image}") -> list[str]:
    return [
        "predict", model, image, "--classes", "a,b,c,d", "--mean", "0,0,0", "--std", "1,1,1",
        *extra,
    ]  # fmt: skip


def bench_gate(baseline: str) -> list[str]:
    return ["bench", "baseline-cnn", "--baseline", baseline, "--max-regression", "10", "--runs",
            "{ws}/runs"]  # fmt: skip


def export(checkpoint: str = "{ws}/bad.pt", *extra: str) -> list[str]:
    # --json, since without it the opset notice would be a second line on stderr
    return ["export", checkpoint, "--onnx", "--json", "--data", "{data}", *extra]


def report(kind: str, *extra: str) -> list[str]:
    return ["report", kind, "{ws}/ckpt.pt", "--data", "{data}", *extra]


def analyze(kind: str, source: str, *extra: str) -> list[str]:
    return ["analyze", kind, source, "--data", "{data}", *extra]


# --- setups: each makes one bad input from real files -------------------------------------


def _fewer_classes(ws: Workspace) -> None:
    for split in ("train", "test"):
        for name in CLASSES[5:]:
            shutil.rmtree(ws.data / split / name)


def _one_class(ws: Workspace) -> None:
    for split in ("train", "test"):
        for name in CLASSES:
            if name != "cat":  # the rows' {image} is one of its test images
                shutil.rmtree(ws.data / split / name)


def _huge_first_image(ws: Workspace) -> None:
    """The tree's first training image (which sets the size of all) larger than rtk holds."""
    path = sorted((ws.data / "train" / "airplane").iterdir())[0]
    with Image.open(path) as image:
        image.resize((1100, 1100)).save(path, format="JPEG")


def _resized_image(ws: Workspace) -> None:
    """One training image of the real dataset stored at another size than the rest."""
    path = sorted((ws.data / "train" / "dog").iterdir())[3]
    with Image.open(path) as image:
        image.resize((40, 40)).save(path, format="JPEG")


def _fifo(name: str) -> Setup:
    return lambda ws: os.mkfifo(ws.root / name)


def _write(name: str, make: Callable[[Workspace], bytes]) -> Setup:
    return lambda ws: (ws.root / name).write_bytes(make(ws))


def _cifar_python(ws: Workspace) -> None:
    write_cifar_python(ws.root / "cifar-python", ws.tiny)


def _truncated_tarball(ws: Workspace) -> bytes:
    folder = write_cifar_python(ws.root / "build" / "cifar-10-batches-py", ws.tiny)
    whole = ws.root / "build" / "cifar-10-python.tar.gz"
    with tarfile.open(whole, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return whole.read_bytes()[: whole.stat().st_size // 2]


def _checkpoint(mutate: Callable[[dict], object]) -> Setup:
    """A real baseline-cnn checkpoint at ``bad.pt``, changed by ``mutate``."""

    def setup(ws: Workspace) -> None:
        payload = initial_checkpoint("baseline-cnn", list(CLASSES))
        mutate(payload)
        save_checkpoint(ws.root / "bad.pt", payload)

    return setup


def _unsafe_checkpoint(ws: Workspace) -> None:
    # A pickle that names a callable: the classic payload the safe loader exists to refuse.
    payload = {**initial_checkpoint("baseline-cnn", list(CLASSES)), "hook": print}
    torch.save(payload, ws.root / "bad.pt")


def _forged_png(width: int, height: int) -> Callable[[Workspace], bytes]:
    """A real image as PNG whose header claims ``width`` x ``height``: a decompression bomb's
    first bytes (Pillow reads the size from the header before any pixel)."""

    def make(ws: Workspace) -> bytes:
        buffer = io.BytesIO()
        Image.open(ws.image).save(buffer, format="PNG")
        png = bytearray(buffer.getvalue())
        png[16:24] = struct.pack(">II", width, height)  # IHDR's width and height
        png[29:33] = struct.pack(">I", zlib.crc32(png[12:29]))  # the chunk's CRC
        return bytes(png)

    return make


def _huge_file(ws: Workspace) -> None:
    path = ws.root / "huge.jpg"
    shutil.copy(ws.image, path)
    with path.open("r+b") as handle:
        handle.truncate(65 * 2**20)  # sparse: a 65 MiB file that takes no disk space


def _resnet20_checkpoint(ws: Workspace) -> None:
    save_checkpoint(ws.root / "resnet20.pt", initial_checkpoint("resnet20", list(CLASSES)))


def _foreign_weights(payload: dict) -> None:
    payload["state_dict"] = initial_checkpoint("mini-resnet", list(CLASSES))["state_dict"]


def _run_folder(files: dict[str, str]) -> Setup:
    """A run folder ``runs/r`` holding ``files`` (name -> text), as a killed or edited run
    leaves it."""

    def setup(ws: Workspace) -> None:
        run = ws.root / "runs" / "r"
        run.mkdir()
        for name, text in files.items():
            (run / name).write_text(text)

    return setup


def _onnx_with_metadata(key: str, value: str) -> Setup:
    """``meta.onnx``: the workspace's bare classifier carrying one hand-written metadata entry."""

    def setup(ws: Workspace) -> None:
        import onnx

        model = onnx.load(str(ws.root / "model.onnx"))
        onnx.helper.set_model_props(model, {key: value})
        onnx.save(model, str(ws.root / "meta.onnx"))

    return setup


def _edited_group(**changes: object) -> Setup:
    """The seed group ``runs/g`` with its manifest edited: ``changes`` to its top level, or to
    its settings under the key ``settings``."""

    def setup(ws: Workspace) -> None:
        import json

        _seed_group()(ws)
        manifest = ws.root / "runs" / "g" / "group.json"
        content = json.loads(manifest.read_text())
        settings = changes.get("settings", {})
        assert isinstance(settings, dict)
        content.update({k: v for k, v in changes.items() if k != "settings"})
        content["settings"].update(settings)
        manifest.write_text(json.dumps(content))

    return setup


def _finished_run_with_a_folder_as(name: str) -> Setup:
    """``runs/r``: a finished run (metrics.json, last.pt, config.json) whose ``name`` is a
    folder: a resume must refuse it and leave the finished result as it is."""

    def setup(ws: Workspace) -> None:
        run = ws.root / "runs" / "r"
        run.mkdir()
        (run / "metrics.json").write_text('{"test_acc": 0.5}')
        (run / "config.json").write_text('{"settings": {"arch": "baseline-cnn"}}')
        shutil.copyfile(ws.root / "ckpt.pt", run / "last.pt")
        (run / name).unlink()
        (run / name).mkdir()

    return setup


def _huge_input_model(ws: Workspace) -> None:
    """``huge.onnx``: a classifier whose fixed input is one 3x40000x40000 image."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 40000, 40000])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]  # fmt: skip
    graph = helper.make_graph(nodes, "huge", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(model, str(ws.root / "huge.onnx"))


def _nan_weights_model(ws: Workspace) -> None:
    """``nan.onnx``: the workspace's bare classifier with NaN weights (a diverged run's)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(ws.root / "model.onnx"))
    (weight,) = model.graph.initializer
    nan = np.full(tuple(weight.dims), np.nan, dtype=np.float32)
    weight.CopyFrom(numpy_helper.from_array(nan, weight.name))
    onnx.save(model, str(ws.root / "nan.onnx"))


def _two_checkpoints_named_alike(ws: Workspace) -> None:
    for folder in ("a", "b"):
        (ws.root / folder).mkdir()
        shutil.copyfile(ws.root / "ckpt.pt", ws.root / folder / "ckpt.pt")


def _seed_group(data: str | None = None) -> Setup:
    """A seed group ``runs/g`` (baseline-cnn, seeds 0 and 1) as ``rtk train --seeds`` makes it
    before its first seed trains; on ``data``, or the workspace's dataset."""

    def setup(ws: Workspace) -> None:
        config = make_config("baseline-cnn", epochs=1, val_size=50)
        SeedGroup.create(ws.root / "runs" / "g", config, (0, 1), data=data or str(ws.data))

    return setup


@dataclass(frozen=True)
class Row:
    id: str
    args: list[str]  # {ws}, {data} and {image} stand for the workspace's paths
    code: int
    phrase: str  # in the one line on stderr
    setup: Setup | None = None
    marks: tuple = ()
    timeout_s: int = HANG_S  # the row fails when rtk still runs after this


_EPOCH = (
    '{"epoch": 1, "train_loss": 2.3, "train_acc": 0.1, "val_loss": 2.3, "val_acc": 0.1, '
    '"lr": 0.001, "epoch_s": 1.0, "images_per_s": 100.0, "peak_mem_mb": 10.0}\n'
)

_METRICS = (  # a finished run's test result, as rtk writes it
    '{"arch": "baseline-cnn", "test_acc": 0.5, "test_acc_tta": null, "test_loss": 1.0, '
    '"best_epoch": 1, "epochs_run": 1, "stopped_early": false, "train_s": 1.0, '
    '"device": "cpu", "test_images": 10}'
)

# fmt: off
ROWS = [
    # rtk train: every setting finite and in range, refused before a run folder exists
    Row("lr-nan", train("--lr", "nan"), 2, "--lr must be a finite number"),
    Row("lr-inf", train("--lr", "inf"), 2, "--lr must be a finite number"),
    Row("lr-zero", train("--lr", "0"), 2, "--lr must be positive"),
    Row("epochs-zero", train("--epochs", "0"), 2, "--epochs must be positive"),
    Row("batch-negative", train("--batch-size", "-4"), 2, "--batch-size must be positive"),
    Row("plateau-factor-1", train("--plateau-factor", "1"), 2, "--plateau-factor must be in (0,"),
    Row("plateau-factor-0", train("--plateau-factor", "0"), 2, "--plateau-factor must be in (0,"),
    Row("plateau-patience", train("--plateau-patience", "-1"), 2, "--plateau-patience must be 0"),
    Row("patience", train("--patience", "-1"), 2, "--patience must be 0 (off) or more"),
    Row("weight-decay-neg", train("--weight-decay", "-1e-4"), 2, "--weight-decay must be 0 or"),
    Row("weight-decay-nan", train("--weight-decay", "nan"), 2, "--weight-decay must be a finite"),
    Row("momentum", train("--momentum", "1.5"), 2, "--momentum must be in [0, 1)"),
    Row("nesterov-momentum", train("--recipe", "fast", "--momentum", "0"), 2, "Nesterov momentum"),
    Row("seed", train("--seed", "-1"), 2, "--seed must be in [0, 2**64)"),
    Row("translate-big", train("--translate", "40"), 2,
        "--translate must be in [0, 31] pixels for 32x32 images"),
    Row("translate-neg", train("--translate", "-1"), 2, "--translate must be 0 or more pixels"),
    Row("dropout", train("--dropout", "1"), 2, "--dropout must be in [0, 1)"),
    Row("label-smoothing", train("--label-smoothing", "1.5"), 2, "--label-smoothing must be in"),
    Row("warmup-frac", train("--warmup-frac", "-0.1"), 2, "--warmup-frac must be in [0, 1)"),
    Row("val-size-neg", train("--val-size", "-1"), 2, "--val-size must be 0 or more"),
    Row("val-size-all", train("--val-size", "200"), 2, "--val-size 200 leaves no training"),
    Row("train-subset", train("--train-subset", "0"), 2, "--train-subset must be positive"),
    Row("recipe", train("--recipe", "adamw"), 2, "unknown recipe 'adamw'"),
    Row("arch", ["train", "resnet152", "--data", "{data}"], 2, "unknown architecture 'resnet152'"),
    Row("nproc", train("--nproc", "0"), 2, "--nproc must be at least 1"),
    Row("nproc-lr", train("--nproc", "2", "--lr", "nan"), 2, "--lr must be a finite number"),
    # conftest shows every test this CPU without native bf16
    Row("amp-cpu-no-bf16", train("--amp", "--device", "cpu"), 2,
        "--amp on this CPU would train slower than fp32: it has no native bf16"),
    Row("amp-no-bf16-seeds", train("--amp", "--seeds", "0,1"), 2, "it has no native bf16"),
    Row("amp-no-bf16-nproc", train("--amp", "--nproc", "2"), 2, "it has no native bf16"),
    Row("amp-no-bf16-reproduce", ["reproduce", "--amp", "--data", "{data}", "--out",
        "{ws}/runs/rep", "--models", "ResNet18_noskip"], 2, "would train slower than fp32"),
    Row("init", train("--init", "xavier"), 2,
        "--init must be one of 'kaiming', 'torch', got 'xavier'"),
    Row("cuda", train("--device", "cuda"), 2, "CUDA is not available", marks=(NO_CUDA,)),
    Row("resume-missing", ["train", "--resume", "{ws}/nowhere"], 2, "does not exist"),
    # Text from paths and names is shown as it is: Rich markup neither read nor lost, control
    # characters escaped (a `[/]` gave a 33-line traceback, an escape code reached the terminal)
    Row("name-markup", train("--name", "a[/]b"), 2, "--name 'a[/]b' must be a plain folder"),
    Row("name-markup-tag", train("--name", "[bold]x/y"), 2,
        "--name '[bold]x/y' must be a plain folder name"),
    Row("data-markup", ["train", "baseline-cnn", "--data", "{ws}/no[/]where[red]"], 2,
        "data path {ws}/no[/]where[red] (from --data) does not exist"),
    Row("path-control-chars", ["report", "compare", "{ws}/run\x1b[2J\x07"], 2,
        "{ws}/run\\x1b[2J\\x07 is not a run directory"),
    # rtk train --seeds: the list of seeds, what it cannot be combined with, groups on disk
    Row("seeds-empty", train("--seeds", ""), 2, "--seeds needs at least one seed"),
    Row("seeds-duplicate", train("--seeds", "0,1,1"), 2, "--seeds names seed 1 twice"),
    Row("seeds-negative", train("--seeds", "0,-1"), 2, "every seed must be in [0, 2**64), got -1"),
    Row("seeds-fraction", train("--seeds", "0,1.5"), 2, "--seeds takes whole numbers separated"),
    Row("seeds-word", train("--seeds", "a,b"), 2, "e.g. 0,1,2; got 'a'"),
    Row("seeds-and-seed", train("--seed", "1", "--seeds", "0,1"), 2, "--seed and --seeds exclude"),
    Row("seeds-nproc", train("--seeds", "0,1", "--nproc", "2"), 2, "drop --nproc"),
    Row("seeds-group-exists", train("--seeds", "0,1", "--name", "g"), 2,
        "already exists; pick another --name or continue it with --resume", _seed_group()),
    Row("seeds-resume-epochs", ["train", "--resume", "{ws}/runs/g", "--epochs", "3"], 2,
        "--epochs cannot change", _seed_group()),
    Row("seeds-resume-seeds", ["train", "--resume", "{ws}/runs/g", "--seeds", "0,1"], 2,
        "only --epochs may change (got --seeds)", _seed_group()),
    Row("seeds-resume-data", ["train", "--resume", "{ws}/runs/g", "--data", "{data}"], 2,
        "pass the group's own --data", _seed_group("/elsewhere")),
    # rtk train: the run folder stays inside --out
    Row("name-parent", train("--name", "../escaped"), 2, "must be a plain folder name"),
    Row("name-absolute", train("--name", "{ws}/elsewhere"), 2, "must be a plain folder name"),
    Row("name-nested", train("--name", "a/b"), 2, "must be a plain folder name"),
    Row("name-dot", train("--name", "."), 2, "must be a plain folder name"),
    # rtk train: data that does not fit the model; an output folder nobody can create
    Row("one-class", train(), 2, "has one class folder (cat); a classifier needs at least two",
        _one_class),
    Row("mixed-sizes", train(), 2, "is 40x40 but the first training image is 32x32; the images "
        "must share one size: pass --image-size N", _resized_image),
    Row("image-size-small", train("--image-size", "4"), 2, "--image-size must be in [8, 1024]"),
    Row("images-too-large", train(), 2, "are 1100x1100, more than rtk holds in memory (sides up "
        "to 1024); pass --image-size N", _huge_first_image),
    Row("image-size-network", train("--image-size", "8"), 2,
        "baseline-cnn cannot take this dataset's 8x8 images"),
    Row("image-size-cifar", ["data", "info", "--data", "{ws}/cifar-python", "--image-size",
        "48"], 2, "is CIFAR-10's official release, whose images are 32x32", _cifar_python),
    Row("normalize-unknown", train("--normalize", "imagenet"), 2,
        "--normalize must be one of 'auto', 'paper', 'data'"),
    Row("reproduce-other-data", ["reproduce", "--budget", "quick", "--data", "{data}", "--out",
        "{ws}/report"], 2, "is not CIFAR-10 (5 classes, 32x32 images)", _fewer_classes),
    Row("checkpoint-classes", report("confusion"), 2, "was trained on classes", _fewer_classes),
    Row("checkpoint-size", export(), 2, "bad.pt takes 48x48 images, but the dataset's are 32x32",
        _checkpoint(lambda p: p.update(input_size=[3, 48, 48]))),
    Row("train-out-unwritable", train("--out", "{ws}/file/runs"), 2, "cannot create run directory"),
    # the dataset
    Row("data-missing", ["data", "info", "--data", "{ws}/missing"], 2, "does not exist"),
    Row("data-empty", ["data", "info", "--data", "{ws}/runs"], 2, "is empty"),
    Row("data-foreign-file", ["data", "info", "--data", "{ws}/file"], 2, "not a CIFAR-10 tarball"),
    Row("data-fifo", ["data", "info", "--data", "{ws}/pipe"], 2,
        "is neither a folder nor a regular file", _fifo("pipe")),
    Row("data-fifo-image", ["data", "info", "--data", "{data}"], 2, "9999.jpg is not a regular",
        _fifo("cifar10-jpeg/train/cat/9999.jpg")),
    Row("data-truncated-tarball", ["data", "info", "--data", "{ws}/cifar-10-python.tar.gz"], 2,
        "re-download CIFAR-10", _write("cifar-10-python.tar.gz", _truncated_tarball)),
    Row("data-foreign-tarball", ["data", "info", "--data", "{ws}/x.tar.gz"], 2,
        "re-download CIFAR-10", _write("x.tar.gz", lambda ws: b"not gzip")),
    # checkpoints: foreign, unsafe, damaged, or describing a model the registry does not build
    Row("ckpt-foreign-weights", export(), 2, "holds weights that do not fit baseline-cnn",
        _checkpoint(_foreign_weights)),
    Row("ckpt-wrong-shape", export(), 2, "1 of the wrong shape (first fc.weight: [5, 256]",
        _checkpoint(lambda p: p["state_dict"].update({"fc.weight": torch.zeros(5, 256)}))),
    Row("ckpt-unknown-argument", export(), 2, "arguments rtk's registry does not (depth)",
        _checkpoint(lambda p: p["model_kwargs"].update(depth=50))),
    Row("ckpt-absurd-argument", export(), 2, "arguments rtk's registry does not (widths)",
        _checkpoint(lambda p: p["model_kwargs"].update(widths=(2**20,) * 4))),
    Row("ckpt-unknown-arch", export(), 2, "is foreign: its architecture 'resnet152'",
        _checkpoint(lambda p: p.update(arch="resnet152"))),
    Row("ckpt-unsafe", export(), 2, "is unsafe or foreign: it holds a print", _unsafe_checkpoint),
    Row("ckpt-truncated", export(), 2, "is truncated or corrupt",
        _write("bad.pt", lambda ws: (ws.root / "ckpt.pt").read_bytes()[:3000])),
    Row("ckpt-not-rtk", export("{ws}/file"), 2, "is truncated or corrupt"),
    # rtk predict: images that would take the machine's memory or never end, and bad models
    Row("predict-top-k", predict("--top-k", "0"), 2, "--top-k must be at least 1"),
    Row("predict-bomb", predict(image="{ws}/bomb.png"), 2, "is 9000x9000 pixels, over",
        _write("bomb.png", _forged_png(9000, 9000))),
    Row("predict-pillow-bomb", predict(image="{ws}/bomb.png"), 2, "too many pixels for Pillow",
        _write("bomb.png", _forged_png(100_000, 100_000))),
    Row("predict-huge-file", predict(image="{ws}/huge.jpg"), 2, "is 65 MiB, over", _huge_file),
    Row("predict-fifo", predict(image="{ws}/pipe.png"), 2, "is not a regular file",
        _fifo("pipe.png")),
    Row("predict-bad-image", predict(image="{ws}/x.png"), 2, "cannot read image",
        _write("x.png", lambda ws: b"\x89PNG broken")),
    Row("predict-missing-image", predict(image="{ws}/nope.jpg"), 2, "does not exist"),
    Row("predict-corrupt-onnx", predict(model="{ws}/bad.onnx"), 2, "ONNX Runtime cannot load",
        _write("bad.onnx", lambda ws: (ws.root / "model.onnx").read_bytes()[:40])),
    Row("predict-wrong-input", predict(model="{ws}/bad.onnx"), 2, "takes 1-channel input",
        lambda ws: _bare_model(ws.root / "bad.onnx", channels=1)),
    Row("predict-tiny-std", predict("--std", "1e-300,1,1"), 2, "std at least 0.001"),
    Row("predict-nan-mean", predict("--mean", "nan,0,0"), 2, "3 finite numbers each"),
    Row("predict-metadata-nested", predict(model="{ws}/meta.onnx"), 2,
        "metadata is not JSON (nested too deeply)",
        _onnx_with_metadata("rtk.classes", "[" * 100_000 + "]" * 100_000)),
    Row("predict-metadata-names", predict(model="{ws}/meta.onnx"), 2,
        "metadata is not a list of names", _onnx_with_metadata("rtk.classes", '[1, {"a": 2}]')),
    Row("predict-bad-mean", predict("--mean", "a,b,c"), 2, "expected numbers separated by comma"),
    Row("predict-short-std", predict("--std", "1,1"), 2, "--mean and --std take 3 finite numbers"),
    Row("predict-cuda", predict("--provider", "cuda"), 2, "asked for cuda", marks=(NO_CUDA,)),
    # reports: the accuracy gate (exit 1 when missed), and plots into a folder nobody can create
    Row("min-accuracy-percent", report("classification", "--min-accuracy", "85"), 2,
        "--min-accuracy is a fraction in [0, 1]"),
    Row("min-accuracy-nan", report("classification", "--min-accuracy", "nan"), 2,
        "--min-accuracy is a fraction in [0, 1]"),
    Row("min-accuracy-missed", report("classification", "--min-accuracy", "0.99"), 1,
        "is below the required 0.9900 (--min-accuracy)"),
    Row("report-plot-unwritable", report("confusion", "--plot", "{ws}/file/c.png"), 2,
        "cannot write"),
    Row("export-out-unwritable", export("{ws}/ckpt.pt", "--out", "{ws}/file/onnx"), 2,
        "cannot write"),
    # lesions and residual sizes need PyTorch weights with residual blocks
    Row("lesion-onnx", analyze("lesion", "{ws}/model.onnx"), 2,
        "the lesion analysis needs the PyTorch weights"),
    Row("residuals-onnx", analyze("residuals", "{ws}/model.onnx"), 2,
        "the residual analysis needs the PyTorch weights"),
    Row("lesion-architecture", analyze("lesion", "resnet20"), 2, "has no trained weights"),
    Row("lesion-missing", analyze("lesion", "{ws}/runs/nothing"), 2, "does not exist"),
    Row("lesion-no-blocks", analyze("lesion", "{ws}/ckpt.pt"), 2, "has no residual blocks"),
    Row("lesion-draws", analyze("lesion", "{ws}/ckpt.pt", "--draws", "0"), 2,
        "--draws must be in [1, 1000], got 0"),
    # sizes nobody bounded exhausted memory; seeds past torch's range were internal errors
    Row("lesion-draws-huge", analyze("lesion", "{ws}/ckpt.pt", "--draws", "1000000000"), 2,
        "--draws must be in [1, 1000], got 1000000000"),
    Row("residuals-seed-huge", analyze("residuals", "{ws}/ckpt.pt", "--seed", str(2**64)), 2,
        "--seed must be in [0, 2**64)"),
    Row("gradients-batches-huge", ["analyze", "gradients", "baseline-cnn", "--batches",
        "100000000", "--data", "{data}"], 2, "--batches must be in [1, 1000]"),
    Row("bench-batch-huge", ["bench", "baseline-cnn", "--batch-sizes", "1,1000000", "--runs",
        "{ws}/runs"], 2, "--batch-sizes: at most 4096 images a batch"),
    Row("bench-fixed-input-huge", ["bench", "{ws}/huge.onnx", "--runs", "{ws}/runs"], 2,
        "inputs of shape 3,40000,40000 takes 4,577.6 GiB, over rtk bench's 2 GiB cap",
        _huge_input_model),
    Row("bench-baseline-fifo", bench_gate("{ws}/pipe.json"), 2,
        "baseline {ws}/pipe.json is not a regular file", _fifo("pipe.json")),
    Row("bench-baseline-dev-zero", bench_gate("/dev/zero"), 2,
        "baseline /dev/zero is not a regular file"),
    Row("bench-baseline-overflow", bench_gate("{ws}/huge.json"), 2, "is not an rtk bench report",
        lambda ws: (ws.root / "huge.json").write_text(
            '{"rows": [{"model": "m", "precision": "fp32", "engine": "e", "provider": "cpu", '
            '"stats": {"batch": 1, "p50_ms": 1' + "0" * 400 + '}}]}')),
    Row("lesion-images", analyze("lesion", "{ws}/ckpt.pt", "--images", "0"), 2,
        "--images must be positive"),
    Row("lesion-out-unwritable", analyze("lesion", "{ws}/resnet20.pt", "--images", "10",
        "--draws", "1", "--out", "{ws}/file/l.png"), 2, "cannot write", _resnet20_checkpoint),
    Row("residuals-at", analyze("residuals", "{ws}/ckpt.pt", "--at", "last"), 2,
        "--at takes init, best or both"),
    Row("residuals-init-untrained", analyze("residuals", "{ws}/ckpt.pt", "--at", "init"), 2,
        "records no training settings"),
    # run folders: what a kill or a hand edit leaves
    Row("history-torn", ["report", "curves", "{ws}/runs/r"], 2, "line 2 is not a whole epoch",
        setup=_run_folder({"history.jsonl": _EPOCH + '{"epoch": 2, "train_lo'})),
    Row("metrics-missing-keys", ["report", "compare", "{ws}/runs/r"], 2, "lacks test_acc",
        setup=_run_folder({"metrics.json": '{"arch": "baseline-cnn"}',
                           "config.json": '{"settings": {"epochs": 1}}'})),
    Row("history-mistyped", ["report", "curves", "{ws}/runs/r"], 2,
        "line 1 has val_acc 'high' (want a number or null)",
        setup=_run_folder(
            {"history.jsonl": _EPOCH.replace('"val_acc": 0.1', '"val_acc": "high"')})),
    Row("history-grad-norms-mistyped", ["report", "curves", "{ws}/runs/r"], 2,
        "has grad_norms [1, 2] (want an object, each value a number)",
        setup=_run_folder({"history.jsonl": _EPOCH.replace("}", ', "grad_norms": [1, 2]}')})),
    Row("metrics-newer-format", ["report", "compare", "{ws}/runs/r"], 2,
        "is in format 2, newer than the 1 this rtk reads",
        setup=_run_folder({"metrics.json": '{"format": 2, "arch": "baseline-cnn"}',
                           "config.json": '{"settings": {"epochs": 1}}'})),
    Row("config-format-not-a-number", ["report", "compare", "{ws}/runs/r"], 2,
        "has format '1', which is no layout version",
        setup=_run_folder({"config.json": '{"format": "1", "settings": {}}',
                           "metrics.json": _METRICS})),
    Row("metrics-mistyped", ["report", "compare", "{ws}/runs/r"], 2,
        "has test_acc '0.9' (want a number), stopped_early 0 (want true or false)",
        setup=_run_folder({"metrics.json": '{"arch": "baseline-cnn", "test_acc": "0.9", '
                           '"test_acc_tta": null, "test_loss": 1.0, "best_epoch": 1, '
                           '"epochs_run": 1, "stopped_early": 0, "train_s": 1, '
                           '"device": "cpu", "test_images": 10}',
                           "config.json": '{"settings": {"epochs": 1}}'})),
    Row("export-names-clash", export("{ws}/a/ckpt.pt", "{ws}/b/ckpt.pt", "--out", "{ws}/onnx"), 2,
        "would both be exported as {ws}/onnx/ckpt.onnx", _two_checkpoints_named_alike),
    Row("resume-finished-last-is-folder", ["train", "--resume", "{ws}/runs/r", "--data",
        "{data}"], 2, "is a finished run without its last.pt",
        _finished_run_with_a_folder_as("last.pt")),
    Row("resume-finished-config-is-folder", ["train", "--resume", "{ws}/runs/r", "--data",
        "{data}"], 2, "last.pt holds no training settings",
        _finished_run_with_a_folder_as("config.json")),
    # settings read from files are checked for type and value like flags (one schema)
    Row("group-optimizer-unknown", ["report", "seeds", "{ws}/runs/g"], 2,
        "group.json holds a setting this rtk cannot train with: --optimizer must be one of",
        _edited_group(settings={"optimizer": "rmsprop"})),
    Row("group-newer-format", ["train", "--resume", "{ws}/runs/g", "--data", "{data}"], 2,
        "group.json is in format 7, newer than the 1 this rtk reads", _edited_group(format=7)),
    Row("group-seed-bool", ["report", "seeds", "{ws}/runs/g"], 2,
        "is not an rtk seed group manifest", _edited_group(seeds=[True, 1])),
    Row("group-epochs-text", ["train", "--resume", "{ws}/runs/g", "--data", "{data}"], 2,
        "--epochs must be a whole number, got '3'", _edited_group(settings={"epochs": "3"})),
    Row("config-optimizer-unknown", ["train", "--resume", "{ws}/runs/r", "--data", "{data}"], 2,
        "config.json holds a setting this rtk cannot train with: --optimizer must be one of",
        _run_folder({"config.json": '{"settings": {"arch": "baseline-cnn", "optimizer": '
                     '"rmsprop"}}'})),
    Row("config-grad-norm-zero", ["train", "--resume", "{ws}/runs/r", "--data", "{data}"], 2,
        "grad_norm_batches must be 1 or more", _run_folder({"config.json": '{"settings": '
        '{"arch": "baseline-cnn", "grad_norm_batches": 0}}'})),
    Row("config-split-seed-negative", ["train", "--resume", "{ws}/runs/r", "--data", "{data}"],
        2, "split_seed must be in [0, 2**32), got -1", _run_folder({"config.json": '{"settings": '
        '{"arch": "baseline-cnn", "split_seed": -1}}'})),
    Row("name-symlink-out-of-out", train("--name", "link"), 2,
        "{ws}/runs/link is a symbolic link; rtk writes run folders only inside --out",
        lambda ws: (ws.root / "runs" / "link").symlink_to(ws.root, target_is_directory=True)),
    Row("resume-out-ignored", ["train", "--resume", "{ws}/runs/r", "--out", "{ws}/elsewhere"], 2,
        "only --epochs may change (got --out)", setup=_run_folder({"config.json": "{}"})),
    Row("arch-twice", ["train", "baseline-cnn", "mini-resnet", "baseline-cnn", "--data", "{data}",
        "--out", "{ws}/runs"], 2, "baseline-cnn named more than once; name each architecture"),
    Row("resume-empty-folder", ["train", "--resume", "{ws}/runs/r", "--data", "{data}"], 2,
        "holds no last.pt or config.json", setup=_run_folder({})),
    # a resume never destroys a finished result (it retrained from scratch over it)
    Row("resume-finished-without-last", ["train", "--resume", "{ws}/runs/r", "--data", "{data}"],
        2, "is a finished run without its last.pt",
        setup=_run_folder({"metrics.json": '{"test_acc": 0.5}', "config.json": "{}"})),
    Row("amp-auto-no-cuda", train("--amp"), 2, "it has no native bf16", marks=(NO_CUDA,)),
    # seed groups: unfinished, not a group at all, too many to compare
    Row("report-seeds-unfinished", ["report", "seeds", "{ws}/runs/g"], 2,
        "has not finished; `rtk train --resume", _seed_group()),
    Row("report-seeds-not-a-group", ["report", "seeds", "{ws}/runs"], 2, "has no group.json"),
    Row("report-seeds-three", ["report", "seeds", "{ws}/runs", "{ws}/runs", "{ws}/runs"], 2,
        "takes one seed group or two"),
    # rtk bench
    Row("bench-seconds", ["bench", "baseline-cnn", "--seconds", "0", "--runs", "{ws}/runs"], 2,
        "--seconds must be positive"),
    Row("bench-seconds-nan", ["bench", "baseline-cnn", "--seconds", "nan", "--runs", "{ws}/runs"],
        2, "--seconds"),
    # Audit: checkpoint fields typed where the checkpoint is loaded (a version "2" was an internal
    # error; a hostile normalization or input size reached the ONNX metadata), predict's refusals
    # naming where the values came from, NaN logits shown as "nan%", and bench settings with no
    # upper bound (timing for ever, refused fast before anything is timed)
    Row("ckpt-version-text", export(), 2, "has version '2', which is no format number",
        _checkpoint(lambda p: p.update(version="2"))),
    Row("ckpt-normalization-text", export(), 2,
        "has normalization {{'mean': ['\\x1b[2J', 0, 0], 'std'",  # {{: format()'s brace
        _checkpoint(lambda p: p["normalization"].update(mean=["\x1b[2J", 0, 0]))),
    Row("ckpt-normalization-std-zero", export(), 2, "(want a mean and a std of 3 finite numbers",
        _checkpoint(lambda p: p["normalization"].update(std=[0.5, 0, 0.5]))),
    Row("ckpt-normalization-missing", export(), 2, "has normalization None (want a mean",
        _checkpoint(lambda p: p.pop("normalization"))),
    Row("ckpt-input-size-huge", export(), 2, "input_size [3, 40000, 40000] (want [channels, "
        "height, width], each a whole number in [1, 8192])",
        _checkpoint(lambda p: p.update(input_size=[3, 40000, 40000]))),
    Row("ckpt-metrics-mistyped", export(), 2, "has metrics val_acc 'high' (want a number or null)",
        _checkpoint(lambda p: p.update(metrics={"val_acc": "high"}))),
    Row("ckpt-epoch-mistyped", export(), 2, "has epoch 1.5 (want a whole number or null)",
        _checkpoint(lambda p: p.update(epoch=1.5))),
    Row("predict-metadata-tiny-std", ["predict", "{ws}/meta.onnx", "{image}", "--classes",
        "a,b,c,d"], 2, "std [1e-300, 1, 1] from the model's rtk.normalization metadata are not",
        _onnx_with_metadata("rtk.normalization", '{"mean": [0, 0, 0], "std": [1e-300, 1, 1]}')),
    Row("predict-metadata-std-text", ["predict", "{ws}/meta.onnx", "{image}", "--classes",
        "a,b,c,d", "--mean", "0,0,0"], 2,
        "std ['x', 1, 1] (from the model's rtk.normalization metadata) are not",
        _onnx_with_metadata("rtk.normalization", '{"mean": [0, 0, 0], "std": ["x", 1, 1]}')),
    Row("predict-nan-logits", predict(model="{ws}/nan.onnx"), 2,
        "produced non-finite logits (NaN or infinity) for 1 of 1 images", _nan_weights_model),
    Row("bench-warmup-huge", ["bench", "baseline-cnn", "--warmup", "100000000000", "--runs",
        "{ws}/runs"], 2, "--warmup must be in [0, 10,000], got 100000000000", timeout_s=FAST_S),
    Row("bench-iters-huge", ["bench", "baseline-cnn", "--iters", "100000000", "--runs",
        "{ws}/runs"], 2, "--iters must be in [1, 1,000,000], got 100000000", timeout_s=FAST_S),
    Row("bench-seconds-huge", ["bench", "baseline-cnn", "--seconds", "100000", "--runs",
        "{ws}/runs"], 2, "--seconds must be positive and at most 3,600", timeout_s=FAST_S),
    Row("bench-threads-huge", ["bench", "baseline-cnn", "--threads", "100000", "--runs",
        "{ws}/runs"], 2, "--threads must be in [1, 1,024], got 100000", timeout_s=FAST_S),
    Row("predict-fixed-input-huge", predict(model="{ws}/huge.onnx"), 2,
        "the model's input [3, 40000, 40000] is no [channels, height, width]",
        _huge_input_model),
    Row("config-recipe-unknown", ["train", "--resume", "{ws}/runs/r", "--data", "{data}"], 2,
        "unknown recipe 'turbo'", _run_folder({"config.json": '{"settings": {"arch": '
        '"baseline-cnn", "recipe": "turbo"}}'})),
]
# fmt: on


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` with its type, size and mtime; lstat only, so a FIFO in the
    workspace is never opened."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            info = os.lstat(Path(folder) / name)
            size = info.st_size if stat.S_ISREG(info.st_mode) else 0
            found[str(Path(folder, name).relative_to(root))] = (
                stat.S_IFMT(info.st_mode), size, info.st_mtime_ns
            )  # fmt: skip
    return found


def _timeout(signum: int, frame: object) -> None:
    raise TimeoutError("rtk still runs past the row's time limit (waiting on a FIFO? timing?)")


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=r.marks) for r in ROWS])
def test_bad_input_is_one_line_and_changes_nothing(
    row: Row, imagefolder: Path, tiny_data: TinyData, tmp_path: Path
):
    ws = Workspace(tmp_path, tiny_data)
    assert imagefolder == ws.data
    (tmp_path / "runs").mkdir()
    (tmp_path / "file").write_text("a regular file where a folder is expected\n")
    save_checkpoint(tmp_path / "ckpt.pt", initial_checkpoint("baseline-cnn", list(CLASSES)))
    _bare_model(tmp_path / "model.onnx")
    if row.setup is not None:
        row.setup(ws)
    paths = {"ws": str(tmp_path), "data": str(ws.data), "image": str(ws.image)}
    args = [arg.format(**paths) for arg in row.args]
    before = _snapshot(tmp_path)
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(row.timeout_s)
    try:
        result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    stderr = result.stderr.strip()
    assert result.exit_code == row.code, stderr or result.stdout
    assert row.phrase.format(**paths) in stderr, stderr
    assert "\x1b" not in result.stderr + result.stdout, "a control character reached the terminal"
    assert len(stderr.splitlines()) == 1, stderr
    assert "Traceback" not in stderr + result.stdout and "internal error" not in stderr
    assert "weights_only" not in stderr
    assert _snapshot(tmp_path) == before, "the bad input changed files on disk"
