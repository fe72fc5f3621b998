"""The one place that writes to the terminal: a Console for results and one for errors."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console, ConsoleDimensions

# Wide enough for any table rtk prints: Rich lays tables out to their content, not to this.
LOG_WIDTH = 10_000


class _Console(Console):
    """Rich assumes 80 columns where there is no terminal (CI logs, pipes) and squeezes
    tables into them, cutting numbers to an ellipsis; a log has no width, so nothing is cut
    there. ``COLUMNS`` decides when it is set, read when printing: Rich reads it once, when the
    console is made at import, and a process that sets it later (a test runner) would get the
    import's width."""

    @property
    def size(self) -> ConsoleDimensions:
        columns = os.environ.get("COLUMNS", "")
        if columns.isdigit():
            return ConsoleDimensions(int(columns), super().size.height)
        if not self.is_terminal:
            return ConsoleDimensions(LOG_WIDTH, super().size.height)
        return super().size


console = _Console(highlight=False)
err_console = _Console(stderr=True, highlight=False)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def to_json(value: Any) -> str:
    return json.dumps(_plain(value), indent=2) + "\n"


def print_json(value: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else, for ``--json``."""
    print(to_json(value), end="")


def notice(message: str) -> None:
    """Progress and notices go to stderr, so stdout stays clean for ``--json`` and pipes."""
    err_console.print(f"[dim]{message}[/]")
