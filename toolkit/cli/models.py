"""``rtk models``: the registered architectures, their size and cost, beside published figures."""

from __future__ import annotations

import typer
from rich.table import Table

from toolkit.cli.output import console, print_json, styled


def models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List every architecture: parameters, MACs per 32x32 image, depth, and the figures its
    source publishes (the paper's Table I, He et al. 2015, the seeds)."""
    from analysis.params import summarize_all
    from toolkit.models import GROUPS

    summaries = summarize_all()
    if as_json:
        print_json(summaries)
        return
    table = Table(
        title="Architectures (MACs: one 32x32 image, forward)",
        caption="=: the count equals the one its source's structure gives",
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
        if s.published_params is not None:
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
