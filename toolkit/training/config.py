"""Training configuration: the paper's recipe, the SGD recipe, and every override."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from toolkit.errors import RtkError

Optimizer = Literal["adam", "sgd"]
Scheduler = Literal["plateau", "multistep", "none"]


class ConfigError(RtkError):
    """An invalid training setting."""


@dataclass(frozen=True)
class TrainConfig:
    arch: str
    recipe: str = "paper"
    optimizer: Optimizer = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    scheduler: Scheduler = "plateau"
    plateau_factor: float = 0.2  # ReduceLROnPlateau on validation loss
    plateau_patience: int = 3  # epochs without improvement before the lr drops
    milestones: tuple[int, ...] = ()  # MultiStepLR epochs
    gamma: float = 0.1  # MultiStepLR factor
    epochs: int = 30
    batch_size: int = 64  # per process; the effective batch is this times the world size
    patience: int = 7  # early stopping on validation loss, in epochs; 0 disables it
    dropout: float = 0.5
    flip: bool = True
    brightness: float = 0.1  # max additive delta on the [0, 1] scale
    translate: int = 0  # max random shift in pixels
    seed: int = 0
    val_size: int = 5_000
    split_seed: int = 0
    train_subset: int | None = None  # first N images of the shuffled training split
    device: str = "auto"
    channels_last: bool = False
    compile: bool = False
    amp: bool = False  # CUDA only
    grad_norm_batches: int = 8  # per-layer gradient norms averaged over the epoch's last N batches

    def validate(self) -> TrainConfig:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.patience < 0:
            raise ConfigError(f"--patience must be 0 (off) or more, got {self.patience}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.val_size < 0:
            raise ConfigError(f"--val-size must be 0 or more, got {self.val_size}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ConfigError(f"--train-subset must be positive, got {self.train_subset}")
        if self.val_size == 0 and (self.scheduler == "plateau" or self.patience > 0):
            raise ConfigError(
                "--val-size 0 leaves nothing to validate on, but this recipe reduces the lr "
                "and stops early on validation loss; keep a validation set or use --recipe sgd"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPES: dict[str, dict[str, Any]] = {
    # The paper: Adam 1e-3, ReduceLROnPlateau(0.2, 3) and early stopping (7) on validation loss.
    "paper": {},
    # From the seeds' second implementation: SGD momentum 0.9, lr 0.1, steps at 30 and 45.
    "sgd": {
        "optimizer": "sgd",
        "lr": 0.1,
        "scheduler": "multistep",
        "milestones": (30, 45),
        "gamma": 0.1,
        "epochs": 60,
        "patience": 0,
    },
}


def make_config(arch: str, recipe: str = "paper", **overrides: Any) -> TrainConfig:
    """A recipe's settings with ``overrides`` on top (``None`` means: keep the recipe's)."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    chosen = {k: v for k, v in overrides.items() if v is not None}
    return TrainConfig(arch=arch, recipe=recipe, **{**RECIPES[recipe], **chosen}).validate()
