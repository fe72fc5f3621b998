"""The one place that writes to the terminal: a Console for results and one for errors.

Text printed here comes from files and paths as often as from rtk (run names, class names,
settings, ONNX metadata), so neither console reads Rich markup or ``:emoji:`` codes, and both
show control characters as escapes: a ``[/]`` in a path prints as itself, an escape sequence
in a checkpoint cannot drive the terminal. rtk's own styling is explicit, through ``styled``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, ConsoleDimensions
from rich.text import Text

# Wide enough for any table rtk prints: Rich lays tables out to their content, not to this.
LOG_WIDTH = 10_000

# C0 and C1 controls but newline and tab, DEL, and the bidirectional overrides that reorder
# what a terminal shows ("Trojan source").
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every control character shown as its escape (``\\x1b``), not obeyed."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 256 else
                        f"\\u{ord(m[0]):04x}", text)  # fmt: skip


def styled(*parts: object | tuple[object, str]) -> Text:
    """rtk's own styling around text from anywhere: ``styled((arch, "bold"), " -> ", path)``.
    Each part is shown as it is (no markup read), a ``(part, style)`` pair in that style."""
    text = Text()
    for part in parts:
        value, style = part if isinstance(part, tuple) else (part, "")
        text.append(printable(str(value)), style=style)
    return text


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

    def render_str(self, text: str, **kwargs: Any) -> Text:
        # Every str printed (messages, table cells, titles) passes here.
        return super().render_str(printable(text), **kwargs)


console = _Console(highlight=False, markup=False, emoji=False)
err_console = _Console(stderr=True, highlight=False, markup=False, emoji=False)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN and Infinity are not JSON: a number that is not one is null
    return value


def to_json(value: Any) -> str:
    return json.dumps(_plain(value), indent=2, allow_nan=False) + "\n"


def print_json(value: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else, for ``--json``."""
    print(to_json(value), end="")


def notice(message: str) -> None:
    """Progress and notices go to stderr, so stdout stays clean for ``--json`` and pipes."""
    err_console.print(message, style="dim")


def this_command(ctx: typer.Context) -> str:
    """The command being run as one shell line that runs it again: its path and every
    parameter that has a value other than its default (what a resume after Ctrl-C needs)."""
    words = ctx.command_path.split()
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or value == param.default or value in ((), []):
            continue
        values = list(value) if isinstance(value, list | tuple) else [value]
        if param.param_type_name == "argument":
            words += map(str, values)
        elif getattr(param, "is_flag", False):
            words.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            for item in values:
                words += [param.opts[0], str(item)]
    return shlex.join(words)
