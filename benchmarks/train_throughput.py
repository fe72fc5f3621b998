"""Training throughput on this CPU: rtk's trainer against a conventional loop, in one run.

1. rtk's ``Trainer`` (the fast recipe with its defaults: tensor-resident data, batch-wise
   augmentation, channels_last, foreach SGD; and again with ``--compile``) against a
   conventional PyTorch loop (torchvision ``ImageFolder`` + PIL transforms + ``DataLoader``
   with 2 workers) with the same model, batch, optimizer and augmentation, for the baseline CNN
   and the Mini-ResNet: target >= 2.0x.
2. ResNet-18's training images/s in rtk's trainer as a share of the fp32 ceiling (a 2048x2048
   matrix product) measured in the same run: 6 x MACs x images/s, target >= 75%.
3. Where the CPU has native bf16 (``rtk doctor`` says how rtk tells): each model's trainer in
   bf16 autocast against fp32, targets >= 1.9x ResNet-18, >= 1.7x baseline CNN, >= 1.5x
   Mini-ResNet; and ResNet-18 bf16 as a share of the bf16 ceiling (a bf16 matrix product),
   target >= 80%. Without native bf16 these rows are skipped, as rtk would refuse them.

The conventional loops run first, with glibc's default allocator as such a loop has; the
trainer then sets its own (``keep_freed_memory``: process-wide and for good, hence the order),
whose gain alone ``benchmarks/cpu_allocator.py`` measures.

The trainer runs two epochs of ``--images`` images from fresh weights and the figure is the
second epoch's images/s (the first pays for warm-up and, compiled, for compilation); the
conventional loop times as many images after ``--warmup`` untimed batches. Usage:
``python benchmarks/train_throughput.py [--data PATH] [--images N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from analysis.latency import cpu_model, matmul_gflops
from analysis.params import count_macs
from toolkit.data import load_dataset
from toolkit.data.sources import locate
from toolkit.data.transforms import MEAN, STD
from toolkit.models import create_model
from toolkit.training import TrainConfig, Trainer, make_config
from toolkit.training.device import cpu_bf16_support, keep_freed_memory
from toolkit.training.engine import param_groups


@dataclass(frozen=True)
class Row:
    arch: str
    side: str
    compiled: bool
    batch: int
    images: int
    images_per_s: float
    precision: str = "fp32"


BF16_TARGETS = {"resnet18": 1.9, "baseline-cnn": 1.7, "mini-resnet": 1.5}  # bf16 / fp32 img/s


def rtk_trainer(config: TrainConfig, data: Path | None, work: Path) -> tuple[float, str]:
    """Images/s of the second epoch of rtk's own trainer on ``config.train_subset`` images, and
    the precision the trainer says it trained in."""
    name = f"{config.arch}{'-compiled' if config.compile else ''}-amp-{config.amp}"
    result = Trainer(config, load_dataset(data), work / name).run()
    return result.history[-1].images_per_s, result.precision


class Brightness:
    """The paper's additive brightness jitter on a [0, 1] tensor (ColorJitter multiplies)."""

    def __init__(self, delta: float) -> None:
        self.delta = delta

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x + (torch.rand(()) * 2 - 1) * self.delta).clamp(0, 1)


