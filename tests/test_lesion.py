"""The lesion study and the residual ratio, on real images, real models and real runs.

Veit et al.'s lesion (a removed block passes on its shortcut path) and He et al.'s residual
size (||F(x)|| / ||shortcut(x)||) are checked against what they must be by construction: a
block whose branch is zero changes nothing when removed and has ratio 0; the hook-measured
ratio equals the one computed by hand from the block's own parts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from analysis.lesion import LesionStudy, RemovalCount, ensemble_claim, lesion_study
from analysis.residuals import residual_profile
from analysis.sources import SourceError, load_model, sample_test
from tests.conftest import TinyData, write_imagefolder
from tests.test_export import _bare_model
from toolkit.cli import app
from toolkit.data import Dataset, load_dataset, normalize
from toolkit.models import create_model, lesioned, residual_blocks
from toolkit.models.resnet import ResNet
from toolkit.training import Trainer, make_config


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("data") / "cifar10-jpeg", tiny_data)


@pytest.fixture(scope="module")
def dataset(data_root: Path) -> Dataset:
    return load_dataset(data_root, cache_dir=data_root.parent / "cache")


@pytest.fixture(scope="module")
def runs(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real epoch of He et al.'s 20-layer ResNet and its plain twin: the runs the CLI
    reads (a run folder with best.pt and its settings)."""
    root = tmp_path_factory.mktemp("runs")
    for arch in ("resnet20", "plain20"):
        config = make_config(arch, epochs=1, val_size=50, batch_size=50, device="cpu")
        Trainer(config, dataset, root / arch).run()
    return {arch: root / arch for arch in ("resnet20", "plain20")}


@pytest.fixture(scope="module")
def images(dataset: Dataset) -> torch.Tensor:
    return normalize(dataset.test.images[::5])  # 10 real test images, one class in five


def _model(arch: str) -> ResNet:
    torch.manual_seed(0)
    model = create_model(arch)
    assert isinstance(model, ResNet)
    return model.eval()


def _logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(images)


def _zero_branch(model: ResNet, name: str) -> None:
    last = residual_blocks(model)[name].last_norm()
    assert isinstance(last, torch.nn.BatchNorm2d)
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)


def test_blocks_have_stable_names_in_depth_order():
    names = list(residual_blocks(_model("resnet20")))
    assert names == [f"stage{s}.block{b}" for s in (1, 2, 3) for b in (1, 2, 3)]
    assert list(residual_blocks(_model("plain20"))) == names
    assert residual_blocks(create_model("baseline-cnn")) == {}


@pytest.mark.parametrize("name", ["stage1.block2", "stage2.block1", "stage3.block1"])
def test_removing_a_block_changes_the_logits_but_not_their_shape(images, name):
    model = _model("resnet20")
    intact = _logits(model, images)
    with lesioned(model, [name]):
        removed = _logits(model, images)
    assert removed.shape == intact.shape == (len(images), 10)
    assert not torch.allclose(removed, intact)


@pytest.mark.parametrize(
    ("arch", "name", "shortcut"),
    [
        ("resnet20", "stage1.block2", "identity"),
        ("resnet20", "stage2.block1", "option A"),
        ("mini-resnet", "stage2.block1", "projection"),
    ],
)
def test_removing_a_block_whose_branch_is_zero_changes_nothing(images, arch, name, shortcut):
    """A lesioned block passes on relu(shortcut(x)): exactly what it computes when its
    branch F(x) is zero, through an identity, an option-A or a projection shortcut."""
    model = _model(arch)
    block = residual_blocks(model)[name]
    assert block.shortcut_kind == shortcut
    _zero_branch(model, name)
    intact = _logits(model, images)
    with lesioned(model, [name]):
        assert torch.equal(_logits(model, images), intact)
    other = next(n for n in residual_blocks(model) if n != name)
    with lesioned(model, [other]):  # a block whose branch is not zero does change them
        assert not torch.allclose(_logits(model, images), intact)


def test_a_plain_block_is_removable_only_where_it_keeps_the_shape(images, dataset):
    model = _model("plain20")
    blocks = residual_blocks(model)
    reshaping = [name for name, block in blocks.items() if not block.removable]
    assert reshaping == ["stage2.block1", "stage3.block1"]
    refused = pytest.raises(ValueError, match=r"stage2\.block1 cannot be removed")
    with refused, lesioned(model, ["stage1.block1", "stage2.block1"]):
        pass
    assert not any(block.removed for block in blocks.values())  # nothing left half-removed
    # Where the shape fits, the removed plain block is the identity (its input is a ReLU's).
    x = torch.relu(torch.randn(4, 16, 32, 32))
    with lesioned(model, ["stage1.block2"]), torch.inference_mode():
        assert torch.equal(blocks["stage1.block2"](x), x)
    study = lesion_study(
        model, sample_test(dataset, images=20, seed=0), label="plain20", chance=0.1, draws=2,
        seed=0,
    )  # fmt: skip
    rows = {row.block: row for row in study.blocks}
    assert rows["stage2.block1"].removable is False and rows["stage2.block1"].accuracy is None
    assert rows["stage2.block1"].shortcut == "none"
    assert all(rows[n].accuracy is not None for n in blocks if n not in reshaping)
    assert not study.residual and len(study.removals) == 7  # k = 1..7 over the removable
    assert {row.stage: row.removable for row in study.stages} == {
        "stage1": 3, "stage2": 2, "stage3": 2,
    }  # fmt: skip


