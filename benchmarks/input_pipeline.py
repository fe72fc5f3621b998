"""Input-pipeline throughput: rtk's tensor loader vs a conventional torchvision DataLoader.

Both sides produce the paper's training batches (shuffled, random flip, brightness jitter,
scaled to [-1, 1], batch 64) and feed no model, so the figure is the pipeline alone. They run
one after the other in the same process, so the ratio compares like with like on a shared
machine. Usage: ``python benchmarks/input_pipeline.py [--data PATH] [--batches N]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from toolkit.data import PAPER_AUGMENT, TensorLoader, load_dataset
from toolkit.data.sources import locate


def images_per_s(loader: object, max_batches: int, warmup: int) -> tuple[float, int]:
    """Throughput over ``max_batches`` batches after ``warmup`` untimed ones."""
    iterator = iter(loader)  # type: ignore[call-overload]
    for _ in range(warmup):
        next(iterator)
    count, start = 0, time.perf_counter()
    for _, (images, _labels) in zip(range(max_batches), iterator, strict=False):
        count += images.shape[0]
    return count / (time.perf_counter() - start), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=300, help="timed batches, conventional")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    source = locate(args.data)
    if source.format != "imagefolder":
        raise SystemExit("the conventional side needs an ImageFolder tree: pass --data PATH")
    dataset = load_dataset(args.data)
    train, _ = dataset.split()

    ours = TensorLoader(train, batch_size=args.batch_size, shuffle=True, augment=PAPER_AUGMENT)
    ours_rate, ours_n = images_per_s(ours, max_batches=len(ours) - 1, warmup=1)

    conventional = DataLoader(
        datasets.ImageFolder(
            str(source.path / "train"),
            transform=transforms.Compose(
                [
                    transforms.RandomHorizontalFlip(),
                    transforms.ColorJitter(brightness=0.1),
                    transforms.ToTensor(),
                    transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                ]
            ),
        ),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=False,
    )
    theirs_rate, theirs_n = images_per_s(conventional, max_batches=args.batches, warmup=5)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"data: {source.path} ({source.format}), batch {args.batch_size}")
    print(f"{'pipeline':<44} {'images':>8} {'images/s':>10}")
    print(f"{'rtk TensorLoader (shuffle+flip+bright+norm)':<44} {ours_n:>8,} {ours_rate:>10,.0f}")
    label = f"torchvision DataLoader, PIL, {args.workers} workers"
    print(f"{label:<44} {theirs_n:>8,} {theirs_rate:>10,.0f}")
    print(f"ratio: {ours_rate / theirs_rate:.1f}x")


if __name__ == "__main__":
    main()
