"""The fast recipe's parts: the per-step schedule, the no-decay groups, label smoothing, flip
test-time augmentation, keeping the last weights, and resuming in the middle of a schedule."""

from __future__ import annotations

import dataclasses
import json
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from tests.test_training import QUICK, _history, _InterruptAt
from toolkit.data import Dataset, TensorLoader, load_dataset
from toolkit.models import create_model
from toolkit.training import (
    RECIPES,
    ConfigError,
    Trainer,
    TrainingInterrupted,
    evaluate,
    load_checkpoint,
    make_config,
)
from toolkit.training.engine import lr_factor, param_groups


@pytest.fixture
def dataset(imagefolder: Path) -> Dataset:
    return load_dataset(imagefolder)


def test_schedule_values_at_the_first_warmup_end_and_last_step():
    total, warmup = 100, 15
    linear = [lr_factor(s, total=total, warmup=warmup, shape="linear") for s in range(total + 1)]
    assert linear[0] == pytest.approx(1 / 15)  # the first step trains at a 15th of the peak
    assert linear[warmup - 1] == 1.0  # the warm-up ends at the peak ...
    assert linear[warmup] == 1.0  # ... where the decay starts
    assert linear[total - 1] == pytest.approx(1 / 85)  # the last step: one decay step left
    assert linear[total] == 0.0  # and the rate after the last step is zero
    assert all(a < b for a, b in pairwise(linear[:warmup]))
    assert all(a > b for a, b in pairwise(linear[warmup:]))
    cosine = [lr_factor(s, total=total, warmup=warmup, shape="cosine") for s in range(total + 1)]
    assert cosine[:warmup] == linear[:warmup]
    assert cosine[warmup] == 1.0 and cosine[total] == pytest.approx(0.0, abs=1e-12)
    midpoint = warmup + (total - warmup) // 2 + 1  # progress 0.5 (85 decay steps: 42.5)
    assert cosine[midpoint - 1] > 0.5 > cosine[midpoint]
    assert lr_factor(0, total=10, warmup=0, shape="linear") == 1.0  # no warm-up: start at peak


def test_the_trainer_follows_the_schedule_step_by_step(dataset: Dataset, tmp_path: Path):
    config = make_config("baseline-cnn", "fast", epochs=2, **QUICK)
    trainer = Trainer(config, dataset, tmp_path / "run")
    per_epoch = len(trainer.train_loader)
    steps = 2 * per_epoch
    warmup = round(config.warmup_frac * steps)
    assert warmup >= 1
    seen: list[float] = []
    trainer.optimizer.register_step_pre_hook(
        lambda optimizer, *_: seen.append(optimizer.param_groups[0]["lr"])
    )
    result = trainer.run()
    expected = [
        config.lr * lr_factor(s, total=steps, warmup=warmup, shape="linear") for s in range(steps)
    ]
    assert seen == pytest.approx(expected)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0  # decayed to zero after the last step
    assert [r.lr for r in result.history] == pytest.approx([expected[0], expected[per_epoch]])