def test_the_context_manager_restores_the_network_exactly(images):
    model = _model("resnet20")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = _logits(model, images)
    with lesioned(model, ["stage1.block1", "stage2.block1", "stage3.block3"]):
        assert not torch.allclose(_logits(model, images), before)
    assert torch.equal(_logits(model, images), before)
    with pytest.raises(RuntimeError, match="inside"), lesioned(model, ["stage2.block2"]):
        raise RuntimeError("inside")
    assert torch.equal(_logits(model, images), before)  # restored after an error too
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_random_removals_are_seeded_and_reproducible(dataset):
    split = sample_test(dataset, images=20, seed=0)
    model = _model("resnet20")

    def study(seed: int) -> LesionStudy:
        return lesion_study(model, split, label="r", chance=0.1, draws=3, seed=seed)

    first, again, other = study(7), study(7), study(8)
    assert first == again
    assert [r.draws for r in first.removals] != [r.draws for r in other.removals]
    assert [r.removed for r in first.removals] == list(range(1, 10))
    for count in first.removals:
        assert len(count.draws) == 3
        for draw in count.draws:
            assert len(set(draw)) == count.removed == len(draw)
            assert draw == sorted(draw)  # depth order: stageN.blockM sorts so in resnet20
        tolerance = 1e-12  # the mean of equal values may differ from them in the last bit
        assert count.accuracy_min - tolerance <= count.accuracy_mean
        assert count.accuracy_mean <= count.accuracy_max + tolerance
    singles = {row.block: row.accuracy for row in first.blocks}
    k1 = first.removals[0]
    assert k1.accuracy_mean == pytest.approx(sum(singles[d[0]] for d in k1.draws) / 3)
    everything = first.removals[-1]  # one possible set: every block removed
    assert everything.accuracy_std == 0 and everything.draws[0] == list(singles)
    # Removing no block is the network's own test accuracy.
    correct = _logits(model, normalize(split.images)).argmax(1) == split.labels
    assert first.accuracy == pytest.approx(correct.double().mean().item())


def test_the_residual_ratio_is_zero_for_a_zero_branch_and_matches_a_hand_computation(
    dataset: Dataset,
):
    split = sample_test(dataset, images=30, seed=0)
    model = _model("resnet20")
    _zero_branch(model, "stage1.block3")
    profile = residual_profile(model, split, label="r", at="init")
    rows = {row.block: row for row in profile.blocks}
    assert profile.applicable and rows["stage1.block3"].ratio_mean == 0.0
    # By hand: the input of stage2.block1 (option A) is stage 1's output; its ratio per image
    # is the branch's L2 norm over its shortcut's.
    with torch.inference_mode():
        x = model.stages[0](model.stem(normalize(split.images)))
        block = residual_blocks(model)["stage2.block1"]
        ratio = block.branch(x).flatten(1).norm(dim=1) / block.shortcut_path(x).flatten(1).norm(
            dim=1
        )
    row = rows["stage2.block1"]
    assert row.shortcut == "option A"
    assert row.ratio_mean == pytest.approx(ratio.mean().item(), rel=1e-5)
    assert row.ratio_std == pytest.approx(ratio.std().item(), rel=1e-4)
    stage = next(s for s in profile.stages if s.stage == "stage2")
    assert stage.blocks == 3 and stage.ratio_max >= row.ratio_mean
    # The verdict is read from the numbers: "supported" exactly when every block is below 1.
    for s in profile.stages:
        below = all(r.ratio_mean < 1 for r in profile.blocks if r.stage == s.stage)
        assert (s.verdict.verdict == "supported") == below
        assert f"{rows[f'{s.stage}.block1'].ratio_mean:.3g}" in s.verdict.evidence


def test_a_plain_network_has_no_residual_ratio(dataset: Dataset):
    split = sample_test(dataset, images=10, seed=0)
    for arch in ("plain20", "baseline-cnn"):
        profile = residual_profile(create_model(arch), split, label=arch, at="init")
        assert not profile.applicable and profile.blocks == [] and profile.stages == []
        assert "no shortcut" in profile.reason


def _study(model: str, residual: bool, intact: float, singles: list[float | None], curve):
    from analysis.lesion import BlockLesion

    blocks = [
        BlockLesion(f"stage1.block{i + 1}", "stage1", "identity", a is not None, a)
        for i, a in enumerate(singles)
    ]
    removals = [RemovalCount(k + 1, a, 0.0, a, a, []) for k, a in enumerate(curve)]
    return LesionStudy(model, residual, 100, 0.1, intact, blocks, [], removals)


