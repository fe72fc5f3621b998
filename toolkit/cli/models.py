"""``rtk models``: the registered architectures, their size and cost, beside published figures."""

from __future__ import annotations

import typer
from rich.table import Table

from toolkit.cli.output import console, print_json, styled


def models(
    classes: int = typer.Option(
        10, "--classes", help="Size the classifier for this many classes (your dataset's)."
    ),
    image_size: int = typer.Option(32, help="Count MACs for one image of this side."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List every architecture: parameters, MACs per image (CIFAR-10's 32x32 unless
    --image-size), depth, and the figures its source publishes (the paper's Table I, He et al.
    2015, the seeds); --classes and --image-size give the counts for your own dataset."""
    from analysis.params import summarize_all
    from toolkit.config import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE
    from toolkit.errors import RtkError
    from toolkit.models import GROUPS, architectures, input_problem
    from toolkit.training.checkpoint import MAX_CLASSES

    if not 2 <= classes <= MAX_CLASSES:
        raise RtkError(f"--classes must be in [2, {MAX_CLASSES}], got {classes}")
    if not MIN_IMAGE_SIDE <= image_size <= MAX_IMAGE_SIDE:
        raise RtkError(
            f"--image-size must be in [{MIN_IMAGE_SIDE}, {MAX_IMAGE_SIDE}], got {image_size}"
        )
    for arch in architectures():
        problem = input_problem(arch, num_classes=classes, input_size=[3, image_size, image_size])
        if problem is not None:
            raise RtkError(
                f"{arch.name} cannot take {image_size}x{image_size} images ({problem}); pass a "
                "larger --image-size"
            )
    summaries = summarize_all(num_classes=classes, input_size=(3, image_size, image_size))
    if as_json:
        print_json(summaries)
        return
    cifar = classes == 10 and image_size == 32
    shape = f"{classes} classes, one {image_size}x{image_size} image"
    table = Table(
        title=f"Architectures (MACs: {shape}, forward)",
        caption="=: the count equals the one its source's structure gives"
        if cifar
        else "published figures are for CIFAR-10 (10 classes, 32x32)",
    )
    # Figures never wrap; the text folds into whatever width is left.
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("parameters", justify="right", no_wrap=True)
    table.add_column("MACs", justify="right", no_wrap=True)
    table.add_column("depth", justify="right", no_wrap=True)
    table.add_column("published", justify="right", no_wrap=True)  # test accuracy
    table.add_column("description (source of the published figures, or group)", overflow="fold")
    for s in summaries:
        mark: tuple[str, str] = ("", "")
        if s.published_params is not None and cifar:
            mark = (" =", "green") if s.params == s.published_params else (" !", "red")
        acc = "-" if s.published_test_acc is None else f"{s.published_test_acc:.2%}"
        table.add_row(
            s.name,
            styled(f"{s.params:,}", mark),
            f"{s.macs / 1e6:,.1f} M",
            str(s.depth),
            acc,
            f"{s.description} ({s.published_source or s.group})",
        )
    console.print(table)
    console.print("groups: " + "; ".join(f"{k}: {v}" for k, v in GROUPS.items()))
