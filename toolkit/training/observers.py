"""Observers of a training run beyond the terminal: TensorBoard event files, and a fan-out so
the trainer's one observer can be several."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.training.engine import EpochRecord, Observer


class Observers:
    """Passes every event to each observer in turn."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        for observer in self.observers:
            observer.epoch_start(epoch, epochs, batches)

    def batch_progress(self, done: int, loss: float, acc: float, images_per_s: float) -> None:
        for observer in self.observers:
            observer.batch_progress(done, loss, acc, images_per_s)

    def epoch_end(self, record: EpochRecord) -> None:
        for observer in self.observers:
            observer.epoch_end(record)

    def close(self) -> None:
        for observer in self.observers:
            observer.close()


# TensorBoard tag -> EpochRecord field; the part before "/" is the section it is shown in.
_CURVES = {
    "loss/train": "train_loss",
    "loss/val": "val_loss",
    "accuracy/train": "train_acc",
    "accuracy/val": "val_acc",
    "lr": "lr",
}


class TensorBoardObserver:
    """Per-epoch loss, accuracy, lr and per-layer gradient norms as TensorBoard events in the
    run folder (beside history.csv), flushed every epoch so a killed run keeps its curves."""

    def __init__(self, run_path: Path) -> None:
        self.run_path = run_path
        self.writer: Any = None  # opened at the first epoch, once the run folder exists

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: after a resume, TensorBoard drops what a killed run logged for the
            # epochs that are now trained again, so each curve has one point per epoch.
            self.writer = SummaryWriter(log_dir=str(self.run_path), purge_step=epoch)

    def batch_progress(self, done: int, loss: float, acc: float, images_per_s: float) -> None:
        pass  # per-epoch curves only: per-batch points would dwarf the event files

    def epoch_end(self, record: EpochRecord) -> None:
        scalars = {tag: getattr(record, field) for tag, field in _CURVES.items()}
        scalars.update({f"grad_norm/{layer}": n for layer, n in record.grad_norms.items()})
        for tag, value in scalars.items():
            if value is not None:  # no validation split: no val curves
                self.writer.add_scalar(tag, value, record.epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
