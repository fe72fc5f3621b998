from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import CLASSES
from toolkit.cli import app
from toolkit.models import PAPER, architecture_names
from toolkit.training import initial_checkpoint, save_checkpoint

runner = CliRunner()
ARCHS_PAPER = architecture_names(PAPER)


def rtk(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def test_help_lists_the_commands():
    result = rtk("--help")
    assert result.exit_code == 0
    assert "models" in result.stdout and "data" in result.stdout


def test_models_table():
    result = rtk("models")
    assert result.exit_code == 0
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.count("│") > 4}
    assert set(architecture_names()) <= lines.keys()
    for name, count in zip(
        architecture_names(PAPER), ["391,946", "2,798,698", "11,173,962", "11,000,138"], strict=True
    ):
        assert f"{count} =" in lines[name]  # equal to the paper's exact count
    assert "555.4 M" in lines["resnet18"]  # ResNet-18 MACs per 32x32 image
    assert "89.90%" in lines["resnet18"]  # Table I
    # He et al.'s figures beside ours; seed 004 publishes none.
    assert "269,722 =" in lines["resnet20"] and "91.25%" in lines["resnet20"]
    assert "1,727,962 =" in lines["resnet110"] and " 110 " in lines["resnet110"]  # depth
    assert "701,466 " in lines["slim-resnet18"] and "46.8 M" in lines["slim-resnet18"]
    assert "91.00%" in lines["slim-resnet18"]
    assert "23,520,842 " in lines["resnet50"] and " - " in lines["resnet50"]


