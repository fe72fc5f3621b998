from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

from analysis.reproduce import (
    BUDGETS,
    WITH_CONTROL,
    Budget,
    budget_config,
    reproduce,
    settings_text,
)
from exporters.openvino import cpu_capabilities
from tests.test_training import _InterruptAt
from toolkit.data import load_dataset
from toolkit.models import PAPER, architecture_names
from toolkit.training import RECIPES, TrainingInterrupted
from toolkit.training.device import cpu_bf16_support

TINY = Budget(
    name="tiny",
    recipe="paper",
    reduction="1 epoch on 64 images per model (a test)",
    per_model={a: {"epochs": 1, "train_subset": 64, "batch_size": 32} for a in WITH_CONTROL},
    val_size=50,
    grad_batches=1,
    bench_batches=(1,),
    bench_seconds=0.05,
    parity_images=50,
    accuracy_images=40,
    train_bench_batch=2,
    lesion_draws=2,
)
PAPER_ARCHS = tuple(architecture_names(PAPER))
SECTIONS = [
    "## Setup", "## Table I", "## Per-class results", "## Gradient flow",
    "## Inference on the CPU", "## Claims", "## Why skips work", "### Skips or capacity",
    "### With and without skips", "### Lesion study", "### Residual ratios", "## Figures",
]  # fmt: skip


