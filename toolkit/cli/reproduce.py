"""``rtk reproduce``: the whole paper, end to end, into one report folder."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli import executor as ex
from toolkit.cli.output import console, err_console, notice, print_json, styled, this_command


def reproduce(
    ctx: typer.Context,
    budget: str = typer.Option(
        "quick",
        help="quick (the fast recipe trimmed: the main job), fast (the fast recipe in full: "
        "hours on a CPU) or paper (the paper's recipe).",
    ),
    models: list[str] = typer.Option(
        None,
        "--models",
        help="Table I models to train \\[the paper's four; budgets fast and paper add "
        "mini-resnet-noskip].",
    ),
    out: Path = typer.Option(Path("report"), help="Folder for runs, figures and REPORT.md."),
    data: Path | None = typer.Option(None, help="Dataset path (see `rtk data info`)."),
    amp: bool | None = typer.Option(
        None,
        help="Train every model in mixed precision as `rtk train --amp`, or --no-amp for fp32 "
        "\\[the budget's recipe: fast and quick take bf16 where the CPU or GPU has it natively, "
        "paper fp32].",
        show_default=False,
    ),
    quiet: bool = typer.Option(False, help="No training progress."),
    as_json: bool = typer.Option(False, "--json", help="Print the verdicts as JSON."),
    executor: str = ex.EXECUTOR,
    ray_address: str | None = ex.RAY_ADDRESS,
    cpus_per_run: float | None = ex.CPUS_PER_RUN,
    gpus_per_run: float = ex.GPUS_PER_RUN,
) -> None:
    """Train, export, validate, bench and analyse Table I's models; write REPORT.md."""
    from analysis.report import table_one_architecture
    from analysis.reproduce import BUDGETS, budget_config, with_amp
    from analysis.reproduce import reproduce as run
    from toolkit.cli.train import RichObserver
    from toolkit.data import load_dataset
    from toolkit.errors import RtkError
    from toolkit.training.device import check_precision

    if budget not in BUDGETS:
        raise RtkError(f"unknown budget {budget!r}; choose one of: {', '.join(BUDGETS)}")
    chosen = BUDGETS[budget] if amp is None else with_amp(BUDGETS[budget], amp)
    ray = ex.ray_settings(executor, ray_address, cpus_per_run, gpus_per_run)
    for model in models or chosen.models:  # a refused precision, before anything is written
        check_precision(budget_config(table_one_architecture(model)[0].name, chosen))
    dataset = load_dataset(data, announce=notice)
    if not dataset.is_cifar10:  # Table I and the claims are CIFAR-10's figures
        _, height, width = dataset.input_size
        raise RtkError(
            f"{dataset.source.path} is not CIFAR-10 ({len(dataset.classes)} classes, "
            f"{width}x{height} images): rtk reproduce sets the paper's CIFAR-10 figures beside "
            "its runs; on your own data use rtk train, rtk report and rtk study depth"
        )
    notice(f"budget {budget}, recipe {chosen.recipe}: {chosen.reduction}")
    observer = None if quiet else RichObserver(err_console, progress=True)
    rerun = this_command(ctx)
    result = run(
        budget=chosen,
        models=models or list(chosen.models),
        out=out,
        dataset=dataset,
        say=notice,
        observer=observer,
        rerun=rerun,
        executor=ex.executor_for(ray, dataset.source.path, rerun),
    )
    if as_json:
        print_json(result)
        return
    for verdict in result.verdicts:
        console.print(styled((verdict.claim, "bold"), f": {verdict.verdict}"))
    console.print(styled("report: ", (result.report, "bold")))