def test_models_json():
    result = rtk("models", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == architecture_names()
    by_name = {r["name"]: r for r in rows}
    assert all(by_name[n]["params"] == by_name[n]["published_params"] for n in ARCHS_PAPER)
    assert all(r["published_params"] in (None, r["params"]) for r in rows)
    assert by_name["resnet50"]["published_params"] is None and by_name["resnet50"]["depth"] == 50
    assert by_name["resnet20"]["group"] == "he2015"
    assert {"macs", "description", "trainable_params", "published_test_acc"} <= rows[0].keys()


def test_data_info_table(imagefolder: Path):
    result = rtk("data", "info", "--data", str(imagefolder), "--val-size", "50")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "imagefolder" in out and "train 150 / val 50 / test 50" in out
    assert "built now" in out
    assert "hit" in rtk("data", "info", "--data", str(imagefolder), "--val-size", "50").stdout


def test_data_clean_removes_the_cache_and_the_next_load_rebuilds_it(imagefolder: Path):
    info = json.loads(
        rtk("data", "info", "--data", str(imagefolder), "--val-size", "50", "--json").stdout
    )
    cache = Path(info["cache_path"])
    stale = cache.with_name(f".{cache.name}.abc123.tmp")  # left by a writer killed mid-write
    stale.write_bytes(b"partial")
    mine = cache.with_name("cifar10-best.pt")  # a user's file in a shared cache dir: kept
    mine.write_bytes(b"weights")
    size = cache.stat().st_size
    result = rtk("data", "clean", "--json")
    assert result.exit_code == 0, result.stderr
    cleanup = json.loads(result.stdout)
    assert sorted(cleanup["removed"]) == sorted([str(cache), str(stale)])
    assert cleanup["freed_bytes"] == size + len(b"partial")
    assert not cache.exists() and not stale.exists() and mine.read_bytes() == b"weights"
    assert "nothing to remove" in rtk("data", "clean").stdout
    again = json.loads(
        rtk("data", "info", "--data", str(imagefolder), "--val-size", "50", "--json").stdout
    )
    assert again["from_cache"] is False and Path(again["cache_path"]).is_file()


def test_data_info_json_from_rtk_data(cifar_tarball: Path):
    result = rtk("data", "info", "--json", "--val-size", "20", env={"RTK_DATA": str(cifar_tarball)})
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["format"] == "cifar-tar" and info["source"] == str(cifar_tarball)
    assert (info["train"], info["val"], info["test"]) == (180, 20, 50)
    assert [c["val"] for c in info["classes"]] == [2] * 10
    assert Path(info["cache_path"]).is_file()


def test_bad_image_named_through_the_real_console_script(imagefolder: Path):
    """The installed ``rtk`` script: one line on stderr, exit 2, no traceback, no cache."""
    bad = sorted((imagefolder / "train" / "ship").iterdir())[3]
    bad.write_bytes(b"GIF89a broken")
    env = {**os.environ, "COLUMNS": "300"}
    command = [
        str(Path(sys.executable).with_name("rtk")),
        "data",
        "info",
        "--data",
        str(imagefolder),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot decode image {bad} (not an image); replace or remove it"
    ]
    assert list(Path(os.environ["RTK_CACHE_DIR"]).iterdir()) == []
    # RTK_DEBUG=1 shows the traceback for a bug report.
    debug = subprocess.run(
        command, capture_output=True, text=True, env={**env, "RTK_DEBUG": "1"}, check=False
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_python_dash_m_toolkit_works():
    result = subprocess.run(
        [sys.executable, "-m", "toolkit", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stdout.startswith("rtk ")


def test_unknown_command_exits_2():
    assert rtk("trian").exit_code == 2


def _console_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed ``rtk`` with stdout and stderr piped, as in CI, and no COLUMNS."""
    base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "RTK_DEBUG")}
    command = [str(Path(sys.executable).with_name("rtk")), *args]
    return subprocess.run(
        command, capture_output=True, text=True, env={**base, **(env or {})}, check=False
    )


def test_tables_in_a_log_are_not_squeezed_to_80_columns():
    result = _console_script("models")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) > 80  # laid out to its content, not cut
    assert "…" not in result.stdout
    assert "CIFAR ResNet-18: 4 stages x 2 blocks, 64-512 wide" in result.stdout
    assert "11,173,962" in result.stdout and "555.4 M" in result.stdout


def test_library_warnings_are_hidden_unless_debugging(tmp_path: Path):
    # A foreign pickle (protocol 4) makes torch's safe loader warn with a file:line.
    run = tmp_path / "run"
    run.mkdir()
    with (run / "best.pt").open("wb") as handle:
        pickle.dump({"weights": [1.0]}, handle, protocol=4)
    quiet = _console_script("analyze", "params", str(run))
    assert quiet.returncode == 2
    (line,) = quiet.stderr.strip().splitlines()
    assert line.startswith(f"error: checkpoint {run / 'best.pt'} is unsafe or foreign")
    debug = _console_script("analyze", "params", str(run), env={"RTK_DEBUG": "1"})
    assert "UserWarning: Detected pickle protocol 4" in debug.stderr


def test_min_accuracy_gate(imagefolder: Path, tmp_path: Path):
    """The CI gate: exit 0 at or above the bar; below it exit 1 with one line, and --json
    still prints the whole report on stdout."""
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint, initial_checkpoint("baseline-cnn", list(CLASSES)))
    args = ["report", "classification", str(checkpoint), "--data", str(imagefolder)]
    passed = rtk(*args, "--min-accuracy", "0")
    assert passed.exit_code == 0, passed.stderr
    assert "accuracy" in passed.stdout and passed.stderr == ""
    failed = rtk(*args, "--min-accuracy", "1", "--json")
    assert failed.exit_code == 1
    accuracy = json.loads(failed.stdout)["accuracy"]
    assert failed.stderr.strip().splitlines() == [
        f"gate failed: accuracy {accuracy:.4f} is below the required 1.0000 (--min-accuracy) "
        f"for {checkpoint}"
    ]


def test_the_cli_loads_without_torch_so_help_is_instant():
    """Help and bad-flag errors come before any heavy import; commands import what they use."""
    code = "import sys, toolkit.cli.app; print(sorted({'torch', 'onnxruntime'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_full_disk_while_writing_a_plot_is_one_line(imagefolder: Path, tmp_path: Path,
                                                     monkeypatch):  # fmt: skip
    import errno

    from matplotlib.figure import Figure

    def full_disk(self: Figure, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))

    monkeypatch.setattr(Figure, "savefig", full_disk)
    save_checkpoint(tmp_path / "ckpt.pt", initial_checkpoint("baseline-cnn", list(CLASSES)))
    plot = tmp_path / "confusion.png"
    result = rtk("report", "confusion", str(tmp_path / "ckpt.pt"), "--data", str(imagefolder),
                 "--plot", str(plot))  # fmt: skip
    assert result.exit_code == 2
    assert "No space left on device" in result.stderr and "free disk space" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not plot.exists()
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file went too


def test_console_width_follows_columns_set_after_import(monkeypatch: pytest.MonkeyPatch):
    # pytest-xdist's workers start with COLUMNS=80, which Rich would keep for good; a later
    # COLUMNS (CliRunner's, a user's) must decide, and without one a log is never squeezed.
    from toolkit.cli.output import LOG_WIDTH, _Console

    monkeypatch.setenv("COLUMNS", "80")
    console = _Console(stderr=True)
    monkeypatch.setenv("COLUMNS", "250")
    assert console.size.width == 250
    monkeypatch.delenv("COLUMNS")
    assert console.size.width == LOG_WIDTH  # stderr is captured here: no terminal


def _commands(group, path=()):
    """Every command of the click tree under ``group``, with its path of names."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (Typer vendors click: no isinstance)
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_every_help_shows_every_default():
    """Help strings are Rich markup: an unescaped ``[the default]`` vanished and left "opset ."
    behind. Every option with a default shows it (Typer's ``[default: ...]``), and every
    bracket a help string writes itself (for defaults decided later) is shown."""
    import re

    import typer

    root = typer.main.get_command(app)
    for path, command in _commands(root):
        shown = rtk(*path, "--help", env={"COLUMNS": "400"})
        assert shown.exit_code == 0, path
        text = " ".join(shown.stdout.replace("│", " ").split())
        assert not re.search(r"\w \.( |$)", text), (path, text)
        with_default = []  # options Typer shows a default for: each one's "[default: ...]"
        for param in command.params:
            if param.hidden or param.name == "help":
                continue
            where = f"rtk {' '.join(path)} {param.opts[0]}"
            help_text = param.help or ""
            # Rich reads "[" and a lowercase letter, #, / or @ as a tag: escape it ("\\[").
            assert not re.search(r"(?<!\\)\[[a-z#/@]", help_text), f"{where}: unescaped bracket"
            for bracket in re.findall(r"\[([^]]*)\]", help_text):
                assert f"[{' '.join(bracket.split())}]" in text, (where, bracket)
            if param.param_type_name != "option":
                continue
            flag_off = param.is_flag and not param.secondary_opts and param.default is False
            if param.default is not None and param.show_default is not False and not flag_off:
                with_default.append(where)
        assert text.count("[default: ") >= len(with_default), (path, with_default)


def test_every_train_option_reaches_the_settings_or_is_the_commands_own():
    """`rtk train` reads its settings from its own signature (written once): an option that is
    neither a ``TrainConfig`` field nor one the command uses itself would be dropped silently."""
    import inspect
    from dataclasses import fields

    from toolkit.cli.train import _OPTION_SETTING, _settings, train
    from toolkit.config import TrainConfig

    own = {"archs", "recipe", "seeds", "data", "out", "name", "resume", "nproc", "tensorboard"}
    own |= {"quiet", "as_json", "executor", "ray_address", "cpus_per_run", "gpus_per_run"}
    options = set(inspect.signature(train).parameters)
    settings = {f.name for f in fields(TrainConfig)}
    dropped = {o for o in options - own if _OPTION_SETTING.get(o, o) not in settings}
    assert not dropped
    given = _settings({o: f"value of {o}" for o in options})
    assert given["compile"] == "value of compile_model" and given["lr"] == "value of lr"
    assert set(given) == {_OPTION_SETTING.get(o, o) for o in options - own}
