"""Files that are either whole or absent: write to a temporary file, then rename."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from toolkit.errors import FolderBusyError, FormatError, OutputError

TEMP_SUFFIX = ".tmp"


def _temp_prefix(target: Path) -> str:
    return f".{target.name}."


_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # the write ran out of disk or quota


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
    for target in targets:  # before anything is made: the rename would fail last, naming the
        if target.is_dir():  # temporary twin
            raise OutputError(
                f"{target} is a folder where rtk writes a file; move it away or choose another "
                "folder"
            )
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
        try:
            yield list(tmps)
            # Flush to disk before the rename, so a crash cannot leave a renamed but empty file.
            for tmp in tmps:
                with tmp.open("rb+") as handle:
                    os.fsync(handle.fileno())
        except OSError as exc:
            # A full disk while writing: name the files the user asked for, not the temporary
            # ones (which go below), and say that the old ones are intact.
            if exc.errno not in _NO_ROOM and exc.filename not in {str(t) for t in tmps}:
                raise
            names = ", ".join(map(str, targets))
            kept = "it is as it was" if len(targets) == 1 else "they are as they were"
            raise OutputError(
                f"cannot write {names} ({exc.strerror or exc}); free disk space or choose "
                f"another folder: {kept}"
            ) from exc
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


LOCK_NAME = ".rtk.lock"


class FolderLock:
    """One writer at a time for a folder rtk writes (a run, a seed group, a study, a report).

    ``flock`` on ``.rtk.lock`` in the folder: the kernel drops it when its holder exits, however
    it exits (``kill -9`` included), so a lock is never stale; the file names the holder for
    the refusal. Released, the file is removed; a process that opened it just before must then
    lock the new one instead, hence the inode check.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot lock {self.folder} ({exc.strerror})") from exc
            try:
                if self._claim(fd):
                    self._fd = fd
                    return self
            except BaseException:
                os.close(fd)  # the lock goes with its descriptor
                raise
            os.close(fd)

    def _claim(self, fd: int) -> bool:
        """Lock ``fd`` and sign the file; False if the file was replaced meanwhile."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise FolderBusyError(
                f"{self.folder} is being written by {holder}; wait for it to finish (or stop "
                "it), then run this again"
            ) from None
        try:
            if os.stat(self.path).st_ino != os.fstat(fd).st_ino:
                return False
        except FileNotFoundError:
            return False
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} ({command})\n".encode(errors="replace"), 0)
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:  # a holder dropped without release (a trainer never run)
        with contextlib.suppress(Exception):
            self.release()

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# What ``atomic_paths`` names a temporary file: "." + target name + "." + mkstemp's 8 + ".tmp".
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[A-Za-z0-9_]{8}" + re.escape(TEMP_SUFFIX))


@contextmanager
def writing(folder: Path, *, outputs: Sequence[Path] = ()) -> Iterator[None]:
    """Make ``folder`` if need be and hold its ``FolderLock`` while the body writes into it.
    Holding it, no other rtk process writes there, so the temporary files a killed earlier
    writer left of ``outputs`` go first: each a file the body writes, or a folder of rtk's own
    whose every file it writes (only files named as ``atomic_paths`` names them)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {folder} ({exc.strerror}); pick another folder") from exc
    with FolderLock(folder):
        for output in outputs:
            if output.is_dir():
                for path in output.iterdir():
                    if _TEMP_NAME.fullmatch(path.name):
                        path.unlink(missing_ok=True)
            else:
                remove_leftover_temps(output)
        yield


def _not_json(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON")


def parse_json(text: str) -> Any:
    """JSON as rtk reads it from files anyone can edit: ``NaN`` and ``Infinity`` refused (they
    are not JSON), and nesting too deep for Python's parser a ``ValueError`` like any other
    malformed JSON, not a ``RecursionError``."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise ValueError("nested too deeply") from None


FORMAT_KEY = "format"  # the version of a JSON file's layout; files from before it are format 1


def check_format(content: object, known: int, where: Path) -> None:
    """A JSON file rtk wrote is in a layout this rtk reads: its ``format`` (1 when absent) is a
    whole number no newer than ``known``; a newer one is refused in one line, never misread."""
    version = content.get(FORMAT_KEY, 1) if isinstance(content, dict) else 1
    if type(version) is not int or version < 1:
        raise FormatError(f"{where} has {FORMAT_KEY} {version!r}, which is no layout version")
    if version > known:
        raise FormatError(
            f"{where} is in format {version}, newer than the {known} this rtk reads: it was "
            "written by a newer rtk; upgrade rtk to read it"
        )
