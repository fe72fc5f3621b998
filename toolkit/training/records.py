"""What a training run produces, shared by the loop that makes it and the run folder that
keeps it (so neither imports the other)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TEST_PRECISION = "fp32"  # the test pass's, whatever the run trained in (strict: no TF32 either)


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    lr: float  # the learning rate this epoch trained with
    epoch_s: float  # wall time, compilation and validation included
    images_per_s: float  # training images per second over all ranks, compilation excluded
    peak_mem_mb: float
    grad_norms: dict[str, float] = field(default_factory=dict)  # per weight layer, L2
    compile_s: float = 0.0  # torch.compile's first step in this process (0: not compiled)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    arch: str
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    test_loss: float
    test_acc: float
    train_s: float
    device: str
    test_images: int
    history: list[EpochRecord]
    test_acc_tta: float | None = None  # with flip test-time augmentation, when the recipe asks
    precision: str = "fp32"  # what training and validation computed in: fp32, tf32, bf16, fp16
    test_precision: str = TEST_PRECISION  # the test pass (and its TTA)

    def summary(self) -> dict[str, Any]:
        """Everything but the per-epoch history, for ``--json`` and reports."""
        return {k: v for k, v in asdict(self).items() if k != "history"}
