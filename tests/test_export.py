from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image
from typer.testing import CliRunner

from exporters import validate
from exporters.convert import export_onnx, file_sha256
from exporters.errors import ExportError, MetadataError
from exporters.opset import opset_support
from exporters.predict import predict
from exporters.quantize import tensorrt_qdq_problem
from exporters.runtime import ProviderUnavailableError, create_session
from exporters.view import free_port, safe_file_name, serve, stop
from tests.conftest import CLASSES, SAMPLE_ARCHS, TinyData, default_sigint, write_imagefolder
from toolkit.cli import app
from toolkit.data import Dataset, load_dataset
from toolkit.training import RunDir, TrainResult, initial_checkpoint, save_checkpoint

PARITY = 50  # the tiny test split's size


@pytest.fixture
def dataset(imagefolder: Path) -> Dataset:
    return load_dataset(imagefolder)


def write_checkpoint(folder: Path, arch_name: str) -> Path:
    """A real rtk checkpoint of a freshly initialised model (export does not need training)."""
    payload = initial_checkpoint(arch_name, list(CLASSES))
    payload["epoch"], payload["metrics"] = 1, {"val_acc": 0.1}
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "best.pt", payload)
    RunDir(folder).write_metrics(
        TrainResult(
            run_dir=folder, arch=arch_name, best_epoch=1, epochs_run=1, stopped_early=False,
            test_loss=2.3, test_acc=0.125, train_s=1.0, device="cpu", test_images=80, history=[],
        )
    )  # fmt: skip
    return folder


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.mark.parametrize("arch", SAMPLE_ARCHS)
def test_export_and_validate_every_architecture(arch: str, dataset: Dataset, tmp_path: Path):
    run = write_checkpoint(tmp_path / arch, arch)
    (result,) = export_onnx(run, dataset=dataset, parity_images=PARITY)
    assert result.onnx_path == run / "model.onnx" and result.precision == "fp32"
    assert result.opset == opset_support().default
    assert result.parity.images == PARITY and result.parity.agreement == 1.0
    assert result.parity.max_abs_diff <= validate.FP32_TOLERANCE
    model = onnx.load(str(result.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    # Metadata round trip: the file describes itself.
    props = {p.key: p.value for p in model.metadata_props}
    assert props["rtk.arch"] == arch
    assert json.loads(props["rtk.classes"])[3] == "cat"
    assert json.loads(props["rtk.normalization"])["std"] == [0.5, 0.5, 0.5]
    assert json.loads(props["rtk.input_size"]) == [3, 32, 32]
    assert json.loads(props["rtk.test_acc"]) == 0.125
    assert props["rtk.checkpoint_sha256"] == file_sha256(run / "best.pt")
    # The batch dimension is dynamic and works at sizes nobody traced.
    session, info = create_session(result.onnx_path, "cpu")
    assert info.running == "CPUExecutionProvider"
    for batch in (1, 37):
        x = np.random.default_rng(batch).uniform(-1, 1, (batch, 3, 32, 32)).astype(np.float32)
        assert session.run(None, {"input": x})[0].shape == (batch, 10)


def test_fp16_and_int8_copies(dataset: Dataset, tmp_path: Path):
    run = write_checkpoint(tmp_path / "run", "baseline-cnn")
    results = export_onnx(
        run, dataset=dataset, fp16=True, int8=True, calib_images=64, parity_images=PARITY
    )
    by = {r.precision: r for r in results}
    assert set(by) == {"fp32", "fp16", "int8"}
    assert by["fp16"].size_bytes < 0.6 * by["fp32"].size_bytes
    assert by["int8"].size_bytes < 0.35 * by["fp32"].size_bytes
    int8 = onnx.load(str(by["int8"].onnx_path))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)  # QDQ format
    # The CPU recipe (uint8 activations, int32 biases for ORT's integer kernels) is not one
    # TensorRT takes, and rtk can tell from the graph.
    assert tensorrt_qdq_problem(int8) is not None
    assert {p.key: p.value for p in int8.metadata_props}["rtk.precision"] == "int8"
    assert by["fp16"].parity.agreement >= 0.98
    for r in results:  # every copy takes float32 input and a dynamic batch
        session, _ = create_session(r.onnx_path, "cpu")
        x = np.zeros((37, 3, 32, 32), dtype=np.float32)
        assert session.run(None, {"input": x})[0].shape == (37, 10)


def test_the_int8_copy_for_tensorrt_is_symmetric_signed_int8(
    dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # The graph's format is the point here. The accuracy gate (tested on its own) judges an
    # untrained model: on generated images (no CIFAR-10 on the machine) its INT8 copy can
    # lose more than a point of a 10% accuracy by chance.
    monkeypatch.setattr(validate, "MAX_ACC_DROP", 1.0)
    run = write_checkpoint(tmp_path / "run", "baseline-cnn")
    _, result = export_onnx(
        run, dataset=dataset, int8=True, int8_target="tensorrt", calib_images=64,
        parity_images=PARITY,
    )  # fmt: skip
    assert result.precision == "int8"
    int8 = onnx.load(str(result.onnx_path))
    constants = {t.name: t for t in int8.graph.initializer}
    qdq = [n for n in int8.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zero_points = [constants[n.input[2]] for n in qdq]  # every Q/DQ names its zero point
    assert len(zero_points) == len(qdq) > 0
    assert all(z.data_type == TensorProto.INT8 for z in zero_points)
    assert not any(onnx.numpy_helper.to_array(z).any() for z in zero_points)
    # Only int8 is dequantized: the biases stay float (TensorRT folds them into its int8 conv).
    dequantized = [constants[n.input[0]] for n in qdq if n.input[0] in constants]
    assert dequantized and all(t.data_type == TensorProto.INT8 for t in dequantized)
    assert tensorrt_qdq_problem(int8) is None


def test_failed_validation_leaves_no_file(
    dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    run = write_checkpoint(tmp_path / "run", "baseline-cnn")
    monkeypatch.setattr(validate, "MAX_ACC_DROP", -1.0)  # no INT8 copy can pass now
    with pytest.raises(ExportError, match=r"model.int8.onnx failed validation: INT8 accuracy"):
        export_onnx(run, dataset=dataset, int8=True, calib_images=32, parity_images=PARITY)
    names = sorted(p.name for p in run.iterdir())
    assert names == ["best.pt", "metrics.json"]  # one export's files come together or not at all


@pytest.fixture(scope="module")
def previous_export(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Path:
    """A run folder holding a real, validated fp32 + FP16 + INT8 export (copy it to use it)."""
    data = write_imagefolder(tmp_path_factory.mktemp("data"), tiny_data)
    dataset = load_dataset(data, cache_dir=tmp_path_factory.mktemp("cache"))
    run = write_checkpoint(tmp_path_factory.mktemp("previous") / "run", "baseline-cnn")
    export_onnx(run, dataset=dataset, fp16=True, int8=True, calib_images=32, parity_images=PARITY)
    return run


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_failed_export_keeps_every_previous_file(
    previous_export: Path, dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    run = shutil.copytree(previous_export, tmp_path / "run")
    before = _contents(run)
    assert {"model.onnx", "model.fp16.onnx", "model.int8.onnx"} <= before.keys()
    # The new fp32 file fails: the stale FP16/INT8 copies are not removed ahead of it.
    with monkeypatch.context() as patch, pytest.raises(ExportError, match=r"model\.onnx fail"):
        patch.setattr(validate, "FP32_TOLERANCE", -1.0)
        patch.setattr(validate, "FP32_RELATIVE", -1.0)
        export_onnx(run, dataset=dataset, parity_images=PARITY)
    assert _contents(run) == before
    # The new fp32 file passes, INT8 fails: neither replaces its predecessor.
    with monkeypatch.context() as patch, pytest.raises(ExportError, match=r"int8\.onnx fail"):
        patch.setattr(validate, "MAX_ACC_DROP", -1.0)
        export_onnx(run, dataset=dataset, int8=True, calib_images=32, parity_images=PARITY)
    assert _contents(run) == before
    # A good fp32-only export replaces model.onnx and only then drops the copies it outdates.
    export_onnx(run, dataset=dataset, parity_images=PARITY, simplify=False)
    after = _contents(run)
    assert sorted(after) == ["best.pt", "metrics.json", "model.onnx"]
    assert after["model.onnx"] != before["model.onnx"]  # unsimplified: a different graph


def test_a_full_disk_during_export_leaves_the_previous_files(
    previous_export: Path, imagefolder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    run = shutil.copytree(previous_export, tmp_path / "run")
    before = _contents(run)
    real_save = onnx.save

    def save_until_the_disk_is_full(proto, path, *args, **kwargs):
        if "int8" not in str(path):  # fp32 and FP16 are written, then the disk fills up
            return real_save(proto, path, *args, **kwargs)
        Path(path).write_bytes(b"half an ONNX file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(onnx, "save", save_until_the_disk_is_full)
    result = run_cli(
        "export", str(run), "--onnx", "--fp16", "--int8", "--calib-images", "32",
        "--parity-images", str(PARITY), "--data", str(imagefolder),
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    error = result.stderr.strip().splitlines()[-1]  # after the opset notice: one line, no trace
    assert "Traceback" not in result.stderr and error.startswith("error: cannot write")
    assert "No space left on device" in error and "as they were" in error
    assert _contents(run) == before  # byte for byte, and no temporary file left behind


def test_a_killed_exports_temporary_files_are_removed_next_time(dataset: Dataset, tmp_path: Path):
    run = write_checkpoint(tmp_path / "run", "baseline-cnn")
    for name in ("model.onnx", "model.int8.onnx"):  # a writer killed halfway through each
        killed = subprocess.run(
            [sys.executable, "-c", KILLED_WRITER, str(run / name)], capture_output=True
        )
        assert killed.returncode == -signal.SIGKILL
    leftovers = sorted(p.name for p in run.glob(".*.tmp"))
    assert len(leftovers) == 2 and leftovers[0].startswith(".model.int8.onnx.")
    unrelated = run / ".best.pt.x1y2.tmp"  # another writer's: not the export's to remove
    unrelated.write_bytes(b"")
    export_onnx(run, dataset=dataset, parity_images=PARITY)
    assert sorted(p.name for p in run.glob(".*.tmp")) == [unrelated.name]
    onnx.checker.check_model(str(run / "model.onnx"), full_check=True)


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from toolkit.fileio import atomic_path

with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.write_bytes(b"half an ONNX file")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_cuda_and_tensorrt_are_refused_here(dataset: Dataset, tmp_path: Path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = write_checkpoint(tmp_path / "run", "baseline-cnn")
    (result,) = export_onnx(run, dataset=dataset, parity_images=PARITY)
    for provider, library in (("cuda", "libcu"), ("tensorrt", "libnvinfer")):
        with pytest.raises(ProviderUnavailableError) as info:
            create_session(result.onnx_path, provider)  # type: ignore[arg-type]
        message = str(info.value)
        assert f"asked for {provider}" in message and "CPUExecutionProvider" in message
        assert library in message  # ORT's own reason, quoted


def test_predict_real_images_and_metadata(dataset: Dataset, imagefolder: Path, tmp_path: Path):
    run = write_checkpoint(tmp_path / "run", "baseline-cnn")
    (result,) = export_onnx(run, dataset=dataset, parity_images=PARITY)
    real = sorted((imagefolder / "test" / "ship").iterdir())[0]
    big = tmp_path / "big.png"
    Image.open(real).resize((96, 64)).save(big)
    meta, predictions = predict(result.onnx_path, [real, big], top_k=3)
    assert meta.arch == "baseline-cnn" and meta.classes[8] == "ship"
    assert [p.resized for p in predictions] == [False, True]
    assert predictions[1].original_size == (96, 64)
    for p in predictions:
        assert len(p.top) == 3 and p.top[0].probability >= p.top[1].probability
        assert 0 < sum(g.probability for g in p.top) <= 1 + 1e-6
    # The probabilities are the model's own: softmax of PyTorch's logits on the same pixels.
    model = torch.load(run / "best.pt", weights_only=True)
    from toolkit.training import model_from_checkpoint

    net = model_from_checkpoint(model).eval()
    pixels = torch.from_numpy(np.array(Image.open(real).convert("RGB"))).permute(2, 0, 1)
    with torch.no_grad():
        probs = torch.softmax(net(((pixels / 255 - 0.5) / 0.5)[None].float()), 1)[0]
    assert predictions[0].top[0].label == meta.classes[int(probs.argmax())]
    assert predictions[0].top[0].probability == pytest.approx(float(probs.max()), abs=1e-5)

    out = run_cli("predict", str(result.onnx_path), str(real), "--json")
    assert out.exit_code == 0 and json.loads(out.stdout)["predictions"][0]["top"][0]["label"]


def _bare_model(path: Path, channels: int = 3) -> Path:
    """An ONNX classifier made without rtk: no metadata; GAP + Gemm over `channels` inputs."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [channels, 4], [0.1] * channels * 4)
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "bare", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(model, str(path))
    return path


def test_predict_without_metadata_needs_flags(imagefolder: Path, tmp_path: Path):
    bare = _bare_model(tmp_path / "bare.onnx")
    image = sorted((imagefolder / "test" / "cat").iterdir())[0]
    with pytest.raises(MetadataError, match="--classes, --mean, --std"):
        predict(bare, [image])
    _, predictions = predict(
        bare, [image], classes=["a", "b", "c", "d"], mean=[0.5] * 3, std=[0.5] * 3, top_k=2
    )
    assert len(predictions[0].top) == 2
    result = run_cli("predict", str(bare), str(image))
    assert result.exit_code == 2 and "--classes" in result.stderr


def test_text_from_a_model_is_shown_as_it_is_and_never_drives_the_terminal(
    imagefolder: Path, tmp_path: Path
):
    """Class names come from ONNX metadata or flags, files anyone can write: Rich markup in one
    was read (a `[/]` crashed, `[bold]` vanished) and an escape sequence reached the terminal."""
    bare = _bare_model(tmp_path / "bare.onnx")
    image = sorted((imagefolder / "test" / "cat").iterdir())[0]
    classes = "[/]a,[bold]b,c\x1b[2J\x1b]0;pwned\x07,d\u202e"
    flags = ["--classes", classes, "--mean", "0,0,0", "--std", "1,1,1", "--top-k", "4"]
    result = run_cli("predict", str(bare), str(image), *flags)
    assert result.exit_code == 0, result.output
    for shown in ("[/]a", "[bold]b", "c\\x1b[2J\\x1b]0;pwned\\x07", "d\\u202e"):
        assert shown in result.stdout, (shown, result.stdout)
    assert not any(c in result.output for c in "\x1b\x07\u202e")
    # --json keeps the names exactly, in JSON's own escapes
    data = json.loads(run_cli("predict", str(bare), str(image), *flags, "--json").stdout)
    names = {t["label"] for p in data["predictions"] for t in p["top"]}
    assert names == set(classes.split(","))


def test_export_cli_faults(dataset: Dataset, imagefolder: Path, tmp_path: Path):
    run = write_checkpoint(tmp_path / "run", "baseline-cnn")
    data = ["--data", str(imagefolder), "--parity-images", str(PARITY)]
    too_new = opset_support().default + 1
    cases = {
        ("--opset", str(too_new)): f"opset {too_new} is outside",
        ("--runs", str(tmp_path / "empty")): "no run with a best.pt",
        ("--int8", "--int8-for", "tpu"): "--int8-for is one of cpu, tensorrt, got 'tpu'",
    }
    for extra, message in cases.items():
        targets = [] if "--runs" in extra else [str(run)]
        result = run_cli("export", *targets, "--onnx", *extra, *data)
        assert result.exit_code == 2 and message in result.stderr, result.stderr
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes((run / "best.pt").read_bytes()[:3000])
    result = run_cli("export", str(truncated), "--onnx", *data)
    assert result.exit_code == 2 and "truncated or corrupt" in result.stderr
    assert not list(tmp_path.glob("*.onnx"))
    good = run_cli("export", "--onnx", "--runs", str(tmp_path), "--json", *data)
    assert good.exit_code == 0, good.stderr
    assert json.loads(good.stdout)[0]["parity"]["agreement"] == 1.0


def test_view_rejects_a_port_out_of_range(tmp_path: Path):
    model = _bare_model(tmp_path / "m.onnx")
    result = run_cli("view", str(model), "--port", "70000", "--no-browser")
    assert result.exit_code == 2 and "--port must be between 1 and 65535" in result.stderr


def test_netron_serves_the_model_over_http(dataset: Dataset, tmp_path: Path):
    run = write_checkpoint(tmp_path / "run", "baseline-cnn")
    (result,) = export_onnx(run, dataset=dataset, parity_images=PARITY)
    port = free_port()
    served = serve(result.onnx_path, port=port, browse=False)
    try:
        assert served.url == f"http://127.0.0.1:{port}" and not served.browser_opened
        page = urllib.request.urlopen(served.url, timeout=10).read().decode()
        assert "netron" in page.lower()
        data = urllib.request.urlopen(f"{served.url}/data/model.onnx", timeout=10).read()
        assert data == result.onnx_path.read_bytes()
    finally:
        stop(served)
    assert not served.private_copy.exists()


def _serves_only(data: str, name: str, model: Path, neighbours: list[str]) -> None:
    """netron's ``/data/`` serves ``model`` as ``name`` and none of the run's other files."""
    assert urllib.request.urlopen(data + name, timeout=10).read() == model.read_bytes()
    for neighbour in neighbours:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(data + neighbour, timeout=10)
        assert refused.value.code == 404, neighbour


def test_view_serves_only_the_model_under_a_name_html_cannot_read(dataset: Dataset, tmp_path: Path):
    """netron writes the file name into its page unescaped and serves the model's whole folder:
    a page on loopback could run a script that reads the run's checkpoints."""
    run = write_checkpoint(tmp_path / "run", "baseline-cnn")
    (result,) = export_onnx(run, dataset=dataset, parity_images=PARITY)
    hostile = run / '"><img src=x onerror=alert(1)>.onnx'
    shutil.copyfile(result.onnx_path, hostile)
    served = serve(hostile, port=free_port(), browse=False)
    try:
        page = urllib.request.urlopen(served.url, timeout=10).read().decode()
        assert "onerror=" not in page and "alert(1)" not in page  # no markup of the name's
        name = safe_file_name(hostile.name)
        assert f'<meta name="identifier" content="{name}">' in page
        assert "<" not in name and '"' not in name
        _serves_only(f"{served.url}/data/", name, hostile, ["best.pt", "config.json", "model.onnx"])
    finally:
        stop(served)
    assert not served.private_copy.exists()


def test_view_beyond_loopback_serves_the_model_alone(dataset: Dataset, tmp_path: Path):
    run = write_checkpoint(tmp_path / "run", "baseline-cnn")
    (result,) = export_onnx(run, dataset=dataset, parity_images=PARITY)
    (run / "config.json").write_text("{}")  # a run folder also holds its training config
    served = serve(result.onnx_path, host="0.0.0.0", port=free_port("0.0.0.0"), browse=False)
    try:
        assert served.exposed and served.private_copy is not None
        assert served.private_copy.stat().st_mode & 0o777 == 0o700  # a private folder
        data = f"http://127.0.0.1:{served.port}/data/"
        neighbours = ["best.pt", "metrics.json", "config.json"]
        _serves_only(data, "model.onnx", result.onnx_path, neighbours)
    finally:
        stop(served)
    assert not served.private_copy.exists()  # removed when the server stops
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt", "config.json", "metrics.json", "model.onnx",
    ]  # fmt: skip


def test_view_beyond_loopback_warns_that_the_network_sees_the_graph(tmp_path: Path):
    model = _bare_model(tmp_path / "m.onnx")
    port = free_port("0.0.0.0")
    view = subprocess.Popen(
        [str(Path(sys.executable).with_name("rtk")), "view", str(model), "--host", "0.0.0.0",
         "--port", str(port), "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint,
    )  # fmt: skip
    try:
        assert "netron serves" in view.stdout.readline()  # printed last before it waits
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=10).read()
        assert b"netron" in page.lower()
    finally:
        view.send_signal(signal.SIGINT)
        code = view.wait(timeout=10)
    stderr = view.stderr.read()
    assert code == 0, stderr
    assert "warning: 0.0.0.0 is not loopback" in stderr and "see and download" in stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Chromium and ChromeDriver: apt-get install -y chromium chromium-driver",
)
def test_netron_renders_the_graph_in_a_real_browser(dataset: Dataset, tmp_path: Path):
    """Headless Chromium opens `rtk view`'s page, accepts netron's consent dialog, and the
    rendered graph holds the model's operators."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run = write_checkpoint(tmp_path / "run", "baseline-cnn")
    (result,) = export_onnx(run, dataset=dataset, parity_images=PARITY)
    port = free_port()
    view = subprocess.Popen(
        [str(Path(sys.executable).with_name("rtk")), "view", str(result.onnx_path),
         "--port", str(port), "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint,
    )  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        # The server is up once it says so (a loaded machine may take longer than the browser
        # wait below to start it).
        assert "netron serves" in view.stdout.readline(), view.stderr.read()
        url = f"http://127.0.0.1:{port}"
        WebDriverWait(driver, 30, ignored_exceptions=(Exception,)).until(
            lambda d: d.get(url) is None and "netron" in d.title.lower()
        )

        def graph_shown(d: webdriver.Chrome) -> bool:
            # netron first shows a consent dialog; the graph renders once it is accepted.
            for button in d.find_elements(By.TAG_NAME, "button"):
                if button.is_displayed() and "accept" in button.text.lower():
                    button.click()
            return bool(d.find_elements(By.CSS_SELECTOR, "g.node"))

        WebDriverWait(driver, 90, poll_frequency=0.5).until(graph_shown)
        text = driver.find_element(By.TAG_NAME, "body").get_attribute("innerHTML") or ""
        for op in ("Conv", "Relu", "MaxPool"):
            assert op in text, op
        driver.save_screenshot(str(tmp_path / "netron.png"))
        assert (tmp_path / "netron.png").stat().st_size > 10_000
        # Ctrl-C, the documented way to stop it, is a clean stop: exit code 0.
        view.send_signal(signal.SIGINT)
        assert view.wait(timeout=10) == 0, view.stderr.read()
    finally:
        driver.quit()
        if view.poll() is None:
            view.terminate()
            view.wait(timeout=10)
