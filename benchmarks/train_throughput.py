"""Training throughput on this CPU: rtk's trainer against a conventional loop, in one run.

1. rtk's ``Trainer`` (the fast recipe with its defaults: tensor-resident data, batch-wise
   augmentation, channels_last, foreach SGD; and again with ``--compile``) against a
   conventional PyTorch loop (torchvision ``ImageFolder`` + PIL transforms + ``DataLoader``
   with 2 workers) with the same model, batch, optimizer and augmentation, for the baseline CNN
   and the Mini-ResNet: target >= 2.0x.
2. ResNet-18's training images/s in rtk's trainer as a share of the fp32 ceiling (a 2048x2048
   matrix product) measured in the same run: 6 x MACs x images/s, target >= 75%.

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

from analysis.latency import cpu_model, fp32_ceiling_gflops
from analysis.params import count_macs
from toolkit.data import load_dataset
from toolkit.data.sources import locate
from toolkit.data.transforms import MEAN, STD
from toolkit.models import create_model
from toolkit.training import TrainConfig, Trainer, make_config
from toolkit.training.device import keep_freed_memory
from toolkit.training.engine import param_groups


@dataclass(frozen=True)
class Row:
    arch: str
    side: str
    compiled: bool
    batch: int
    images: int
    images_per_s: float


def rtk_trainer(config: TrainConfig, data: Path | None, work: Path) -> float:
    """Images/s of the second epoch of rtk's own trainer on ``config.train_subset`` images."""
    name = f"{config.arch}-compiled" if config.compile else config.arch
    result = Trainer(config, load_dataset(data), work / name).run()
    return result.history[-1].images_per_s


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

        def trainer_row(arch: str, images: int, *, compile_model: bool) -> Row:
            # No flip TTA: the trainer's closing test pass is not what is measured here.
            config = make_config(
                arch, "fast", epochs=2, val_size=0, train_subset=images, compile=compile_model,
                tta=False,
            )  # fmt: skip
            rate = rtk_trainer(config, args.data, work)
            return Row(arch, "rtk trainer", compile_model, config.batch_size, images, rate)

        for arch in ("baseline-cnn", "mini-resnet"):
            config = make_config(arch, "fast")
            theirs = conventional(config, source.path, images=args.images, warmup=args.warmup)
            rows.append(
                Row(arch, "conventional loop", False, config.batch_size, args.images, theirs)
            )
        allocator = keep_freed_memory()  # what the trainer would set on its own
        for arch in ("baseline-cnn", "mini-resnet"):
            rows += [trainer_row(arch, args.images, compile_model=c) for c in (False, True)]
        ceiling = fp32_ceiling_gflops()
        rows += [
            trainer_row("resnet18", args.resnet18_images, compile_model=c) for c in (False, True)
        ]
        ceiling_after = fp32_ceiling_gflops()

    macs = count_macs(create_model("resnet18"))
    peak = max(ceiling, ceiling_after)
    print(f"machine: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"data: {source.path}; fast recipe, fresh weights")
    print(f"allocator: glibc default (conventional loops), then {allocator} (rtk trainer)")
    print(f"{'model':<14} {'loop':<20} {'compiled':<9} {'batch':>5} {'images':>7} {'images/s':>9}")
    for r in rows:
        print(
            f"{r.arch:<14} {r.side:<20} {'yes' if r.compiled else 'no':<9} {r.batch:>5} "
            f"{r.images:>7,} {r.images_per_s:>9,.1f}"
        )
    ratios: dict[str, float] = {}
    for arch in ("baseline-cnn", "mini-resnet"):
        theirs = next(r.images_per_s for r in rows if r.arch == arch and r.side != "rtk trainer")
        for r in rows:
            if r.arch == arch and r.side == "rtk trainer":
                key = f"{arch}{' compiled' if r.compiled else ''}"
                ratios[key] = r.images_per_s / theirs
                verdict = "met" if ratios[key] >= 2.0 else "not met"
                print(f"{key}: rtk / conventional = {ratios[key]:.2f}x (target >= 2.0x: {verdict})")
    print(f"fp32 ceiling: {ceiling:.0f} GFLOP/s before, {ceiling_after:.0f} after (higher used)")
    shares: dict[str, float] = {}
    for r in rows:
        if r.arch == "resnet18":
            key = f"resnet18{' compiled' if r.compiled else ''}"
            gflops = 6 * macs * r.images_per_s / 1e9
            shares[key] = gflops / peak
            verdict = "met" if shares[key] >= 0.75 else "not met"
            print(
                f"{key} trains at {gflops:.0f} GFLOP/s = {shares[key]:.0%} of the ceiling "
                f"(target >= 75%: {verdict})"
            )
    if args.json:
        report = {
            "machine": cpu_model(),
            "allocator": allocator,
            "rows": [asdict(r) for r in rows],
            "ratios": ratios,
            "fp32_ceiling_gflops": [ceiling, ceiling_after],
            "resnet18_ceiling_shares": shares,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