def conventional(config: TrainConfig, root: Path, *, images: int, warmup: int) -> float:
    """Images/s of the loop most tutorials write, with the recipe's model, batch, optimizer."""
    torch.manual_seed(config.seed)
    model = create_model(config.arch, dropout=config.dropout)
    groups = param_groups(model, config.weight_decay, decay_norm_bias=config.decay_norm_bias)
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=config.translate, padding_mode="reflect"),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            Brightness(config.brightness),
            transforms.Normalize(MEAN, STD),
        ]
    )
    loader = DataLoader(
        datasets.ImageFolder(str(root / "train"), transform=transform),
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=2,
        drop_last=True,
    )
    model.train()
    batches = warmup + images // config.batch_size
    seen, start = 0, 0.0
    for index, (x, y) in zip(range(batches), loader, strict=False):
        if index == warmup:
            seen, start = 0, time.perf_counter()
        loss = F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--images", type=int, default=10_240, help="timed images per side")
    parser.add_argument("--resnet18-images", type=int, default=2_048)
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches, conventional")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    source = locate(args.data)
    if source.format != "imagefolder":
        raise SystemExit("the conventional side needs an ImageFolder tree: pass --data PATH")

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)

        def trainer_row(arch: str, images: int, *, compile_model: bool, amp: bool = False) -> Row:
            # No flip TTA: the trainer's closing test pass is not what is measured here.
            config = make_config(
                arch, "fast", epochs=2, val_size=0, train_subset=images, compile=compile_model,
                tta=False, amp=amp,
            )  # fmt: skip
            rate, precision = rtk_trainer(config, args.data, work)
            return Row(
                arch, "rtk trainer", compile_model, config.batch_size, images, rate, precision
            )

        for arch in ("baseline-cnn", "mini-resnet"):
            config = make_config(arch, "fast")
            theirs = conventional(config, source.path, images=args.images, warmup=args.warmup)
            rows.append(
                Row(arch, "conventional loop", False, config.batch_size, args.images, theirs)
            )
        allocator = keep_freed_memory()  # what the trainer would set on its own
        bf16 = cpu_bf16_support()
        # (compiled, bf16) per trainer row: eager and compiled in fp32, eager in bf16 if native.
        variants = [(False, False), (True, False), *([(False, True)] if bf16.native else [])]
        for arch in ("baseline-cnn", "mini-resnet"):
            rows += [trainer_row(arch, args.images, compile_model=c, amp=a) for c, a in variants]
        # Each ceiling before and after the ResNet-18 rows; bf16 only where it is native.
        dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if bf16.native else {})}
        ceilings = {name: [matmul_gflops(dtype=dtype)] for name, dtype in dtypes.items()}
        rows += [
            trainer_row("resnet18", args.resnet18_images, compile_model=c, amp=a)
            for c, a in variants
        ]
        for name, dtype in dtypes.items():
            ceilings[name].append(matmul_gflops(dtype=dtype))

    macs = count_macs(create_model("resnet18"))
    peak = {name: max(rates) for name, rates in ceilings.items()}
    print(f"machine: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"native bf16: {'yes' if bf16.native else 'no'} ({bf16.source})")
    print(f"data: {source.path}; fast recipe, fresh weights")
    print(f"allocator: glibc default (conventional loops), then {allocator} (rtk trainer)")
    header = f"{'model':<14} {'loop':<20} {'compiled':<9} {'precision':<9} {'batch':>5}"
    print(f"{header} {'images':>7} {'images/s':>9}")
    for r in rows:
        print(
            f"{r.arch:<14} {r.side:<20} {'yes' if r.compiled else 'no':<9} {r.precision:<9} "
            f"{r.batch:>5} {r.images:>7,} {r.images_per_s:>9,.1f}"
        )

    def trainer(arch: str, *, compiled: bool = False, precision: str = "fp32") -> float | None:
        return next(
            (
                r.images_per_s
                for r in rows
                if (r.arch, r.side, r.compiled, r.precision)
                == (arch, "rtk trainer", compiled, precision)
            ),
            None,
        )

    ratios: dict[str, float] = {}
    for arch in ("baseline-cnn", "mini-resnet"):
        theirs = next(r.images_per_s for r in rows if r.arch == arch and r.side != "rtk trainer")
        for compiled in (False, True):
            key = f"{arch}{' compiled' if compiled else ''}"
            ratios[key] = (trainer(arch, compiled=compiled) or 0.0) / theirs
            verdict = "met" if ratios[key] >= 2.0 else "not met"
            print(f"{key}: rtk / conventional = {ratios[key]:.2f}x (target >= 2.0x: {verdict})")
    bf16_ratios: dict[str, float] = {}
    for arch, target in BF16_TARGETS.items():
        fast = trainer(arch, precision="bf16")
        if fast is None:
            print(f"{arch}: bf16 not measured (no native bf16 here)")
            continue
        bf16_ratios[arch] = fast / (trainer(arch) or 1.0)
        verdict = "met" if bf16_ratios[arch] >= target else "not met"
        print(
            f"{arch}: rtk trainer bf16 / fp32 = {bf16_ratios[arch]:.2f}x "
            f"(target >= {target}x: {verdict})"
        )
    for name, rates in ceilings.items():
        print(f"{name} ceiling: {rates[0]:.0f} GFLOP/s before, {rates[1]:.0f} after (higher used)")
    shares: dict[str, float] = {}
    for r in rows:
        if r.arch == "resnet18":
            key = f"resnet18 {r.precision}{' compiled' if r.compiled else ''}"
            gflops = 6 * macs * r.images_per_s / 1e9
            shares[key] = gflops / peak[r.precision]
            target = 0.80 if r.precision == "bf16" else 0.75
            verdict = "met" if shares[key] >= target else "not met"
            print(
                f"{key} trains at {gflops:.0f} GFLOP/s = {shares[key]:.0%} of the "
                f"{r.precision} ceiling (target >= {target:.0%}: {verdict})"
            )
    if args.json:
        report = {
            "machine": cpu_model(),
            "allocator": allocator,
            "rows": [asdict(r) for r in rows],
            "native_bf16": bf16.native,
            "ratios": ratios,
            "bf16_over_fp32": bf16_ratios,
            "ceilings_gflops": ceilings,
            "resnet18_ceiling_shares": shares,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
