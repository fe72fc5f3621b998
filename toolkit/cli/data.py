"""``rtk data``: where the dataset is, what it holds, and how long it takes to load."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from toolkit.cli.output import console, notice, print_json
from toolkit.config import TrainConfig

app = typer.Typer(
    help="Inspect the data rtk trains on (CIFAR-10, or your own ImageFolder tree).",
    no_args_is_help=True,
)

DataOption = typer.Option(
    None,
    "--data",
    help="Dataset path (ImageFolder tree, cifar-10-batches-py/ or its .tar.gz). "
    "Default: $RTK_DATA, then ./data, then a download into ./data.",
)


@app.command("info")
def info(
    data: Path | None = DataOption,
    val_size: int = typer.Option(
        TrainConfig.val_size, "--val-size", help="Training images held out."
    ),
    split_seed: int = typer.Option(
        TrainConfig.split_seed, "--split-seed", help="Seed of the train/val split."
    ),
    image_size: int | None = typer.Option(
        None,
        help="Resize every image to NxN, as `rtk train --image-size N` does.",
        show_default=False,
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Show the dataset's source, format, cache, image size, split sizes and per-class counts
    (and whether its classes are imbalanced)."""
    from toolkit.data import describe, load_dataset
    from toolkit.data.dataset import IMBALANCED

    dataset = load_dataset(data, image_size=image_size, announce=notice)
    summary = describe(dataset, val_size=val_size, seed=split_seed)
    if as_json:
        print_json(summary)
        return
    overview = Table(title="CIFAR-10 data" if dataset.is_cifar10 else "Data", show_header=False)
    overview.add_column(style="bold")
    overview.add_column()
    cache = str(summary.cache_path) if summary.cache_path else "not written (cache dir unwritable)"
    overview.add_row("source", str(summary.source))
    overview.add_row("format", summary.format)
    overview.add_row("cache", f"{cache} ({'hit' if summary.from_cache else 'built now'})")
    overview.add_row("load time", f"{summary.load_s:.2f} s")
    overview.add_row(
        "split", f"train {summary.train:,} / val {summary.val:,} / test {summary.test:,}"
    )
    overview.add_row("split seed", str(summary.split_seed))
    _, height, width = summary.input_size
    resized = f", resized to {summary.image_size}" if summary.image_size else " as stored"
    converted = f" (converted from {', '.join(summary.converted)})" if summary.converted else ""
    overview.add_row("images", f"{width}x{height} RGB{resized}{converted}")
    overview.add_row(
        "classes",
        f"{len(summary.classes)}; largest/smallest: train {summary.train_imbalance:.2f}, "
        f"test {summary.test_imbalance:.2f}",
    )
    console.print(overview)
    if max(summary.train_imbalance, summary.test_imbalance) >= IMBALANCED:
        console.print(
            f"imbalanced classes (largest/smallest at least {IMBALANCED}): accuracy favours the "
            "large classes; read `rtk report classification` (recall, macro average) beside it"
        )
    per_class = Table(title="Images per class")
    for column in ("class", "train", "val", "test"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for row in summary.classes:
        per_class.add_row(row.name, f"{row.train:,}", f"{row.val:,}", f"{row.test:,}")
    console.print(per_class)


@app.command("clean")
def clean(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Delete rtk's decoded-dataset cache (one ~180 MB file per source; $RTK_CACHE_DIR)."""
    from toolkit.data import clear_cache

    result = clear_cache()
    if as_json:
        print_json(result)
        return
    if not result.removed:
        console.print(f"nothing to remove in {result.directory}")
        return
    for path in result.removed:
        console.print(f"removed {path}")
    console.print(f"freed {result.freed_bytes / 2**20:,.1f} MiB")