def test_no_decay_groups_hold_batchnorm_and_biases_once(dataset: Dataset, tmp_path: Path):
    model = create_model("mini-resnet")
    decayed, plain = param_groups(model, 5e-4, decay_norm_bias=False)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert {names[id(p)] for p in plain["params"]} == {
        n for n, p in model.named_parameters() if n.endswith(".bias") or ".bn" in n
    }
    assert all(p.ndim == 4 or names[id(p)] == "fc.weight" for p in decayed["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    # The paper's recipe decays everything alike (its rate is 0 anyway): one group.
    assert len(param_groups(model, 1e-4, decay_norm_bias=True)) == 1
    trainer = Trainer(
        make_config("baseline-cnn", "fast", epochs=1, **QUICK), dataset, tmp_path / "run"
    )
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [5e-4, 0.0]
    assert trainer.optimizer.param_groups[0]["nesterov"] is True


def test_label_smoothing_enters_the_training_loss_only(dataset: Dataset, tmp_path: Path):
    # A rate so small that the weights stay put: both runs see the same batches and logits.
    base = make_config("baseline-cnn", epochs=1, lr=1e-12, **QUICK)
    plain = Trainer(base, dataset, tmp_path / "plain").run().history[0]
    smooth_config = dataclasses.replace(base, label_smoothing=0.3)
    smooth = Trainer(smooth_config, dataset, tmp_path / "smooth").run().history[0]
    assert smooth.train_loss != pytest.approx(plain.train_loss, rel=1e-3)
    assert smooth.val_loss == pytest.approx(plain.val_loss, rel=1e-6)  # validation: plain CE
    with pytest.raises(ConfigError, match="label-smoothing"):
        make_config("baseline-cnn", label_smoothing=1.0)


def test_flip_tta_averages_the_logits_of_each_image_and_its_mirror(dataset: Dataset):
    torch.manual_seed(0)
    model = create_model("baseline-cnn").eval()
    loader = TensorLoader(dataset.test, batch_size=16)
    images = torch.cat([x for x, _ in loader])
    labels = torch.cat([y for _, y in loader])
    with torch.no_grad():
        logits = (model(images) + model(images.flip(3))) / 2
    expected = (logits.argmax(1) == labels).double().mean().item()
    plain = (model(images).argmax(1) == labels).double().mean().item()
    both = evaluate(model, loader, flip_tta=True)
    assert both.acc_tta == pytest.approx(expected) and both.acc == pytest.approx(plain)
    assert torch.equal(both.predicted, model(images).argmax(1))
    assert evaluate(model, loader).acc_tta is None


def test_fast_run_keeps_the_last_weights_and_reports_tta_apart(dataset: Dataset, tmp_path: Path):
    result = Trainer(
        make_config("baseline-cnn", "fast", epochs=2, **QUICK), dataset, tmp_path / "run"
    ).run()
    assert result.best_epoch == 2 and load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 2
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_acc_tta"] == result.test_acc_tta and 0 <= result.test_acc_tta <= 1
    settings = json.loads((tmp_path / "run" / "config.json").read_text())["settings"]
    overridden = {"epochs", "batch_size", "lr"}  # QUICK's, and the rate scaled with the batch
    assert {k: settings[k] for k in RECIPES["fast"] if k not in overridden} == {
        k: v for k, v in RECIPES["fast"].items() if k not in overridden
    }
    assert settings["lr"] == RECIPES["fast"]["lr"] * 32 / 256
    paper = Trainer(make_config("baseline-cnn", epochs=1, **QUICK), dataset, tmp_path / "p").run()
    assert paper.test_acc_tta is None  # the paper's recipe has no TTA: nothing is reported


def test_resumed_fast_run_has_the_history_of_an_uninterrupted_one(dataset: Dataset, tmp_path: Path):
    config = make_config("mini-resnet", "fast", epochs=3, **QUICK)
    straight = Trainer(config, dataset, tmp_path / "straight").run()
    with pytest.raises(TrainingInterrupted):
        Trainer(config, dataset, tmp_path / "cut", observer=_InterruptAt(2)).run()
    resumed = Trainer(config, dataset, tmp_path / "cut", resume=True).run()
    assert _history(resumed) == _history(straight)  # lr per epoch included
    assert resumed.test_acc == straight.test_acc and resumed.test_acc_tta == straight.test_acc_tta
    assert len({r.lr for r in straight.history}) == 3  # the schedule moved every epoch


def test_seed003_recipe_trains_the_slim_resnet18_as_the_seed_did(dataset: Dataset, tmp_path: Path):
    config = make_config("slim-resnet18", "seed003")
    assert (config.optimizer, config.lr, config.momentum) == ("sgd", 0.1, 0.9)
    assert config.batch_size == 64
    assert (config.scheduler, config.milestones, config.gamma) == ("multistep", (30, 45), 0.1)
    assert (config.epochs, config.weight_decay, config.patience) == (60, 0.0, 0)
    # The seed's head has no dropout, and it reports its final weights.
    short = make_config(
        "slim-resnet18", "seed003", epochs=2, milestones=(1,), train_subset=64, val_size=50
    )
    trainer = Trainer(short, dataset, tmp_path / "run")
    assert trainer.model.dropout.p == 0.0
    result = trainer.run()
    assert [round(r.lr, 6) for r in result.history] == [0.1, 0.01]
    assert result.best_epoch == 2


@pytest.mark.parametrize(("init", "zero_init"), [("torch", False), ("kaiming", True)])
def test_the_analyses_rebuild_the_weights_a_run_started_from(
    dataset: Dataset, tmp_path: Path, init: str, zero_init: bool
):
    """--init and zero-init decide a run's first weights; `--at init` analyses rebuild exactly
    those (the checkpoint written before the first step holds them)."""
    from analysis.sources import load_model

    config = make_config(
        "resnet20", "fast", epochs=2, init=init, zero_init_residual=zero_init, **QUICK
    )
    with pytest.raises(TrainingInterrupted):  # last.pt keeps epoch 0: the starting weights
        Trainer(config, dataset, tmp_path / "run", observer=_InterruptAt(1)).run()
    started = load_checkpoint(tmp_path / "run" / "last.pt")
    assert started["epoch"] == 0
    (tmp_path / "run" / "best.pt").write_bytes((tmp_path / "run" / "last.pt").read_bytes())
    rebuilt = load_model(str(tmp_path / "run"), dataset, at="init", analysis="residual").model
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, started["state_dict"][key]), key
    convs = [v for k, v in started["state_dict"].items() if k.endswith("conv1.weight")]
    torch.manual_seed(0)
    kaiming = create_model("resnet20").state_dict()
    ratio = sum(float(w.square().sum()) for w in convs) / sum(
        float(v.square().sum()) for k, v in kaiming.items() if k.endswith("conv1.weight")
    )
    # PyTorch's defaults give a sixth of Kaiming fan-out's squared norm for convs as wide in as
    # out (variance 1/(3 fan_in) against 2/fan_out); kaiming is the constructor's own.
    # (summed in another memory order: channels_last)
    assert (0.12 < ratio < 0.22) if init == "torch" else ratio == pytest.approx(1.0)
    last_bn = [v for k, v in started["state_dict"].items() if k.endswith("bn2.weight")]
    assert all(bool((w == 0).all()) == zero_init for w in last_bn)
