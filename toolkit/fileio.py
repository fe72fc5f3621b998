"""Files that are either whole or absent: write to a temporary file, then rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from toolkit.errors import OutputError


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` atomically.

    The temporary file lives in the target's directory so that ``os.replace`` is a rename on
    one filesystem; if the body raises (or the process dies), ``target`` is untouched.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:  # nothing is written yet: one line naming the folder
        raise OutputError(
            f"cannot write {target} ({exc.strerror or exc}); choose a writable folder"
        ) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600; the result should look like any new file
    try:
        yield tmp
        # Flush to disk before the rename, so a crash cannot leave a renamed but empty file.
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
