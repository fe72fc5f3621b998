"""``rtk models``: the registered architectures, their size and cost."""

from __future__ import annotations

import typer
from rich.table import Table

from toolkit.cli.output import console, print_json


def models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the paper's architectures: parameters (vs the paper's count), MACs per 32x32 image."""
    from analysis.params import summarize_all

    summaries = summarize_all()
    if as_json:
        print_json(summaries)
        return
    table = Table(title="Architectures (MACs: one 32x32 image, forward)")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("parameters", justify="right")
    table.add_column("paper", justify="right")
    table.add_column("MACs", justify="right")
    table.add_column("layers", justify="right")
    table.add_column("description")
    for s in summaries:
        match = "[green]=[/]" if s.params == s.paper_params else "[red]![/]"
        table.add_row(
            s.name,
            f"{s.params:,}",
            f"{s.paper_params:,} {match}",
            f"{s.macs / 1e6:,.1f} M",
            str(s.weight_layers),
            s.description,
        )
    console.print(table)
