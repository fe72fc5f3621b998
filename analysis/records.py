"""Results tables in Markdown files, generated from run records.

A block opens with a comment that names the rtk report writing it, paths relative to the file,
and closes with ``<!-- /rtk -->``::

    <!-- rtk report compare ../results/precision -->
    | model | run | ... |
    <!-- /rtk -->

``rtk report refresh`` rewrites every block from the records; with ``--check`` it only says
which blocks differ, so CI fails when a committed table no longer matches its records. A folder
stands for every finished run and seed group under it (``runs_under``).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from analysis.claims import claims_markdown, record_claims
from analysis.report import (
    ablation_markdown,
    ablation_rows,
    compare_runs,
    runs_under,
    table_markdown,
)
from analysis.sources import SourceError
from toolkit.training import RunDir, SeedGroup

OPEN = re.compile(r"^<!-- rtk report (?P<command>.+?) -->$")
CLOSE = "<!-- /rtk -->"
# The reports a block may name, each with the options it takes.
REPORTS = {"compare": {"--ablation"}, "claims": set()}


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening comment
    command: str  # as written after "rtk report"
    stale: bool  # the committed table differs from what the records give now


@dataclass(frozen=True)
class Refresh:
    file: Path
    text: str  # the file with every block regenerated
    blocks: list[Block]

    @property
    def stale(self) -> list[Block]:
        return [b for b in self.blocks if b.stale]


def record_paths(paths: list[Path]) -> list[Path]:
    """Runs and seed groups as given; any other folder stands for every finished run and
    complete seed group under it."""
    runs: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise SourceError(f"{path} is not a folder of run records")
        # A run or a seed group is itself; any other folder stands for every run under it.
        is_record = RunDir(path).finished or SeedGroup.is_group(path)
        runs += [path] if is_record else runs_under(path)
    return runs


def render(command: str, base: Path) -> str:
    """The Markdown a block's command gives now, its paths read relative to ``base``."""
    words = shlex.split(command)
    report, args = (words[0], words[1:]) if words else ("", [])
    if report not in REPORTS:
        raise SourceError(
            f"unknown report {report!r} in a results block; blocks take {', '.join(REPORTS)}"
        )
    options = {a for a in args if a.startswith("--")}
    if unknown := options - REPORTS[report]:
        raise SourceError(f"rtk report {report} in a results block takes no {sorted(unknown)}")
    runs = record_paths([base / a for a in args if not a.startswith("--")])
    if report == "claims":
        return claims_markdown(record_claims(runs))
    if "--ablation" in options:
        return ablation_markdown(ablation_rows(runs))
    return table_markdown(compare_runs(runs, skip_others=True))


def refresh(file: Path) -> Refresh:
    """Every block of ``file`` regenerated from the records it names."""
    if not file.is_file():
        raise SourceError(f"{file} is not a Markdown file; give the files holding results blocks")
    lines = file.read_text().splitlines(keepends=True)
    out: list[str] = []
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        opened = OPEN.match(lines[i].strip())
        i += 1
        if not opened:
            continue
        start = i
        while i < len(lines) and lines[i].strip() != CLOSE:
            i += 1
        if i == len(lines):
            raise SourceError(f"{file}:{start}: a results block is not closed with {CLOSE}")
        command = opened["command"]
        new = render(command, file.parent)
        blocks.append(Block(start, command, "".join(lines[start:i]) != new))
        out.append(new)
    return Refresh(file, "".join(out), blocks)