def test_the_ensemble_verdict_is_read_from_the_numbers():
    smooth = _study("res", True, 0.9, [0.85, 0.8, 0.75], [0.8, 0.6, 0.3])
    collapse = _study("plain", False, 0.9, [0.12, None, 0.2], [0.16, 0.1])
    verdict = ensemble_claim([smooth, collapse])
    assert verdict.verdict == "supported"
    assert "res (residual) 90.0% intact; one block removed: mean 80.0%" in verdict.evidence
    assert "worst 12.0% (stage1.block1)" in verdict.evidence
    assert "1 cannot be removed" in verdict.evidence and "50%" in verdict.evidence
    robust = _study("plain", False, 0.9, [0.85, None, 0.85], [0.85, 0.7])
    assert ensemble_claim([smooth, robust]).verdict == "not supported"
    assert ensemble_claim([smooth]).verdict == "not measured"
    at_chance = _study("res", True, 0.1, [0.1, 0.1, 0.1], [0.1, 0.1, 0.1])
    assert ensemble_claim([at_chance, collapse]).verdict == "not measured"


def test_sources_are_read_the_way_the_gradient_analysis_reads_them(runs, dataset, tmp_path):
    run = runs["resnet20"]
    from_run = load_model(str(run), dataset, at="best", analysis="lesion")
    from_file = load_model(str(run / "best.pt"), dataset, at="best", analysis="lesion")
    assert from_run.label == "resnet20" and from_file.label == "resnet20/best.pt"
    for key, value in from_run.model.state_dict().items():
        assert torch.equal(value, from_file.model.state_dict()[key])
    init = load_model(str(run), dataset, at="init", analysis="residual").model
    torch.manual_seed(0)  # the run's seed, and the recipe's zero-init is off in `paper`
    fresh = create_model("resnet20")
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in init.state_dict().items())
    with pytest.raises(SourceError, match="needs the PyTorch weights"):
        load_model(str(_bare_model(tmp_path / "m.onnx")), dataset, at="best", analysis="lesion")
    with pytest.raises(SourceError, match="has no trained weights"):
        load_model("resnet20", dataset, at="best", analysis="lesion")


def test_lesion_command(runs, data_root, tmp_path):
    figure = tmp_path / "lesion.png"
    args = ["analyze", "lesion", str(runs["resnet20"]), str(runs["plain20"])]
    common = ["--data", str(data_root), "--images", "20", "--draws", "2"]
    out = run_cli(*args, *common, "--json", "--out", str(figure))
    assert out.exit_code == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report) == {"studies", "seed", "draws", "verdict"}
    assert set(report["verdict"]) == {"claim", "verdict", "evidence"}
    residual, plain = report["studies"]
    assert (residual["model"], residual["residual"], plain["residual"]) == ("resnet20", True, False)
    assert residual["images"] == 20 and len(residual["blocks"]) == 9
    assert set(residual["removals"][0]) == {
        "removed", "accuracy_mean", "accuracy_std", "accuracy_min", "accuracy_max", "draws",
    }  # fmt: skip
    assert [b["accuracy"] is None for b in plain["blocks"]].count(True) == 2
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.size[0] > 1.5 * image.size[1]
    out = run_cli(*args, *common)
    assert out.exit_code == 0, out.stderr
    assert "impossible (shape changes, no shortcut)" in out.stdout
    assert "stage2.block1" in out.stdout and "option A" in out.stdout
    assert "residual networks degrade smoothly" in out.stdout


def test_residuals_command(runs, data_root):
    data = ["--data", str(data_root), "--images", "20"]
    out = run_cli("analyze", "residuals", str(runs["resnet20"]), str(runs["plain20"]), *data,
                  "--json")  # fmt: skip
    assert out.exit_code == 0, out.stderr
    profiles = json.loads(out.stdout)
    assert [(p["model"], p["at"], p["applicable"]) for p in profiles] == [
        ("resnet20", "init", True), ("resnet20", "best", True),
        ("plain20", "init", False), ("plain20", "best", False),
    ]  # fmt: skip
    assert set(profiles[0]["stages"][0]) == {"stage", "blocks", "ratio_mean", "ratio_max",
                                             "verdict"}  # fmt: skip
    out = run_cli("analyze", "residuals", str(runs["plain20"]), "--at", "best", *data)
    assert out.exit_code == 0, out.stderr
    assert "plain20 at best: not applicable" in out.stdout and "no shortcuts" in out.stdout


def test_an_onnx_model_is_refused_in_one_line(data_root, tmp_path):
    onnx_model = _bare_model(tmp_path / "model.onnx")
    for command in ("lesion", "residuals"):
        out = run_cli("analyze", command, str(onnx_model), "--data", str(data_root))
        assert out.exit_code == 2
        assert "needs the PyTorch weights" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
