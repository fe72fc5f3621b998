"""The training loop: one run of one architecture, resumable at every epoch boundary.

Laid out in the order it runs: set-up (device, seed, data, model, optimiser), the epoch loop
(train, validate, schedule, checkpoint, stop early), then the test of the best weights.
Nothing here prints: progress goes to an ``Observer`` that the CLI renders.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.config import ConfigError, TrainConfig, check_dataset
from toolkit.data import Augment, Dataset, Normalization, TensorLoader
from toolkit.errors import RtkError
from toolkit.fileio import FolderLock
from toolkit.models import (
    Classifier,
    WeightLayer,
    batched_logits,
    get_architecture,
    initial_model,
)
from toolkit.models.inference import autocast
from toolkit.training import distributed
from toolkit.training.checkpoint import describe_model
from toolkit.training.device import (
    keep_freed_memory,
    peak_memory_mb,
    resolve_device,
    resolve_precision,
    strict_fp32,
)
from toolkit.training.records import TEST_PRECISION, EpochRecord, TrainResult
from toolkit.training.rundir import RunDir, resume_command

PROGRESS_EVERY = 10  # batches between progress reports (each one syncs the device)


class NonFiniteLossError(RtkError):
    """The loss became NaN or infinite; the last good checkpoints are kept."""


class OutOfMemory(RtkError):
    """The GPU ran out of memory; a smaller batch fits."""


class TrainingInterrupted(RtkError):
    """Ctrl-C: ``last.pt`` holds the last finished epoch."""

    exit_code = 130


class Observer(Protocol):
    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None: ...

    def batch_progress(self, done: int, loss: float, acc: float, images_per_s: float) -> None: ...

    def epoch_end(self, record: EpochRecord) -> None: ...

    def close(self) -> None:
        """The run ended (finished, failed or interrupted): write what is buffered. Called
        while the run folder is still locked, so nothing is written after another process
        may take it."""


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


class GradNorms:
    """Each weight layer's gradient L2 norm, averaged over an epoch's last ``batches`` batches
    (summed on the device, read once at the end: no host sync per step)."""

    def __init__(self, layers: list[WeightLayer], *, batches: int, of: int) -> None:
        self.layers = layers
        self.first = of - min(batches, of)
        self.sums: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def wants(self, index: int) -> bool:
        return index >= self.first

    def add(self) -> None:
        grads = [layer.module.weight.grad for layer in self.layers]
        norms = torch.stack([torch.linalg.vector_norm(g) for g in grads]).double()
        # A step the fp16 scaler skips has inf gradients: it counts for nothing (no host sync).
        finite = torch.isfinite(norms).all()
        norms = torch.where(finite, norms, torch.zeros_like(norms))
        self.sums = norms if self.sums is None else self.sums + norms
        self.count = finite.long() if self.count is None else self.count + finite.long()

    def means(self) -> dict[str, float]:
        if self.sums is None or self.count is None:
            return {layer.name: 0.0 for layer in self.layers}
        means = (self.sums / self.count.clamp(min=1)).tolist()
        return {layer.name: n for layer, n in zip(self.layers, means, strict=True)}


@contextmanager
def _out_of_memory_as_error(batch_size: int) -> Iterator[None]:
    try:
        yield
    except torch.OutOfMemoryError:
        raise OutOfMemory(
            f"the GPU ran out of memory at batch size {batch_size} per process; pass a smaller "
            "--batch-size (the recipe's lr scales with it) or add --amp"
        ) from None


@contextmanager
def _interrupt_as_error(rundir: RunDir, data: Path) -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted; {rundir.last} holds the last finished epoch: "
            f"resume with `{resume_command(rundir.path, data)}`"
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
        if resume:  # a wrong --resume path fails before anything is built
            self.rundir = RunDir.resumable(run_path)
        self.device = distributed.device_for(self.world, device_type)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
            self.allocator = "torch CUDA caching allocator"
        else:
            self.allocator = keep_freed_memory()
        self.precision = resolve_precision(config.amp, self.device, resuming=resume)
        self.amp_dtype = self.precision.dtype
        self.observer = observer if self.world.is_main else None

        if dataset.image_size != config.image_size:  # what config.json would record, untrue
            raise ConfigError(
                f"the run resizes images to {config.image_size} but the dataset was decoded at "
                f"{dataset.image_size or 'its stored size'}; load it with "
                f"load_dataset(image_size={config.image_size})"
            )
        check_dataset(  # a run started by the library, not the CLI, is checked as well
            config,
            classes=len(dataset.classes),
            train_images=len(dataset.train),
            input_size=dataset.input_size,
        )
        arch = get_architecture(config.arch)
        self.arch = arch
        self.model_kwargs = arch.kwargs_for(
            num_classes=len(dataset.classes), dropout=config.dropout
        )
        self.model: Classifier = initial_model(  # the same initial weights on every rank
            arch.model_class,
            self.model_kwargs,
            seed=config.seed,
            init=config.init,
            zero_init_residual=config.zero_init_residual,
        ).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.layers = self.model.weight_layers()
        if self.world.distributed:  # the same weights, but each rank its own dropout masks
            torch.manual_seed(config.seed + self.world.rank)
        wrapped = distributed.wrap(self.world, self.model, self.device)
        self.net: nn.Module = torch.compile(wrapped) if config.compile else wrapped

        self.train_loader, self.val_loader, self.test_loader = self._loaders()
        if not resume:  # after every check above: a refused run leaves no folder behind
            # Only rank 0 writes; the others just know the path.
            self.rundir = RunDir.create(run_path) if self.world.is_main else RunDir(run_path)
        # One writer per run folder: a second `--resume` of a run in training is refused.
        self.lock = FolderLock(run_path).acquire() if self.world.is_main else None
        try:
            if self.world.is_main and not resume:  # started by another process since the check?
                RunDir.check_new(run_path)
            self._set_up(resume)
        except BaseException:
            self.release()
            raise

    def _set_up(self, resume: bool) -> None:
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
        self.compiled = False  # torch.compile compiles on this process's first training step
        if resume and self.rundir.started:  # else it was killed before its first checkpoint
            self._restore(self.rundir.load_last())

    def release(self) -> None:
        """Let other processes write the run folder again (``run`` does, when it ends)."""
        if self.lock is not None:
            self.lock.release()

    # --- set-up ---------------------------------------------------------------------------

    def _loaders(self) -> tuple[TensorLoader, TensorLoader | None, TensorLoader]:
        c = self.config
        train, val = self.dataset.split(val_size=c.val_size, seed=c.split_seed)
        if c.train_subset is not None and c.train_subset < len(train):
            # A seeded random subset, not the first N, so every class is represented.
            generator = torch.Generator().manual_seed(c.split_seed)
            train = train.subset(torch.randperm(len(train), generator=generator)[: c.train_subset])
        self.normalization = self.dataset.normalization(c.normalize, train)
        common = {
            "device": self.device,
            "channels_last": c.channels_last,
            "seed": c.seed,
            "normalization": self.normalization,
        }
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

    def _precision(self) -> dict[str, Any]:
        """What each phase computes in, and why, for config.json."""
        return {
            "train": self.precision.name,
            "validation": self.precision.name,
            "test": TEST_PRECISION,
            "amp_setting": self.config.amp,
            "decided_by": self.precision.why,
        }

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
            "input_size": self.dataset.input_size,
            "image_size": self.dataset.image_size,
            "converted_to_rgb": list(self.dataset.converted),
            "normalization": self.normalization.record(),
        }

    # --- checkpoints ----------------------------------------------------------------------

    def _rng_states(self) -> dict[str, Any]:
        """Every rank's generator states (a collective: call it on every rank). Each rank keeps
        its CPU state and its own GPU's, so a resume elsewhere never indexes a missing GPU."""
        own = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        return {"torch": own["torch"], "ranks": distributed.gather_object(self.world, own)}

    def _payload(self, *, full: bool, rng: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = describe_model(
            arch=self.arch.name,
            model_class=self.arch.model_class,
            model_kwargs=self.model_kwargs,
            classes=list(self.dataset.classes),
            normalization=self.normalization,
            input_size=self.dataset.input_size,
        )
        payload.update(
            epoch=self.epoch,
            state_dict=_on_cpu(self.model.state_dict()),
            config=self.config.to_dict(),
            metrics=asdict(self.history[-1]) if self.history else {},
            best_epoch=self.best_epoch,
            # best.pt's name says "best", but a recipe that keeps the final weights (a schedule
            # decaying to zero) stores the last epoch's there: say which, in the file itself.
            kept="last epoch" if self.config.select == "last" else "lowest validation loss",
            data=self._data_facts(),
            precision=self.precision.name,  # of training; a resume keeps it
        )
        if full:
            payload.update(
                optimizer=_on_cpu(self.optimizer.state_dict()),
                scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
                scaler=self.scaler.state_dict(),
                early_stopping={
                    "best_val_loss": self.best_val_loss,
                    "best_epoch": self.best_epoch,
                    "bad_epochs": self.bad_epochs,
                },
                history=[asdict(record) for record in self.history],
                train_s=self.train_s,
                rng=rng,
            )
        return payload

    def _restore(self, payload: dict[str, Any]) -> None:
        if payload.get("arch") != self.arch.name or "optimizer" not in payload:
            raise ConfigError(f"{self.rundir.last} is not a resumable {self.arch.name} checkpoint")
        # The run goes on with the normalisation it started with, as its checkpoint records it
        # (a run of a 10-class dataset from before rtk measured other datasets' statistics
        # was normalised as the paper's, whatever `auto` now decides for it).
        recorded = Normalization.from_record(payload["normalization"])
        if (recorded.mean, recorded.std) != (self.normalization.mean, self.normalization.std):
            self.normalization = recorded
            for loader in (self.train_loader, self.val_loader, self.test_loader):
                if loader is not None:
                    loader.normalization = recorded
        stored, current = payload.get("data", {}), self._data_facts()
        # Only what the run recorded: a run from before a fact was recorded resumes as well.
        if differing := [k for k, v in current.items() if k in stored and stored[k] != v]:
            raise ConfigError(
                f"{self.rundir.path} was trained on {stored.get('source')} "
                f"({stored.get('train_images')} training images); this data is "
                f"{current['source']} ({current['train_images']}), which differs in "
                f"{', '.join(differing)}: pass the run's own --data"
            )
        stored_precision = payload.get("precision")
        if stored_precision is not None and stored_precision != self.precision.name:
            raise ConfigError(
                f"{self.rundir.path} trained in {stored_precision} but would go on in "
                f"{self.precision.name} here ({self.precision.why}); resume it on a machine "
                f"that trains in {stored_precision}, so its history stays one run's"
            )
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scheduler is not None and payload["scheduler"] is not None:
            self.scheduler.load_state_dict(payload["scheduler"])
        if self.scaler.is_enabled() and payload["scaler"]:  # empty when saved under bf16
            self.scaler.load_state_dict(payload["scaler"])
        stopping = payload["early_stopping"]
        self.best_val_loss = stopping["best_val_loss"]
        self.best_epoch = stopping["best_epoch"]
        self.bad_epochs = stopping["bad_epochs"]
        self.history = [EpochRecord(**row) for row in payload["history"]]
        self.epoch = payload["epoch"]
        self.train_s = payload["train_s"]
        ranks = payload["rng"].get("ranks") or []
        # Another world size or an older checkpoint: rank 0's CPU state, fresh GPU streams.
        own = ranks[self.world.rank] if len(ranks) == self.world.size else {}
        torch.set_rng_state(own.get("torch", payload["rng"]["torch"]))
        if own.get("cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda"], self.device)

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> TrainResult:
        try:
            return self._run()
        finally:
            try:
                if self.observer:
                    self.observer.close()
            finally:
                self.release()

    def _run(self) -> TrainResult:
        c = self.config
        stopped_early = self.bad_epochs >= c.patience > 0
        trained = self.epoch > 0 and (stopped_early or self.epoch >= c.epochs)
        # Refuse before touching any file: a finished run keeps its metrics.json and config.
        if trained and self.rundir.finished:
            why = "stopped early" if stopped_early else f"trained all {c.epochs} epochs"
            raise ConfigError(
                f"{self.rundir.path} already {why} (epoch {self.epoch}); nothing to resume"
                + ("" if stopped_early else ": pass a larger --epochs to train further")
            )
        rng = self._rng_states() if self.epoch == 0 else None
        if self.world.is_main:
            self.rundir.remove_leftovers()
            self.rundir.write_config(
                c,
                device=str(self.device),
                world_size=self.world.size,
                data=self._data_facts(),
                allocator=self.allocator,
                precision=self._precision(),
            )
            if self.epoch == 0:
                self.rundir.save_last(self._payload(full=True, rng=rng))
            self.rundir.write_history(self.history)
            # Stale while training further; removed last, so a write refused above (a full
            # disk, a folder where a file belongs) leaves the finished result as it was.
            self.rundir.clear_metrics()
        try:
            with (
                _interrupt_as_error(self.rundir, self.dataset.source.path),
                _out_of_memory_as_error(c.batch_size),
            ):
                # A run killed after its last epoch goes straight to the test of its best weights.
                while self.epoch < c.epochs and not stopped_early:
                    record = self._train_epoch()
                    stopped_early = self._end_epoch(record)
                return self._finish(stopped_early)
        finally:  # also on Ctrl-C and a NaN stop: the process group never outlives the run
            distributed.shutdown(self.world)

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
        grad_norms = GradNorms(self.layers, batches=c.grad_norm_batches, of=len(loader))
        compiling = c.compile and not self.compiled  # this process's first step compiles
        start = time.perf_counter()
        rated_from, rated_seen, compile_s = start, 0, 0.0
        for index, (images, labels) in enumerate(loader):
            with autocast(self.device, self.amp_dtype):
                logits = self.net(images)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=c.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if grad_norms.wants(index):
                self.scaler.unscale_(self.optimizer)  # norms of the true, unscaled gradients
                grad_norms.add()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self._per_step_schedule:
                self.scheduler.step()
            loss_sum += loss.detach().double() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            if compiling and index == 0:  # time the compilation apart from the epoch's rate
                loss.item()  # waits for the step
                compile_s = time.perf_counter() - start
                rated_from, rated_seen, self.compiled = time.perf_counter(), seen, True
            if (index + 1) % PROGRESS_EVERY == 0 or index + 1 == len(loader):
                # Rank 0's loss decides for all ranks, so no rank stops alone and deadlocks.
                mean_loss = distributed.broadcast_object(self.world, loss_sum.item() / seen)
                self._check_finite(mean_loss, f"training loss in epoch {epoch} (batch {index + 1})")
                if self.observer:
                    rate = seen * self.world.size / (time.perf_counter() - start)
                    self.observer.batch_progress(index + 1, mean_loss, correct.item() / seen, rate)
        rated_s, rated = time.perf_counter() - rated_from, seen - rated_seen
        if not rated:  # a one-batch epoch: nothing ran after the compilation
            rated_s, rated = time.perf_counter() - start, seen
        distributed.sync_buffers(self.world, self.model)
        # The unwrapped model: after sync_buffers every rank holds the same weights, and DDP's
        # per-forward collectives have no place in evaluation.
        val = (
            evaluate(self.model, self.val_loader, amp_dtype=self.amp_dtype)
            if self.val_loader is not None
            else None
        )
        return EpochRecord(
            epoch=epoch,
            train_loss=loss_sum.item() / seen,
            train_acc=correct.item() / seen,
            val_loss=val.loss if val else None,
            val_acc=val.acc if val else None,
            lr=lr,
            epoch_s=time.perf_counter() - start,
            images_per_s=rated * self.world.size / rated_s,
            peak_mem_mb=peak_memory_mb(self.device),
            grad_norms=grad_norms.means(),
            compile_s=compile_s,
        )

    def _check_finite(self, loss: float, what: str) -> None:
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"the {what} became {loss}; the run stopped and {self.rundir.path} keeps the "
                "last good checkpoints: lower --lr or check the data"
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
        self._check_finite(monitored, f"monitored loss in epoch {record.epoch}")
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
        rng = self._rng_states()
        if self.world.is_main:
            if keep:
                self.rundir.save_best(self._payload(full=False))
            self.rundir.save_last(self._payload(full=True, rng=rng))
            self.rundir.append_history(record)
        if self.observer:
            self.observer.epoch_end(record)
        return self.bad_epochs >= c.patience > 0

    def _finish(self, stopped_early: bool) -> TrainResult:
        best = self.rundir.load_best() if self.world.is_main else None
        best = distributed.broadcast_object(self.world, best)
        self.model.load_state_dict(best["state_dict"])
        with strict_fp32():  # the reported accuracy never depends on the host's bf16 or TF32
            test = evaluate(self.model, self.test_loader, flip_tta=self.config.tta)
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
            precision=self.precision.name,
            test_precision=TEST_PRECISION,
        )
        if self.world.is_main:
            self.rundir.write_test_predictions(
                test.predicted.tolist(),
                classes=list(self.dataset.classes),
                source=str(self.dataset.source.path),
                best_epoch=self.best_epoch,
            )
            self.rundir.write_metrics(result)
        return result


def _on_cpu(state: Any) -> Any:
    """A copy of ``state`` with every tensor on the CPU, so that a checkpoint written on a GPU
    loads with plain ``torch.load(path, weights_only=True)`` on a machine without one."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: _on_cpu(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_on_cpu(v) for v in state)
    return state
