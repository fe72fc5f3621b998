"""Run by test_kill_resume.py: run ``rtk ARGS...`` and SIGKILL this process at a chosen moment.

Modes (argv[1], argv[2]): ``write N before|after`` kills at the N-th atomic file replacement
(before the rename: the temporary file is left behind; after: the file is whole), ``append N``
kills half-way through writing the N-th history line, ``time S`` kills S seconds after start.
"""

import os
import signal
import sys
import threading

from toolkit.fileio import os as fileio_os
from toolkit.training.rundir import RunDir


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


split = sys.argv.index("--")
mode, arg, *options = sys.argv[1:split]
rest = sys.argv[split + 1 :]
count = 0

if mode == "write":
    when, real_replace = options[0], fileio_os.replace

    def replace(src: str, dst: str) -> None:
        global count
        count += 1
        if count == int(arg) and when == "before":
            _die()
        real_replace(src, dst)
        if count == int(arg):
            _die()

    fileio_os.replace = replace
elif mode == "append":
    real_append = RunDir.append_history

    def append_history(self: RunDir, record: object) -> None:
        global count
        count += 1
        if count == int(arg):
            with (self.path / RunDir.HISTORY).open("a") as handle:
                handle.write('{"epoch": 9, "train_lo')
                handle.flush()
            _die()
        real_append(self, record)

    RunDir.append_history = append_history
elif mode == "time":
    threading.Timer(float(arg), _die).start()

sys.argv = ["rtk", *rest]
from toolkit.cli import main  # noqa: E402

main()
