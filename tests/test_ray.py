"""`--executor ray` (`rtk train --seeds`, `rtk study depth`, `rtk reproduce`): each run a Ray task
on a local Ray instance, with the very numbers of the local loop, a killed worker's run resumed,
and the refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TinyData, write_imagefolder
from toolkit.training import RunDir

EPOCHS = ["--epochs", "3", "--val-size", "50", "--batch-size", "32", "--device", "cpu"]
TIMING = ("epoch_s", "images_per_s", "peak_mem_mb", "compile_s")


RTK = str(Path(sys.executable).with_name("rtk"))
# No cluster from the environment: every test starts its own local Ray instance. Every run, local
# or on Ray, computes with one thread (a local run through OMP_NUM_THREADS, a Ray task through
# --cpus-per-run 1), whatever this test process's torch was set to by earlier tests.
ENV = {
    **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    "OMP_NUM_THREADS": "1",
    "COLUMNS": "400",  # one message, one line: a path is never wrapped apart
}
THREADS = "1"
TIMEOUT_S = 600  # a hang fails the test instead of the CI job


def _rtk(*args: object) -> subprocess.CompletedProcess:
    command = [RTK, *map(str, args)]
    return subprocess.run(
        command, capture_output=True, text=True, check=False, env=ENV, timeout=TIMEOUT_S
    )


def _numbers(run: Path) -> tuple[list[dict], dict]:
    """A run's history without its timings, and its test results."""
    history = [{k: v for k, v in r.items() if k not in TIMING} for r in RunDir(run).read_history()]
    metrics = json.loads((run / "metrics.json").read_text())
    return history, {k: metrics[k] for k in ("test_acc", "test_loss", "best_epoch")}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, tiny_data: TinyData) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("ray") / "cifar10-jpeg", tiny_data)


