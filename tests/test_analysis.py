from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import classification_report
from typer.testing import CliRunner

from analysis.claims import epochs_claim
from analysis.gradients import gradient_profile, profile_source
from analysis.metrics import Predictions, SourceError, class_report, confusion, predict_test
from analysis.plots import confusion_heatmap, gradient_flow, training_curves
from analysis.report import CompareRow, compare_runs, read_history, table_markdown
from exporters.convert import export_onnx
from tests.conftest import CLASSES
from tests.test_export import _bare_model
from toolkit.cli import app
from toolkit.data import Dataset, TensorLoader, load_dataset
from toolkit.models import create_model
from toolkit.models.resnet import ResNet
from toolkit.training import (
    RunDir,
    Trainer,
    TrainResult,
    initial_checkpoint,
    make_config,
    save_checkpoint,
)


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


@pytest.fixture
def dataset(imagefolder: Path) -> Dataset:
    return load_dataset(imagefolder)


@pytest.fixture
def trained_run(dataset: Dataset, tmp_path: Path) -> Path:
    config = make_config("baseline-cnn", epochs=2, val_size=50, batch_size=32, device="cpu")
    Trainer(config, dataset, tmp_path / "baseline").run()
    return tmp_path / "baseline"


def _hand_case() -> Predictions:
    # 3 classes; true labels and predictions chosen so every number is easy by hand.
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 0, 1, 2, 1, 1, 2, 2, 0, 2])
    return Predictions(Path("hand"), "test", ["a", "b", "c"], labels, predicted)


def test_metrics_by_hand_and_against_scikit_learn():
    case = _hand_case()
    report = class_report(case)
    rows = {r.name: r for r in report.rows}
    # class a: predicted 3 times, 2 right (precision 2/3); 4 true, 2 found (recall 1/2).
    assert rows["a"].precision == pytest.approx(2 / 3) and rows["a"].recall == pytest.approx(0.5)
    assert rows["a"].f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert rows["b"].precision == pytest.approx(2 / 3) and rows["b"].recall == 1.0
    assert rows["c"].precision == pytest.approx(3 / 4) and rows["c"].recall == pytest.approx(3 / 4)
    assert [rows[n].support for n in "abc"] == [4, 2, 4]
    assert report.accuracy == pytest.approx(0.7)
    reference = classification_report(
        case.labels, case.predicted, target_names=case.classes, output_dict=True
    )
    for name in ("a", "b", "c", "macro avg", "weighted avg"):
        assert rows[name].f1 == pytest.approx(reference[name]["f1-score"])
    matrix = confusion(case).matrix
    assert matrix == [[2, 1, 1], [0, 2, 0], [1, 0, 3]]
    normalized = confusion(case, normalize_rows=True).matrix
    assert normalized[0] == pytest.approx([0.5, 0.25, 0.25])


def test_checkpoint_and_onnx_give_identical_reports(dataset: Dataset, trained_run: Path):
    (exported,) = export_onnx(trained_run, dataset=dataset, parity_images=50)
    torch_preds = predict_test(trained_run, dataset)
    onnx_preds = predict_test(exported.onnx_path, dataset)
    assert (torch_preds.engine, onnx_preds.engine) == ("pytorch", "onnxruntime")
    assert np.array_equal(torch_preds.predicted, onnx_preds.predicted)
    assert class_report(torch_preds).rows == class_report(onnx_preds).rows
    assert confusion(torch_preds).matrix == confusion(onnx_preds).matrix
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert class_report(torch_preds).accuracy == pytest.approx(metrics["test_acc"])


def test_a_run_directory_reuses_its_own_test_pass_until_best_changes(
    dataset: Dataset, trained_run: Path
):
    stored = json.loads((trained_run / "test_predictions.json").read_text())
    fresh = predict_test(trained_run / "best.pt", dataset)  # a checkpoint: always predicted
    assert stored["predicted"] == fresh.predicted.tolist()
    assert (
        stored["best_epoch"] == json.loads((trained_run / "metrics.json").read_text())["best_epoch"]
    )
    # From the run directory, the stored pass stands in for a forward over the test split.
    forged = [(p + 1) % 10 for p in stored["predicted"]]
    (trained_run / "test_predictions.json").write_text(json.dumps({**stored, "predicted": forged}))
    assert predict_test(trained_run, dataset).predicted.tolist() == forged
    # Made on other data, or older than best.pt: predicted afresh.
    elsewhere = {**stored, "predicted": forged, "source": "/elsewhere"}
    (trained_run / "test_predictions.json").write_text(json.dumps(elsewhere))
    assert predict_test(trained_run, dataset).predicted.tolist() == stored["predicted"]
    (trained_run / "test_predictions.json").write_text(json.dumps({**stored, "predicted": forged}))
    later = (trained_run / "test_predictions.json").stat().st_mtime + 5
    os.utime(trained_run / "best.pt", (later, later))
    assert predict_test(trained_run, dataset).predicted.tolist() == stored["predicted"]


