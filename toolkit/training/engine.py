"""The training loop: one run of one architecture, resumable at every epoch boundary.

Laid out in the order it runs: set-up (device, seed, data, model, optimiser), the epoch loop
(train, validate, schedule, checkpoint, stop early), then the test of the best weights.
Nothing here prints: progress goes to an ``Observer`` that the CLI renders.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.data import Augment, Dataset, TensorLoader
from toolkit.errors import RtkError
from toolkit.models import Classifier, batched_logits, get_architecture
from toolkit.training import distributed
from toolkit.training.checkpoint import (
    describe_model,
    load_checkpoint,
    save_checkpoint,
)
from toolkit.training.config import ConfigError, TrainConfig
from toolkit.training.rundir import RunDir

PROGRESS_EVERY = 10  # batches between progress reports (each one syncs the device)


class NonFiniteLossError(RtkError):
    """The loss became NaN or infinite; the last good checkpoints are kept."""


class TrainingInterrupted(RtkError):
    """Ctrl-C: ``last.pt`` holds the last finished epoch."""

    exit_code = 130


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    lr: float  # the learning rate this epoch trained with
    epoch_s: float
    images_per_s: float  # training images per second over all ranks
    peak_mem_mb: float
    grad_norms: dict[str, float] = field(default_factory=dict)  # per weight layer, L2


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

    def summary(self) -> dict[str, Any]:
        """Everything but the per-epoch history, for ``--json`` and reports."""
        return {k: v for k, v in asdict(self).items() if k != "history"}


class Observer(Protocol):
    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None: ...

    def batch_progress(self, done: int, loss: float, acc: float, images_per_s: float) -> None: ...

    def epoch_end(self, record: EpochRecord) -> None: ...


def resume_config(run_path: Path, *, epochs: int | None = None) -> TrainConfig:
    """The settings a run was started with (from its ``last.pt``), optionally with more epochs."""
    payload = load_checkpoint(RunDir.existing(run_path).path / "last.pt")
    settings = dict(payload.get("config") or {})
    if not settings:
        raise ConfigError(f"{run_path}/last.pt holds no training settings; cannot resume")
    settings["milestones"] = tuple(settings.get("milestones", ()))
    if epochs is not None:
        settings["epochs"] = epochs
    try:
        return TrainConfig(**settings).validate()
    except TypeError as exc:
        raise ConfigError(
            f"{run_path}/last.pt has settings this rtk does not know ({exc})"
        ) from exc


def lr_factor(step: int, *, total: int, warmup: int, shape: str) -> float:
    """The per-step schedule's multiple of the peak rate for optimizer step ``step`` (0-based)
    of ``total``: a linear rise over the first ``warmup`` steps to 1 at step ``warmup - 1``,
    then a linear or half-cosine decay that reaches 0 after the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)  # 0 at the peak, 1 after the last step
    if shape == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return max(1.0 - progress, 0.0)


