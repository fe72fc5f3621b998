"""One writer per folder: a run, a seed group, a study or a report folder that one process is
writing is refused to a second, in one line naming the holder; a holder killed with SIGKILL
leaves no lock behind. Real processes throughout (the lock is the kernel's, per process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.cli.app import app
from toolkit.errors import OutputError
from toolkit.fileio import LOCK_NAME, FolderLock, atomic_paths, writing
from toolkit.training.rundir import RunDir

WAIT_S = 120


def _rtk_process(*args: str | Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "toolkit", *map(str, args)]
    return subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip


def _holder(folder: Path) -> subprocess.Popen[str]:
    """A process that holds ``folder``'s lock until killed, as a long command would."""
    code = (
        "import sys, time; from pathlib import Path; from toolkit.fileio import FolderLock; "
        "lock = FolderLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); "
        "time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], text=True,
                              stdout=subprocess.PIPE)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def _wait_for(path: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def _epochs(run: Path) -> list[int]:
    return [row["epoch"] for row in RunDir.open(run).read_history()]


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "baseline-cnn", "--recipe", "fast", "--no-amp", "--batch-size", "32",
            "--val-size", "50", "--no-tta", "--quiet", "--data", str(data), "--out", str(out),
            *extra]  # fmt: skip


def test_a_run_in_training_refuses_a_second_resume_and_a_killed_one_frees_it(
    imagefolder: Path, tmp_path: Path
):
    """A second `--resume` of a run in training was accepted and doubled its history rows."""
    run = tmp_path / "run"
    first = _rtk_process(*_train(imagefolder, tmp_path, "--epochs", "400", "--name", "run"))
    try:
        _wait_for(run / RunDir.LAST, first)
        resume = ["train", "--resume", str(run), "--data", str(imagefolder), "--quiet"]
        second = CliRunner().invoke(app, resume)
        assert second.exit_code == 2, second.output
        assert f"{run} is being written by process {first.pid} (" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        _kill(first)
    # Killed with SIGKILL: its lock went with it; the run resumes to the end, each epoch once
    # (+2: the kill may fall between an epoch's checkpoint and its history line).
    epochs = len(_epochs(run)) + 2
    resumed = CliRunner().invoke(app, [*resume, "--epochs", str(epochs)])
    assert resumed.exit_code == 0, resumed.output
    assert _epochs(run) == list(range(1, epochs + 1))
    assert not (run / LOCK_NAME).exists()  # released when the run ended


def test_the_same_new_run_started_twice_at_once_trains_once(imagefolder: Path, tmp_path: Path):
    args = _train(imagefolder, tmp_path, "--epochs", "2", "--name", "same")
    both = [_rtk_process(*args), _rtk_process(*args)]
    outcomes = [(p.wait(timeout=WAIT_S), p.communicate()[1]) for p in both]
    assert sorted(code for code, _ in outcomes) == [0, 2], outcomes
    (refusal,) = [err for code, err in outcomes if code == 2]
    assert "is being written by process" in refusal or "already exists" in refusal, refusal
    assert _epochs(tmp_path / "same") == [1, 2]


@pytest.mark.parametrize("command", ["study", "reproduce", "group"])
def test_a_folder_being_written_refuses_a_second_command(
    command: str, imagefolder: Path, tmp_path: Path
):
    out = tmp_path / "out"
    if command == "group":
        made = CliRunner().invoke(app, _train(imagefolder, tmp_path, "--epochs", "1", "--seeds",
                                              "0,1", "--name", "out"))  # fmt: skip
        assert made.exit_code == 0, made.output
        # A killed trainer of the group: the group may be resumed by one process at a time.
        args = ["train", "--resume", str(out), "--data", str(imagefolder), "--quiet"]
    elif command == "study":
        args = ["study", "depth", "--budget", "quick", "--depth", "20", "--data",
                str(imagefolder), "--out", str(out), "--quiet"]  # fmt: skip
    else:
        args = ["reproduce", "--budget", "quick", "--models", "baseline-cnn", "--data",
                str(imagefolder), "--out", str(out), "--quiet"]  # fmt: skip
    out.mkdir(exist_ok=True)
    before = sorted(p.name for p in out.iterdir())
    holder = _holder(out)
    try:
        refused = CliRunner().invoke(app, args)
    finally:
        _kill(holder)
    assert refused.exit_code == 2, refused.output
    assert f"{out} is being written by process {holder.pid} (" in refused.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([*before, LOCK_NAME])


def test_a_lock_is_one_process_at_a_time_and_leaves_no_file(tmp_path: Path):
    with FolderLock(tmp_path):
        holder_file = (tmp_path / LOCK_NAME).read_text()
        assert holder_file.startswith(f"process {os.getpid()} (")
    assert not (tmp_path / LOCK_NAME).exists()
    holder = _holder(tmp_path)
    try:
        from toolkit.errors import FolderBusyError

        with pytest.raises(FolderBusyError, match=f"process {holder.pid} "):
            FolderLock(tmp_path).acquire()
    finally:
        _kill(holder)
    with FolderLock(tmp_path):  # the killed holder's file is still there, its lock is not
        pass


def test_writing_clears_only_rtks_leftovers_of_its_outputs(tmp_path: Path):
    """A killed writer's temporary files of the outputs go; any other file stays, even one
    that looks temporary (the folder may be the user's own, `--out .`)."""
    figures = tmp_path / "figures"
    figures.mkdir()
    rtk_leftovers = [tmp_path / ".REPORT.md.ab12cd34.tmp", figures / ".curves.png.x_9y8z7w.tmp"]
    theirs = [tmp_path / ".notes.txt.ab12cd34.tmp", tmp_path / ".x.tmp", figures / "keep.png"]
    for path in rtk_leftovers + theirs:
        path.write_text("")
    with writing(tmp_path, outputs=[tmp_path / "REPORT.md", figures]):
        assert (tmp_path / LOCK_NAME).is_file()
    assert not any(p.exists() for p in rtk_leftovers)
    assert all(p.exists() for p in theirs)
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_folder_where_rtk_writes_a_file_is_named_and_left_alone(tmp_path: Path):
    """Every file rtk writes whole goes through atomic_paths: a folder in its place (DEPTH.md,
    config.json, a checkpoint) is refused before anything is written, naming the folder the
    user made, not the temporary twin the rename would have failed on."""
    (tmp_path / "DEPTH.md").mkdir()
    (tmp_path / "DEPTH.md" / "mine.txt").write_text("the user's own\n")
    figure = tmp_path / "figures" / "depth.png"
    with (
        pytest.raises(OutputError) as refused,
        writing(tmp_path, outputs=[tmp_path / "DEPTH.md"]),
        atomic_paths([figure, tmp_path / "DEPTH.md"]) as tmps,
    ):
        raise AssertionError(f"wrote {tmps}")  # never reached
    assert str(refused.value) == (
        f"{tmp_path / 'DEPTH.md'} is a folder where rtk writes a file; move it away or choose "
        "another folder"
    )
    assert (tmp_path / "DEPTH.md" / "mine.txt").read_text() == "the user's own\n"
    assert not figure.parent.exists() and not list(tmp_path.rglob("*.tmp"))