def test_stored_predictions_must_name_the_runs_classes(dataset: Dataset, tmp_path: Path):
    # A file whose own class list was lengthened passed its own check with a prediction of 99,
    # and the reports silently dropped that image: such a file is predicted afresh, as any bad one.
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "best.pt", initial_checkpoint("baseline-cnn", list(CLASSES)))
    (run / "config.json").write_text(json.dumps({"settings": {"arch": "baseline-cnn"}}))
    fresh = predict_test(run / "best.pt", dataset).predicted.tolist()
    stored = {"source": str(dataset.source.path), "classes": list(CLASSES), "best_epoch": 1}
    shifted = [(p + 1) % 10 for p in fresh]
    (run / "test_predictions.json").write_text(json.dumps({**stored, "predicted": shifted}))
    assert predict_test(run, dataset).predicted.tolist() == shifted  # a good file is reused
    lengthened = {**stored, "classes": [f"c{i}" for i in range(100)]}
    forged = [99, *shifted[1:]]
    (run / "test_predictions.json").write_text(json.dumps({**lengthened, "predicted": forged}))
    assert predict_test(run, dataset).predicted.tolist() == fresh
    # A newer rtk's layout is never misread.
    newer = {**stored, "format": 2, "predicted": shifted}
    (run / "test_predictions.json").write_text(json.dumps(newer))
    assert predict_test(run, dataset).predicted.tolist() == fresh
    # Another run's file (other class names, every index in range) is not this run's either.
    renamed = {**stored, "classes": [f"c{i}" for i in range(10)], "predicted": shifted}
    (run / "test_predictions.json").write_text(json.dumps(renamed))
    assert predict_test(run, dataset).predicted.tolist() == fresh


def test_plots_are_decodable_pngs(trained_run: Path, dataset: Dataset, tmp_path: Path):
    heatmap = confusion_heatmap(confusion(predict_test(trained_run, dataset)), tmp_path / "c.png")
    curves = training_curves({"baseline": read_history(trained_run)}, tmp_path / "curves.png")
    profile = profile_source(str(trained_run), dataset, batches=2, at="best")
    flow = gradient_flow([profile], tmp_path / "g.png")
    for path in (heatmap, curves, flow):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 400 and image.size[1] > 300
            assert len(set(image.convert("L").get_flattened_data())) > 10  # something was drawn
    with Image.open(flow) as image:  # the L2-norm and RMS panels side by side
        assert image.size[0] > 2.0 * image.size[1]


def _rms(depth_blocks: int, *, skip: bool, norm: bool, loader: TensorLoader) -> list[float]:
    torch.manual_seed(0)
    model = ResNet(
        stem_width=16, widths=(16, 32, 64), blocks=(depth_blocks,) * 3, first_stride=1,
        skip=skip, norm=norm,
    )  # fmt: skip
    profile = gradient_profile(model, loader, batches=2, label="x", at="init")
    return [layer.rms_mean for layer in profile.layers if layer.kind != "shortcut"]


def test_gradient_facts_at_initialisation(dataset: Dataset):
    """He et al.'s CIFAR layout (16-32-64), 20 layers, real images: what the analysis must
    reproduce, in the direction the 56-layer networks show it."""
    loader = TensorLoader(dataset.train, batch_size=64, shuffle=True, seed=0)
    plain, residual = (_rms(3, skip=s, norm=False, loader=loader) for s in (False, True))
    # Without BatchNorm, the plain network's gradients vanish: orders of magnitude smaller.
    assert np.median(plain) < np.median(residual) / 100
    assert plain[0] < residual[0] / 100
    bn_plain, bn_residual = (_rms(3, skip=s, norm=True, loader=loader) for s in (False, True))
    # With BatchNorm, the plain network's first layer gets the *larger* gradient (exploding;
    # 2-2.5x at 20 layers, about 75x at 56 layers on the full data).
    assert bn_plain[0] > bn_residual[0]


def test_paper_models_first_to_last_ratio(dataset: Dataset):
    loader_args = {"batch_size": 64, "shuffle": True, "seed": 0}
    ratios = {}
    for arch in ("baseline-cnn", "resnet18", "resnet18-noskip"):
        torch.manual_seed(0)
        loader = TensorLoader(dataset.train, **loader_args)
        profile = gradient_profile(create_model(arch), loader, batches=2, label=arch, at="init")
        ratios[arch] = profile.first_last_norm_ratio
    # At init, removing the skips does not collapse early-layer gradients: it raises them.
    assert ratios["resnet18-noskip"] > ratios["resnet18"]
    assert ratios["baseline-cnn"] < 1


