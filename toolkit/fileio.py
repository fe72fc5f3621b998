"""Files that are either whole or absent: write to a temporary file, then rename."""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from toolkit.errors import OutputError

TEMP_SUFFIX = ".tmp"


def _temp_prefix(target: Path) -> str:
    return f".{target.name}."


@contextmanager
def atomic_paths(targets: Sequence[Path]) -> Iterator[list[Path]]:
    """Yield a temporary path beside each target; once the body succeeds they replace their
    targets together, and if it raises (or the process dies) every target is untouched.

    Each temporary file lives in its target's directory so that ``os.replace`` is a rename on
    one filesystem. All of them are flushed to disk before the first rename, so a full disk
    cannot leave some targets new and others old (renames take no space).
    """
    tmps: list[Path] = []
    umask = os.umask(0)
    os.umask(umask)
    try:
        for target in targets:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp_name = tempfile.mkstemp(
                    prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent
                )
            except OSError as exc:  # nothing is written yet: one line naming the folder
                raise OutputError(
                    f"cannot write {target} ({exc.strerror or exc}); choose a writable folder"
                ) from exc
            os.close(fd)
            tmps.append(Path(tmp_name))
            # mkstemp makes 0600; the result should look like any new file.
            tmps[-1].chmod(0o666 & ~umask)
        yield list(tmps)
        # Flush to disk before the rename, so a crash cannot leave a renamed but empty file.
        for tmp in tmps:
            with tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
        for tmp, target in zip(tmps, targets, strict=True):
            os.replace(tmp, target)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """``atomic_paths`` for one file: ``target`` is replaced whole, or not at all."""
    with atomic_paths([target]) as (tmp,):
        yield tmp


def remove_leftover_temps(target: Path) -> list[Path]:
    """Delete the temporary files a killed writer of ``target`` left beside it (a kill -9
    skips ``atomic_paths``' clean-up); returns what was removed."""
    pattern = glob.escape(str(target.parent / _temp_prefix(target))) + "*" + TEMP_SUFFIX
    leftovers = sorted(Path(p) for p in glob.glob(pattern))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers
