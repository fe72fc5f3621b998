"""``rtk study``: experiments beyond the paper, each into one resumable folder with a report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from toolkit.cli import executor as ex
from toolkit.cli.output import console, err_console, notice, print_json, styled, this_command

app = typer.Typer(help="Experiments beyond the paper (depth).", no_args_is_help=True)


@app.command("depth")
def depth(
    ctx: typer.Context,
    budget: str = typer.Option(
        "quick",
        help="quick (minutes: a first look) or full (10 epochs each on 30,000 images: "
        "over an hour on 2 CPU cores).",
    ),
    depths: list[int] = typer.Option(
        None, "--depth", help="Depths of He et al.'s CIFAR family to train [20, 32, 56]."
    ),
    out: Path = typer.Option(Path("study-depth"), help="Folder for runs, figure and DEPTH.md."),
    data: Path | None = typer.Option(None, help="Dataset path (see `rtk data info`)."),
    epochs: int | None = typer.Option(None, help="Epochs per network \\[the budget's]."),
    train_subset: int | None = typer.Option(
        None, help="Train on a seeded subset of N images \\[the budget's]."
    ),
    val_size: int | None = typer.Option(None, help="Validation images \\[the budget's]."),
    image_size: int | None = typer.Option(
        None,
        help="Resize every image of your own dataset to NxN (as `rtk train --image-size`).",
        show_default=False,
    ),
    quiet: bool = typer.Option(False, help="No training progress."),
    as_json: bool = typer.Option(False, "--json", help="Print the study as JSON."),
    executor: str = ex.EXECUTOR,
    ray_address: str | None = ex.RAY_ADDRESS,
    cpus_per_run: float | None = ex.CPUS_PER_RUN,
    gpus_per_run: float = ex.GPUS_PER_RUN,
) -> None:
    """Plain against residual networks at several depths (He et al.'s Fig. 6): training and
    validation error per epoch, test error, and a verdict on degradation. Rerun to resume."""
    from analysis.depth import (
        DEFAULT_DEPTHS,
        DEPTH_BUDGETS,
        DEPTH_COLUMNS,
        budget_changes,
        depth_cells,
        depth_study,
        study_configs,
    )
    from toolkit.cli.train import RichObserver
    from toolkit.data import load_dataset
    from toolkit.errors import RtkError

    if budget not in DEPTH_BUDGETS:
        raise RtkError(f"unknown budget {budget!r}; choose one of: {', '.join(DEPTH_BUDGETS)}")
    chosen = DEPTH_BUDGETS[budget]
    ray = ex.ray_settings(executor, ray_address, cpus_per_run, gpus_per_run)
    depths = depths or list(DEFAULT_DEPTHS)
    overrides = {
        "epochs": epochs,
        "train_subset": train_subset,
        "val_size": val_size,
        "image_size": image_size,
    }
    configs = study_configs(chosen, depths, overrides)  # a bad depth or setting fails first
    changed = budget_changes(chosen, next(iter(configs.values())))
    notice(
        f"depth study, budget {budget}: {chosen.reduction}"
        + (f"; overridden here: {changed}" if changed else "")
    )
    dataset = load_dataset(data, image_size=image_size, announce=notice)
    rerun = this_command(ctx)
    study = depth_study(
        budget=chosen,
        depths=depths,
        out=out,
        dataset=dataset,
        overrides=overrides,
        say=notice,
        observer=None if quiet else RichObserver(err_console, progress=True),
        rerun=rerun,
        executor=ex.executor_for(ray, dataset.source.path, rerun),
    )
    if as_json:
        print_json(study)
        return
    table = Table(title=f"Depth study ({study.budget} budget, {study.recipe} recipe)")
    for column in DEPTH_COLUMNS:
        table.add_column(column, justify="left" if column == "network" else "right")
    for r in sorted(study.runs, key=lambda r: (r.depth, r.skip)):
        table.add_row(*depth_cells(r))
    console.print(table)
    console.print(styled((study.verdict.claim, "bold"), f": {study.verdict.verdict}"))
    console.print(f"{study.verdict.evidence}")
    console.print(styled("report: ", (study.report, "bold"), "  figure: ", (study.figure, "bold")))