def test_table_one_from_runs(trained_run: Path, dataset: Dataset):
    (rows,) = compare_runs([trained_run])
    assert rows.model == "Baseline CNN" and rows.paper_test_acc == pytest.approx(0.841)
    assert rows.params == 391_946 and rows.epochs == 2
    # How the run was trained travels with its row: a reused run cannot pass for another budget.
    assert rows.max_epochs == 2 and rows.train_images == len(dataset.train) - 50
    markdown = table_markdown([rows])
    assert markdown.startswith("| model | run | recipe | test acc | paper |")
    assert "| baseline | paper | " in markdown and "84.1%" in markdown
    assert f"| 2 of 2 | {rows.train_images:,} | 391,946 |" in markdown
    result = run_cli("report", "compare", str(trained_run), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["arch"] == "baseline-cnn"
    # A network from beyond the paper has no Table I row: named, it is refused; found among
    # every run under --runs, it is left out.
    other = trained_run.parent / "resnet20"
    shutil.copytree(trained_run, other)
    RunDir.open(other).write_metrics(
        TrainResult(
            run_dir=other, arch="resnet20", best_epoch=1, epochs_run=1, stopped_early=False,
            test_loss=2.3, test_acc=0.1, train_s=1.0, device="cpu", test_images=50, history=[],
        )
    )  # fmt: skip
    with pytest.raises(SourceError, match="Table I has no row for resnet20"):
        compare_runs([other])
    result = run_cli("report", "compare", "--runs", str(trained_run.parent), "--json")
    assert result.exit_code == 0, result.stderr
    assert [r["arch"] for r in json.loads(result.stdout)] == ["baseline-cnn"]


def test_report_commands(trained_run: Path, imagefolder: Path, tmp_path: Path):
    data = ["--data", str(imagefolder)]
    out = run_cli("report", "classification", str(trained_run), "--json", *data)
    assert out.exit_code == 0, out.stderr
    report = json.loads(out.stdout)
    assert [r["name"] for r in report["rows"]][-2:] == ["macro avg", "weighted avg"]
    out = run_cli("report", "confusion", str(trained_run), "--plot", str(tmp_path / "m.png"), *data)
    assert out.exit_code == 0 and (tmp_path / "m.png").stat().st_size > 0
    assert "Confusion matrix" in out.stdout and "airplane" in out.stdout
    out = run_cli(
        "analyze", "gradients", str(trained_run), "resnet18", "--batches", "1", "--json", *data
    )
    assert out.exit_code == 0, out.stderr
    assert [p["model"] for p in json.loads(out.stdout)] == ["baseline", "resnet18"]
    out = run_cli("analyze", "params", "mini-resnet", "--json")
    assert json.loads(out.stdout)[0]["per_stage"]["stage 4"] == 2_099_712
    out = run_cli("report", "curves", str(trained_run), "--plot", str(tmp_path / "k.png"))
    assert out.exit_code == 0 and (tmp_path / "k.png").is_file()


def test_report_faults(trained_run: Path, imagefolder: Path, tmp_path: Path):
    data = ["--data", str(imagefolder)]
    bare = tmp_path / "bare"
    bare.mkdir()
    cases = [
        (
            ["report", "confusion", str(_bare_model(tmp_path / "bare.onnx")), *data],
            "no class names",
        ),
        (["report", "curves", str(bare)], "has no history.jsonl"),
        (["report", "classification", str(bare), *data], "holds no best.pt"),
        (["report", "compare", "--runs", str(tmp_path / "none")], "no finished runs"),
    ]
    other = imagefolder.parent / "other"
    for split in ("train", "test"):
        for index, name in enumerate(CLASSES):
            src = imagefolder / split / name
            (other / split).mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, other / split / f"class{index}")
    cases.append((["report", "confusion", str(trained_run), "--data", str(other)], "classes"))
    for args, message in cases:
        result = run_cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _row(arch: str, epochs: int, stopped_early: bool) -> CompareRow:
    return CompareRow(
        model=arch, arch=arch, run=arch, recipe="fast", test_acc=0.5, paper_test_acc=0.9,
        train_min=1.0, paper_train_min=1.0, epochs=epochs, max_epochs=10,
        stopped_early=stopped_early, train_images=100, params=1, paper_params=1, device="cpu",
        precision="fp32",
    )  # fmt: skip


def test_epochs_claim_under_early_stopping_and_under_a_fixed_schedule():
    stopped = [_row("resnet18", 12, True), _row("resnet18-noskip", 20, True)]
    assert epochs_claim(stopped, {}).verdict == "supported"
    fixed = [_row("resnet18", 4, False), _row("resnet18-noskip", 4, False)]
    plain = [{"val_acc": v} for v in (0.3, 0.5, 0.6, 0.7)]
    skip = [{"val_acc": v} for v in (0.4, 0.6, 0.72, 0.8)]
    verdict = epochs_claim(fixed, {"resnet18": skip, "resnet18-noskip": plain})
    assert verdict.verdict == "supported" and "reached it at epoch 3 of 4" in verdict.evidence
    slow = [{"val_acc": v} for v in (0.2, 0.4, 0.5, 0.69)]
    verdict = epochs_claim(fixed, {"resnet18": slow, "resnet18-noskip": plain})
    assert verdict.verdict == "not supported" and "never reached it" in verdict.evidence
    assert epochs_claim(fixed, {}).verdict == "not measured"