def param_groups(
    model: nn.Module, weight_decay: float, *, decay_norm_bias: bool
) -> list[dict[str, Any]]:
    """Optimizer groups: with ``decay_norm_bias`` off, BatchNorm weights and every bias (the
    1-D parameters) get no weight decay: shrinking them only rescales what the next BN undoes."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_bias or weight_decay == 0:
        return [{"params": params, "weight_decay": weight_decay}]
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available here; use --device cpu or auto")
    if requested not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {requested!r}; choose auto, cpu or cuda")
    return requested


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by tensors this epoch. CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean cross-entropy
    acc: float  # top-1
    predicted: torch.Tensor  # top-1 class per image, in the loader's order
    acc_tta: float | None = None  # top-1 of the mean logits of each image and its mirror


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: TensorLoader,
    *,
    amp_dtype: torch.dtype | None = None,
    flip_tta: bool = False,
) -> Evaluation:
    """Loss, accuracy and predictions over every batch of ``loader`` (in order); with
    ``flip_tta`` also the accuracy of flip test-time augmentation, from one more pass."""
    device = loader.images.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    correct_tta = torch.zeros((), dtype=torch.int64, device=device)
    predicted = []
    for images, labels in loader:
        logits = batched_logits(model, [images], amp_dtype=amp_dtype)
        if flip_tta:
            flipped = batched_logits(model, [images.flip(3)], amp_dtype=amp_dtype)
            correct_tta += (((logits + flipped) / 2).argmax(1) == labels).sum()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        predicted.append(logits.argmax(1))
        correct += (predicted[-1] == labels).sum()
    n = max(loader.num_images, 1)
    return Evaluation(
        loss=loss_sum.item() / n,
        acc=correct.item() / n,
        predicted=torch.cat(predicted).cpu() if predicted else torch.zeros(0, dtype=torch.long),
        acc_tta=correct_tta.item() / n if flip_tta else None,
    )


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if not config.amp:
        return None
    if device.type != "cuda":
        raise ConfigError(
            "--amp needs CUDA (bf16 autocast is slower than fp32 on this kind of CPU); "
            "drop --amp or use --device cuda"
        )
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextmanager
def _interrupt_as_error(rundir: RunDir) -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted; {rundir.path / 'last.pt'} holds the last finished epoch: "
            f"resume with `rtk train --resume {rundir.path}`"
        ) from None


class Trainer:
    """One training run. ``run()`` trains to the end (or early stop) and tests the best weights."""

    def __init__(
        self,
        config: TrainConfig,
        dataset: Dataset,
        run_path: Path,
        *,
        observer: Observer | None = None,
        resume: bool = False,
    ) -> None:
        self.config = config
        self.dataset = dataset
        device_type = resolve_device(config.device)
        self.world = distributed.init_world(device_type)
        if resume:
            self.rundir = RunDir.existing(run_path)
        else:  # only rank 0 writes; the others just know the path
            self.rundir = RunDir.create(run_path) if self.world.is_main else RunDir(run_path)
        self.device = distributed.device_for(self.world, device_type)
        self.amp_dtype = _amp_dtype(config, self.device)
        self.observer = observer if self.world.is_main else None

        torch.manual_seed(config.seed)  # the same initial weights on every rank
        arch = get_architecture(config.arch)
        self.arch = arch
        self.model_kwargs = {**arch.kwargs, "dropout": config.dropout}
        self.model: Classifier = arch.build(**self.model_kwargs).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.layers = self.model.weight_layers()
        wrapped = distributed.wrap(self.world, self.model, self.device)
        self.net: nn.Module = torch.compile(wrapped) if config.compile else wrapped

        self.train_loader, self.val_loader, self.test_loader = self._loaders()
        self.optimizer = self._optimizer()
        self.scheduler = self._scheduler()
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )

        self.epoch = 0  # epochs finished
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[EpochRecord] = []
        self.train_s = 0.0
        if resume:
            self._restore(load_checkpoint(run_path / "last.pt"))

    # --- set-up ---------------------------------------------------------------------------

    def _loaders(self) -> tuple[TensorLoader, TensorLoader | None, TensorLoader]:
        c = self.config
        train, val = self.dataset.split(val_size=c.val_size, seed=c.split_seed)
        if c.train_subset is not None and c.train_subset < len(train):
            # A seeded random subset, not the first N, so every class is represented.
            generator = torch.Generator().manual_seed(c.split_seed)
            train = train.subset(torch.randperm(len(train), generator=generator)[: c.train_subset])
        common = {"device": self.device, "channels_last": c.channels_last, "seed": c.seed}
        augment = Augment(flip=c.flip, brightness=c.brightness, translate=c.translate)
        train_loader = TensorLoader(
            train,
            batch_size=c.batch_size,
            shuffle=True,
            # A compiled model would recompile for the last, smaller batch: drop it (the next
            # epoch's permutation trains those images).
            drop_last=c.compile,
            augment=augment,
            rank=self.world.rank,
            world_size=self.world.size,
            **common,
        )
        eval_batch = max(c.batch_size, 500)  # evaluation holds no activations for backward
        val_loader = TensorLoader(val, batch_size=eval_batch, **common) if len(val) else None
        test_loader = TensorLoader(self.dataset.test, batch_size=eval_batch, **common)
        return train_loader, val_loader, test_loader

    def _optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        groups = param_groups(self.model, c.weight_decay, decay_norm_bias=c.decay_norm_bias)
        if c.optimizer == "sgd":
            return torch.optim.SGD(
                groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, foreach=True
            )
        return torch.optim.Adam(groups, lr=c.lr, foreach=True)

    def _scheduler(self) -> Any:
        c = self.config
        if c.scheduler == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="min", factor=c.plateau_factor, patience=c.plateau_patience
            )
        if c.scheduler == "multistep":
            return torch.optim.lr_scheduler.MultiStepLR(
                self.optimizer, milestones=list(c.milestones), gamma=c.gamma
            )
        if c.scheduler in ("linear", "cosine"):
            total = c.epochs * len(self.train_loader)
            warmup = round(c.warmup_frac * total)
            return torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, partial(lr_factor, total=total, warmup=warmup, shape=c.scheduler)
            )
        return None

    @property
    def _per_step_schedule(self) -> bool:
        return self.config.scheduler in ("linear", "cosine")

    def _data_facts(self) -> dict[str, Any]:
        return {
            "source": str(self.dataset.source.path),
            "format": self.dataset.source.format,
            "classes": list(self.dataset.classes),
            "train_images": len(self.train_loader.labels),
            "val_images": len(self.val_loader.labels) if self.val_loader else 0,
            "test_images": len(self.dataset.test),
        }

    # --- checkpoints ----------------------------------------------------------------------

    def _payload(self, *, full: bool) -> dict[str, Any]:
        payload = describe_model(
            arch=self.arch.name,
            model_class=self.arch.model_class,
            model_kwargs=self.model_kwargs,
            classes=list(self.dataset.classes),
        )
        payload.update(
            epoch=self.epoch,
            state_dict=self.model.state_dict(),
            config=self.config.to_dict(),
            metrics=asdict(self.history[-1]) if self.history else {},
            best_epoch=self.best_epoch,
            data=self._data_facts(),
        )
        if full:
            payload.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
                scaler=self.scaler.state_dict(),
                early_stopping={
                    "best_val_loss": self.best_val_loss,
                    "best_epoch": self.best_epoch,
                    "bad_epochs": self.bad_epochs,
                },
                history=[asdict(record) for record in self.history],
                train_s=self.train_s,
                rng={
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                },
            )
        return payload

    def _restore(self, payload: dict[str, Any]) -> None:
        if payload.get("arch") != self.arch.name or "optimizer" not in payload:
            raise ConfigError(
                f"{self.rundir.path / 'last.pt'} is not a resumable {self.arch.name} checkpoint"
            )
        stored, current = payload.get("data", {}), self._data_facts()
        if stored and stored != current:
            raise ConfigError(
                f"{self.rundir.path} was trained on {stored.get('source')} "
                f"({stored.get('train_images')} training images); this data is "
                f"{current['source']} ({current['train_images']}): pass the run's own --data"
            )
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scheduler is not None and payload["scheduler"] is not None:
            self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        stopping = payload["early_stopping"]
        self.best_val_loss = stopping["best_val_loss"]
        self.best_epoch = stopping["best_epoch"]
        self.bad_epochs = stopping["bad_epochs"]
        self.history = [EpochRecord(**row) for row in payload["history"]]
        self.epoch = payload["epoch"]
        self.train_s = payload["train_s"]
        torch.set_rng_state(payload["rng"]["torch"])
        if payload["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["rng"]["cuda"])

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> TrainResult:
        c = self.config
        stopped_early = self.bad_epochs >= c.patience > 0
        # Refuse before touching any file: a finished run keeps its metrics.json and config.
        if self.epoch and (stopped_early or self.epoch >= c.epochs):
            why = "stopped early" if stopped_early else f"trained all {c.epochs} epochs"
            raise ConfigError(
                f"{self.rundir.path} already {why} (epoch {self.epoch}); nothing to resume"
                + ("" if stopped_early else ": pass a larger --epochs to train further")
            )
        if self.world.is_main:
            (self.rundir.path / "metrics.json").unlink(missing_ok=True)  # stale while training
            self.rundir.write_config(
                c, device=str(self.device), world_size=self.world.size, data=self._data_facts()
            )
            if self.epoch == 0:
                save_checkpoint(self.rundir.path / "last.pt", self._payload(full=True))
            self.rundir.write_history(self.history)
        with _interrupt_as_error(self.rundir):
            while self.epoch < c.epochs and not stopped_early:
                record = self._train_epoch()
                stopped_early = self._end_epoch(record)
        return self._finish(stopped_early)

    def _train_epoch(self) -> EpochRecord:
        c = self.config
        epoch = self.epoch + 1
        loader = self.train_loader
        loader.set_epoch(self.epoch)
        self.net.train()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.observer:
            self.observer.epoch_start(epoch, c.epochs, len(loader))
        lr = self.optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        norm_sums = torch.zeros(len(self.layers), dtype=torch.float64, device=self.device)
        norm_batches = 0
        first_norm_batch = len(loader) - min(c.grad_norm_batches, len(loader))
        start = time.perf_counter()
        for index, (images, labels) in enumerate(loader):
            with _autocast(self.device, self.amp_dtype):
                logits = self.net(images)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=c.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if index >= first_norm_batch:
                self.scaler.unscale_(self.optimizer)  # norms of the true, unscaled gradients
                norm_sums += torch.stack(
                    [torch.linalg.vector_norm(layer.module.weight.grad) for layer in self.layers]
                ).double()
                norm_batches += 1
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self._per_step_schedule:
                self.scheduler.step()
            loss_sum += loss.detach().double() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            if (index + 1) % PROGRESS_EVERY == 0 or index + 1 == len(loader):
                # Rank 0's loss decides for all ranks, so no rank stops alone and deadlocks.
                mean_loss = distributed.broadcast_object(self.world, loss_sum.item() / seen)
                if not math.isfinite(mean_loss):
                    raise NonFiniteLossError(
                        f"the training loss became {mean_loss} in epoch {epoch} (batch "
                        f"{index + 1}); the run stopped and {self.rundir.path} keeps the last "
                        "good checkpoints: lower --lr or check the data"
                    )
                if self.observer:
                    rate = seen * self.world.size / (time.perf_counter() - start)
                    self.observer.batch_progress(index + 1, mean_loss, correct.item() / seen, rate)
        train_s = time.perf_counter() - start
        distributed.sync_buffers(self.world, self.model)
        # The unwrapped model: after sync_buffers every rank holds the same weights, and DDP's
        # per-forward collectives have no place in evaluation.
        val = (
            evaluate(self.model, self.val_loader, amp_dtype=self.amp_dtype)
            if self.val_loader is not None
            else None
        )
        norms = (norm_sums / max(norm_batches, 1)).tolist()
        return EpochRecord(
            epoch=epoch,
            train_loss=loss_sum.item() / seen,
            train_acc=correct.item() / seen,
            val_loss=val.loss if val else None,
            val_acc=val.acc if val else None,
            lr=lr,
            epoch_s=time.perf_counter() - start,
            images_per_s=seen * self.world.size / train_s,
            peak_mem_mb=peak_memory_mb(self.device),
            grad_norms={layer.name: n for layer, n in zip(self.layers, norms, strict=True)},
        )

    def _end_epoch(self, record: EpochRecord) -> bool:
        """Schedule, keep the best weights, checkpoint; True when early stopping triggers."""
        c = self.config
        self.epoch = record.epoch
        self.history.append(record)
        self.train_s += record.epoch_s
        monitored = record.val_loss if record.val_loss is not None else record.train_loss
        # Rank 0's value drives the schedule and early stopping on every rank.
        monitored = distributed.broadcast_object(self.world, monitored)
        if not math.isfinite(monitored):
            raise NonFiniteLossError(
                f"the validation loss became {monitored} in epoch {record.epoch}; the run "
                f"stopped and {self.rundir.path} keeps the last good checkpoints"
            )
        improved = monitored < self.best_val_loss
        if improved:
            self.best_val_loss, self.bad_epochs = monitored, 0
        else:
            self.bad_epochs += 1
        keep = improved if c.select == "val_loss" else True
        if keep:
            self.best_epoch = record.epoch
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(monitored)
        elif self.scheduler is not None and not self._per_step_schedule:
            self.scheduler.step()
        if self.world.is_main:
            if keep:
                save_checkpoint(self.rundir.path / "best.pt", self._payload(full=False))
            save_checkpoint(self.rundir.path / "last.pt", self._payload(full=True))
            self.rundir.append_history(record)
        if self.observer:
            self.observer.epoch_end(record)
        return self.bad_epochs >= c.patience > 0

    def _finish(self, stopped_early: bool) -> TrainResult:
        best = load_checkpoint(self.rundir.path / "best.pt") if self.world.is_main else None
        best = distributed.broadcast_object(self.world, best)
        self.model.load_state_dict(best["state_dict"])
        test = evaluate(
            self.model, self.test_loader, amp_dtype=self.amp_dtype, flip_tta=self.config.tta
        )
        result = TrainResult(
            run_dir=self.rundir.path,
            arch=self.arch.name,
            best_epoch=self.best_epoch,
            epochs_run=self.epoch,
            stopped_early=stopped_early,
            test_loss=test.loss,
            test_acc=test.acc,
            train_s=self.train_s,
            device=str(self.device),
            test_images=len(self.dataset.test),
            history=self.history,
            test_acc_tta=test.acc_tta,
        )
        if self.world.is_main:
            self.rundir.write_test_predictions(
                test.predicted.tolist(),
                classes=list(self.dataset.classes),
                source=str(self.dataset.source.path),
                best_epoch=self.best_epoch,
            )
            self.rundir.write_metrics(result)
        distributed.shutdown(self.world)
        return result