@pytest.fixture(scope="module")
def local_group(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local")
    done = _rtk("train", "baseline-cnn", "--seeds", "0,1", *EPOCHS, "--data", data, "--out", out,
                "--name", "g", "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out / "g"


def test_a_seed_group_through_ray_has_the_local_groups_numbers(
    data: Path, local_group: Path, tmp_path: Path
):
    threads = THREADS  # what a local run here computes with
    done = _rtk("train", "baseline-cnn", "--seeds", "0,1", *EPOCHS, "--data", data,
                "--out", tmp_path, "--name", "g", "--executor", "ray",
                "--cpus-per-run", threads, "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["seeds"] == [0, 1] and summary["arch"] == "baseline-cnn"
    for seed in (0, 1):
        assert _numbers(tmp_path / "g" / f"seed-{seed}") == _numbers(local_group / f"seed-{seed}")
    assert not list((tmp_path / "g").glob(".rtk-ray-probe-*"))  # the storage probe is gone
    again = _rtk("train", "--resume", tmp_path / "g", "--data", data, "--executor", "ray")
    assert again.returncode == 0 and "seed 1: finished earlier, reused" in again.stdout


def test_a_runs_own_error_is_not_retried_and_is_one_line(local_group: Path, data, tmp_path):
    """A partly trained group resumed through Ray: seed 0 is reused, seed 1 cannot be written
    (a file where its folder goes), which is the run's own error: one line, exit 2, no retry."""
    import shutil

    group = shutil.copytree(local_group, tmp_path / "g")
    shutil.rmtree(group / "seed-1")
    (group / "seed-1").write_text("not a run folder")
    done = _rtk("train", "--resume", group, "--data", data, "--executor", "ray")
    assert done.returncode == 2, done.stderr
    assert "seed 0: finished earlier, reused" in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "seed-1" in lines[0] and "Traceback" not in done.stderr


def test_a_killed_worker_is_retried_and_its_run_resumes(
    data: Path, local_group: Path, tmp_path: Path
):
    """kill -9 of the worker training seed 0 after its first epoch: Ray retries the task, the
    retry resumes from last.pt after that epoch, and the numbers are still the local loop's."""
    threads = THREADS
    args = ["train", "baseline-cnn", "--seeds", "0", *EPOCHS, "--data", data, "--out", tmp_path,
            "--name", "g", "--executor", "ray", "--cpus-per-run", threads, "--quiet"]  # fmt: skip
    driver = subprocess.Popen(
        [RTK, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    run = tmp_path / "g" / "seed-0"
    killed, epochs_then = None, 0
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while killed is None and driver.poll() is None and time.monotonic() < deadline:
            lock, history = run / ".rtk.lock", run / "history.jsonl"
            epochs = len(history.read_text().splitlines()) if history.is_file() else 0
            if 1 <= epochs < 3 and lock.is_file():  # an epoch finished, the run goes on
                holder = lock.read_text().split()  # "process PID (command)"
                if len(holder) > 1 and holder[1].isdigit():
                    killed, epochs_then = int(holder[1]), epochs
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.005)
        _, stderr = driver.communicate(timeout=TIMEOUT_S)
    finally:
        driver.kill()  # a hang or a failed assertion must not leave the driver and Ray running
    assert killed is not None and killed != driver.pid, "the run ended before it could be killed"
    assert driver.returncode == 0, stderr
    assert _numbers(run) == _numbers(local_group / "seed-0")
    assert epochs_then >= 1  # the retry resumed after a finished epoch, not from scratch


TOO_MANY_CPUS = str(4 * (os.cpu_count() or 1))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "dask"], "--executor is local or ray"),
        (["--cpus-per-run", "2"], "--cpus-per-run go with --executor ray"),
        (["--executor", "ray"], "--executor ray trains the seeds of a group"),
        (["--executor", "ray", "--seeds", "0", "--cpus-per-run", "0"], "must be positive"),
        (["--executor", "ray", "--seeds", "0", "--cpus-per-run", TOO_MANY_CPUS],
         "but the largest node of the Ray cluster has"),
        (["--executor", "ray", "--seeds", "0", "--ray-address", "127.0.0.1:1"],
         "cannot start or reach the Ray cluster at 127.0.0.1:1"),
    ],
)  # fmt: skip
def test_ray_settings_refused_in_one_line(data: Path, tmp_path: Path, args: list[str], message):
    done = _rtk("train", "baseline-cnn", *EPOCHS, "--data", data, "--out", tmp_path, *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert not any(p.name.startswith("seed-") for p in tmp_path.rglob("*"))  # nothing trained


def test_a_depth_study_through_ray_has_the_local_studys_numbers(data: Path, tmp_path: Path):
    """`rtk study depth --executor ray`: both networks as Ray tasks at once, then the study's
    table and verdict from their runs, exactly as the local loop's; a rerun reuses them."""
    study = ["study", "depth", "--depth", "20", "--epochs", "1", "--train-subset", "100",
             "--val-size", "40", "--data", data, "--quiet", "--json"]  # fmt: skip
    local = _rtk(*study, "--out", tmp_path / "local")
    assert local.returncode == 0, local.stderr
    ray = _rtk(*study, "--out", tmp_path / "ray", "--executor", "ray", "--cpus-per-run", THREADS)
    assert ray.returncode == 0, ray.stderr
    for arch in ("plain20", "resnet20"):
        assert f"runs/{arch}: trained as a Ray task" in ray.stderr
        assert f"{arch}: trained by the executor" in ray.stderr
        assert _numbers(tmp_path / "ray" / "runs" / arch) == _numbers(
            tmp_path / "local" / "runs" / arch
        )
    ours, theirs = json.loads(ray.stdout), json.loads(local.stdout)
    assert ours["verdict"] == theirs["verdict"]
    assert [r["test_error"] for r in ours["runs"]] == [r["test_error"] for r in theirs["runs"]]
    again = _rtk(*study, "--out", tmp_path / "ray", "--executor", "ray")
    assert again.returncode == 0 and "plain20: reused" in again.stderr  # no Ray session needed


@pytest.mark.parametrize("command", [["study", "depth", "--depth", "20"], ["reproduce"]])
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "dask"], "--executor is local or ray"),
        (["--gpus-per-run", "1"], "--gpus-per-run go with --executor ray"),
        (["--executor", "ray", "--cpus-per-run", "-1"], "must be positive"),
    ],
)
def test_study_and_reproduce_refuse_bad_executor_settings_before_any_work(
    data: Path, tmp_path: Path, command: list[str], args: list[str], message: str
):
    done = _rtk(*command, "--data", data, "--out", tmp_path / "out", *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_reproduce_through_ray_has_the_local_reproduces_numbers(data: Path, tmp_path: Path):
    """`rtk reproduce --executor ray` hands its runs to Ray, then reports on them exactly as
    after training them itself: the library under the CLI, local then through Ray, in a process
    of its own (Ray's driver installs signal handlers), one thread on both sides."""
    script = f"""
import dataclasses, json, sys
from pathlib import Path
import torch
from analysis.reproduce import reproduce
from tests.test_reproduce import TINY
from toolkit.cluster import RaySettings, ray_executor
from toolkit.data import load_dataset

torch.set_num_threads(1)  # what the Ray task computes with (--cpus-per-run 1)
dataset = load_dataset(Path({str(data)!r}))
budget = dataclasses.replace(TINY, lesion_draws=1, grad_batches=1)
out = Path({str(tmp_path)!r})
local = reproduce(budget=budget, models=["baseline-cnn"], out=out / "local", dataset=dataset)
said = []
settings = RaySettings(address=None, cpus_per_run=1, gpus_per_run=0)
executor = ray_executor(settings, dataset.source.path, say=said.append, rerun="again")
ray = reproduce(budget=budget, models=["baseline-cnn"], out=out / "ray", dataset=dataset,
                say=said.append, executor=executor)
print(json.dumps({{"said": said, "local": [r.test_acc for r in local.table],
                  "ray": [r.test_acc for r in ray.table]}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=ENV, cwd=Path(__file__).resolve().parents[1], timeout=TIMEOUT_S,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert f"{tmp_path / 'ray' / 'runs' / 'baseline-cnn'}: trained as a Ray task" in result["said"]
    assert any(s.startswith("baseline-cnn: trained by the executor") for s in result["said"])
    run = Path("runs") / "baseline-cnn"
    assert _numbers(tmp_path / "ray" / run) == _numbers(tmp_path / "local" / run)
    assert result["ray"] == result["local"]


def test_a_seed_folder_linked_outside_is_never_trained_into_through_ray(
    local_group: Path, data: Path, tmp_path: Path
):
    """The task resolves its run's path: a link must be refused before, on the driver."""
    import shutil

    group = shutil.copytree(local_group, tmp_path / "g", symlinks=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(group / "seed-1")
    (group / "seed-1").symlink_to(elsewhere, target_is_directory=True)
    done = _rtk("train", "--resume", group, "--data", data, "--executor", "ray",
                "--cpus-per-run", THREADS)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"{group}/seed-1 is a symbolic link; rtk writes a run only inside" in done.stderr
    assert not any(elsewhere.iterdir())
