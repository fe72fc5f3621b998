"""``rtk doctor``: what this machine can run, checked for real; the table a bug report quotes."""

from __future__ import annotations

import typer
from rich.table import Table

from toolkit.cli.output import console, print_json, styled

_STYLE = {"ok": "green", "missing": "yellow", "failed": "bold red"}


def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Check torch, CUDA, GPUs, cuDNN, each ONNX Runtime provider (run, not just listed),
    TensorRT, netron, a browser and the data; exit code 0 whatever is missing."""
    from analysis.doctor import diagnose

    report = diagnose()
    if as_json:
        print_json(report)
        return
    table = Table(
        title=f"rtk {report.rtk_version} on Python {report.python}, {report.platform}",
        show_lines=False,
    )
    table.add_column("check", style="bold")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    section = None
    for check in report.checks:
        if section is not None and check.section != section:
            table.add_section()
        section = check.section
        table.add_row(check.name, styled((check.status, _STYLE[check.status])), check.detail)
    console.print(table)