def test_reproduce_writes_every_section_and_resumes(imagefolder: Path, tmp_path: Path):
    dataset = load_dataset(imagefolder)
    said: list[str] = []
    result = reproduce(
        budget=TINY, models=list(WITH_CONTROL), out=tmp_path, dataset=dataset,
        say=said.append,
    )  # fmt: skip
    text = result.report.read_text()
    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert "Recipe `paper` for every model, budget `tiny`: 1 epoch on 64 images" in text
    assert "the budget's changes): optimizer adam," in text and "epochs 1," in text
    assert "val_size 50," in text  # the budget's, not the recipe's 5,000
    assert "Trained under other settings" not in text
    # The benchmarks ran under the allocator setting the runs trained with, and say which.
    trained = json.loads((tmp_path / "runs" / "resnet18" / "config.json").read_text())
    assert f"benchmark: {trained['allocator']}." in text
    # The paper's recipe trains in fp32 on any host; REPORT.md names each run's precision.
    assert trained["precision"]["train"] == "fp32"
    assert "- Precision: " + ", ".join(WITH_CONTROL) + ": trained and validated in fp32, " in text
    assert "tested in fp32 (amp off in the settings)" in text
    for arch in WITH_CONTROL:
        assert f"| {arch} |" in text
        assert (tmp_path / "runs" / arch / "model.onnx").is_file()
    # Inference: each model in ONNX Runtime and OpenVINO, fp32 and the int8 copy (bf16 too where
    # the CPU has it natively), timed and scored on the budget's test images against PyTorch.
    inference = text.split("## Inference on the CPU")[1].split("## Claims")[0]
    bf16 = cpu_bf16_support().native and "BF16" in cpu_capabilities()
    int8 = [a for a in WITH_CONTROL if (tmp_path / "runs" / a / "model.int8.onnx").is_file()]
    assert int8  # most of these one-epoch networks keep their accuracy in int8
    for arch in WITH_CONTROL:
        for engine, precision in [("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                                  ("openvino", "fp32"), ("openvino", "int8")]:  # fmt: skip
            row = precision == "fp32" or arch in int8
            assert (f"| {arch} | {engine} | {precision} | 1 |" in inference) == row  # timed
            assert (f"| {arch} | {engine} | {precision} | 40 |" in inference) == row  # scored
        # An int8 copy refused by validation is no failure of the report, which says why.
        assert (f"- {arch}: no int8 copy, " in inference) == (arch not in int8)
        assert (f"| {arch} | openvino | bf16 | 1 |" in inference) == bf16
        assert f"| {arch} | torch-eager | fp32 | 1 |" in inference
    assert "OpenVINO: " in inference and "| vs ORT fp32 | vs eager |" in inference
    assert "--calib-images" not in inference  # export's advice: no flag of rtk reproduce
    assert (tmp_path / "figures" / "latency-accuracy.png") in result.figures
    # The control is a Table I row without paper figures.
    assert "| mini-resnet-noskip | mini-resnet-noskip | paper |" in text
    control = next(line for line in text.splitlines() if line.startswith("| mini-resnet-noskip |"))
    assert control.split(" | ").count("—") == 3  # paper accuracy, difference, paper minutes
    claims = text.split("## Claims")[1].split("## Why skips work")[0]
    assert claims.count("**") == 2 * len(result.verdicts) == 16  # 5(iii) once per runtime
    assert {v.verdict for v in result.verdicts} <= {"supported", "not supported", "not measured"}
    # Why skips work: each residual network against its plain twin, on the same test images.
    why = text.split("## Why skips work")[1].split("## Figures")[0]
    assert "Mini-ResNet's lead over the baseline CNN comes from its skips" in why
    assert "**not measured**" not in why.split("### With and without")[0]  # all three ran
    assert why.count("(paired by seed): **inconclusive**. one run each") == 2
    for residual, plain in [("resnet18", "resnet18-noskip"), ("mini-resnet", "mini-resnet-noskip")]:
        assert f"| {residual} | " in why.split("### Lesion study")[1]
        assert f"| {plain} | " in why.split("### Lesion study")[1]
        assert (tmp_path / "figures" / f"lesion-{residual}.png") in result.figures
        for at in ("init", "best"):
            assert f"| {residual} | {at} | stage1 |" in why
    assert "| resnet18-noskip | init |" not in why  # a plain network has no residual ratio
    for figure in result.figures:
        assert f"]({figure.relative_to(tmp_path)})" in text
        with Image.open(figure) as image:
            assert image.format == "PNG"
    # A rerun reuses every finished run and export.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/*.pt")}
    said.clear()
    longer = dataclasses.replace(
        TINY, per_model={"baseline-cnn": {**TINY.per_model["baseline-cnn"], "epochs": 2}}
    )
    reproduce(budget=longer, models=["baseline-cnn"], out=tmp_path, dataset=dataset,
              say=said.append)  # fmt: skip
    assert said[0].startswith("baseline-cnn: reused")
    # The reused run was trained for 1 epoch, not this budget's 2: the report says so.
    assert "baseline-cnn: epochs 1 (budget: 2)." in result.report.read_text()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_budgets_train_every_model_with_their_recipe():
    assert list(BUDGETS) == ["quick", "fast", "paper"]
    # The quick budget has no room for the control; the others train it by default.
    assert BUDGETS["quick"].models == tuple(architecture_names(PAPER))
    assert BUDGETS["fast"].models == BUDGETS["paper"].models == WITH_CONTROL
    for budget in BUDGETS.values():
        configs = {a: budget_config(a, budget) for a in WITH_CONTROL}
        # The Mini-ResNet's twin trains exactly as the Mini-ResNet, in every budget.
        twin = dataclasses.replace(configs["mini-resnet-noskip"], arch="mini-resnet")
        assert twin == configs["mini-resnet"]
        assert {c.recipe for c in configs.values()} == {budget.recipe}
        # What a budget does not trim is its recipe's own setting, for every model alike.
        untrimmed = set(RECIPES[budget.recipe]) - {k for o in budget.per_model.values() for k in o}
        for key in untrimmed - {"lr"}:
            assert len({getattr(c, key) for c in configs.values()}) == 1, key
    quick = {a: budget_config(a, BUDGETS["quick"]) for a in architecture_names(PAPER)}
    assert quick["baseline-cnn"].train_subset is None and quick["baseline-cnn"].val_size == 2000
    assert quick["resnet18"].train_subset == quick["resnet18-noskip"].train_subset == 2000
    # Batch 64 instead of the recipe's 256: the rate scales with it.
    assert quick["resnet18"].lr == RECIPES["fast"]["lr"] * 64 / 256
    assert quick["mini-resnet"].lr == RECIPES["fast"]["lr"]
    assert not any(c.tta for c in quick.values())
    fast = {a: budget_config(a, BUDGETS["fast"]) for a in architecture_names(PAPER)}
    assert fast["resnet18"].epochs == fast["resnet18-noskip"].epochs == 10
    # One recipe per pair: the ResNet-18s alike, at batch 128 and the rate scaled with it.
    skip, plain = fast["resnet18"].to_dict(), fast["resnet18-noskip"].to_dict()
    assert {k: v for k, v in skip.items() if k != "arch"} == {
        k: v for k, v in plain.items() if k != "arch"
    }
    assert (skip["batch_size"], skip["lr"], skip["init"], skip["zero_init_residual"]) == (
        128, 0.1, "torch", False,
    )  # fmt: skip
    assert all(c.scheduler == "linear" and c.patience == 0 for c in fast.values())
    paper = budget_config("resnet18", BUDGETS["paper"])
    assert (paper.optimizer, paper.lr, paper.epochs, paper.patience) == ("adam", 1e-3, 30, 7)


def test_report_settings_give_each_model_the_epochs_and_rate_it_trained_with():
    """REPORT.md's settings line: shared settings once, the budget's per-model ones per model
    (the fast budget's ResNet-18s train 10 epochs, not the recipe's 18, at batch 128, the rate
    scaled with it: the pair alike)."""
    text = settings_text(BUDGETS["fast"], PAPER_ARCHS)
    assert "val_size 5000," in text
    pair = "(baseline-cnn, mini-resnet) / {} (resnet18, resnet18-noskip)"
    assert f"batch_size 256 {pair.format(128)}" in text and f"lr 0.2 {pair.format(0.1)}" in text
    assert "epochs 30 (baseline-cnn) / 24 (mini-resnet) / 10 (resnet18, resnet18-noskip)" in text
    quick = settings_text(BUDGETS["quick"], PAPER_ARCHS)
    assert "val_size 2000," in quick and "tta False," in quick  # the budget's, not the recipe's
    assert "epochs 16 (baseline-cnn) / 14 (mini-resnet) / 1 (resnet18, resnet18-noskip)" in quick
    subsets = "train_subset None (baseline-cnn, mini-resnet) / 2000 (resnet18, resnet18-noskip)"
    assert subsets in quick


def test_ctrl_c_under_reproduce_names_the_command_that_continues(imagefolder: Path, tmp_path: Path):
    with pytest.raises(TrainingInterrupted, match=f"rtk reproduce --budget tiny --out {tmp_path}"):
        reproduce(
            budget=TINY, models=["baseline-cnn"], out=tmp_path, dataset=load_dataset(imagefolder),
            observer=_InterruptAt(1),
        )  # fmt: skip
    assert (tmp_path / "runs" / "baseline-cnn" / "last.pt").is_file()  # the rerun resumes it
