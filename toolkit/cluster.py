"""Many training runs across machines: each run one Ray task, writing its ordinary run folder.

(Outside ``toolkit.training`` on purpose: a Ray worker that only checks the shared storage
imports this module, and need not import torch for it.)

DDP spreads one run over several processes; Ray spreads many independent runs (the seeds of a
group) over a cluster's nodes, each task with its stated CPUs and GPUs. Nothing about a run
changes: the task does exactly what the local loop does (``open_run``: reuse a finished run,
resume a started one from its ``last.pt``, start the rest), in a worker process, on storage every
node sees. So a worker that dies (a node lost, a kill) is simply retried by Ray, and the retry
resumes from the last finished epoch; a run that fails for a reason of its own (bad settings, a
full disk: ``RtkError``) is not retried, since it would fail again.

Each task computes with as many threads as it has CPUs (``torch.set_num_threads``), so a run
given ``--cpus-per-run`` equal to the threads a local run uses computes exactly what the local
loop computes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import FolderBusyError, RtkError

MAX_RETRIES = 3  # a worker or node that dies: the run resumes from its last.pt this many times


class RayError(RtkError):
    """Ray cannot start, cannot reach its cluster, or cannot run the tasks as asked."""


@dataclass(frozen=True)
class RaySettings:
    address: str | None  # a running cluster ("auto", "ray://host:10001"); None: a local one
    cpus_per_run: float | None  # None: the threads a local run uses here (local instance), or
    # the largest node's CPUs (a cluster)
    gpus_per_run: float


def _train_one(
    settings: dict[str, Any], run: str, data: str, tensorboard: bool, threads: int
) -> Any:
    """In a Ray worker: what the local loop does for one run. Returns its ``TrainResult``
    (None when the run had finished before and is reused as it is)."""
    import torch

    from toolkit.config import config_from_settings
    from toolkit.data import load_dataset
    from toolkit.training.group import open_run
    from toolkit.training.observers import Observers, TensorBoardObserver

    torch.set_num_threads(threads)  # the task's CPUs, whatever OMP_NUM_THREADS the worker got
    config = config_from_settings(settings, where=run)
    dataset = load_dataset(Path(data), image_size=config.image_size)
    board = Observers(TensorBoardObserver(Path(run))) if tensorboard else None
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            _, trainer = open_run(config, Path(run), dataset, observer=board)
            break
        except FolderBusyError:
            # A retry after its worker died: on network storage the dead worker's lock can
            # outlive it for a while. Anything still holding it after that is a real writer.
            if time.monotonic() > deadline:
                raise
            time.sleep(5.0)
    return None if trainer is None else trainer.run()


def _sees(paths: list[str]) -> tuple[str, list[str]]:
    """In a Ray task on one node: that node's address and the paths it cannot see."""
    import ray

    return ray.util.get_node_ip_address(), [p for p in paths if not os.path.exists(p)]


@contextmanager
def ray_session(settings: RaySettings) -> Iterator[RaySettings]:
    """Ray connected (to ``settings.address``, else ``RAY_ADDRESS``, else a new local instance
    of the CPUs this process may use), and shut down again when the block ends. Yields the
    settings with ``cpus_per_run`` resolved and checked against the nodes."""
    import ray

    address = settings.address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_listening(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(
                address="local",  # never a cluster some earlier `ray start` left listed
                num_cpus=len(os.sched_getaffinity(0)),
                include_dashboard=False,
                log_to_driver=False,
                logging_level="ERROR",
            )
    except Exception as exc:  # ConnectionError, RuntimeError, ...: Ray's own words, one line
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayError(
            f"cannot start or reach {where}: {first}; check --ray-address / RAY_ADDRESS "
            "(`ray status` on the head node)"
        ) from exc
    try:
        yield _check_resources(settings, local=not address)
    finally:
        ray.shutdown()


CONNECT_TIMEOUT_S = 10.0
SHARED_CHECK_TIMEOUT_S = 300.0  # a node that cannot start a worker in this long is not usable
LOCK_WAIT_S = 180.0  # a dead node's lock on NFS lasts until its lease runs out (~90 s)


def _check_listening(address: str) -> None:
    """``HOST:PORT`` (or ``ray://HOST:PORT``) answers, checked first: Ray itself keeps retrying
    an address where nothing listens for minutes. ``auto`` is left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RayError(
            f"cannot start or reach the Ray cluster at {address}: nothing answers there "
            f"({exc.strerror or exc}); check --ray-address / RAY_ADDRESS (`ray status` on the "
            "head node)"
        ) from exc


def _check_resources(settings: RaySettings, *, local: bool) -> RaySettings:
    """``cpus_per_run`` resolved, and both per-run amounts checked against the largest alive
    node: a task runs on one node, so a run larger than every node would wait forever."""
    import ray
    import torch

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    largest = {kind: max((n.get(kind, 0) for n in nodes), default=0) for kind in ("CPU", "GPU")}
    cpus = settings.cpus_per_run
    if cpus is None:  # here: the threads a local run uses, so the local loop's numbers
        cpus = float(min(torch.get_num_threads(), largest["CPU"]) if local else largest["CPU"])
    for name, wanted, flag in (
        ("CPU", cpus, "--cpus-per-run"),
        ("GPU", settings.gpus_per_run, "--gpus-per-run"),
    ):
        if wanted > largest[name]:
            raise RayError(
                f"{flag} {wanted:g}, but the largest node of the Ray cluster has "
                f"{largest[name]:g} {name}s: no run could ever be scheduled; lower {flag} or "
                "add larger nodes"
            )
    return dataclasses.replace(settings, cpus_per_run=cpus)


def check_shared(out: Path, data: Path) -> None:
    """Every alive node of the cluster sees the runs' folder and the data: a file written here
    under a random name, looked for by a task pinned to each node before anything trains (a
    folder of the same path on a node's own disk would not have it); refused in one line."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = out.resolve() / f".rtk-ray-probe-{uuid.uuid4().hex}"
    probe.write_text("written by the rtk driver; each node looks for it\n")
    try:
        sees = ray.remote(num_cpus=0)(_sees)
        checks = [
            sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote([str(probe), str(data.resolve())])
            for node in ray.nodes()
            if node.get("Alive")
        ]
        try:
            answers = ray.get(checks, timeout=SHARED_CHECK_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as exc:
            raise RayError(
                f"the Ray nodes did not answer within {SHARED_CHECK_TIMEOUT_S:.0f} s whether "
                "they see --out and the data; check `ray status`"
            ) from exc
        except ray.exceptions.RayError as exc:  # a node lost, or rtk not importable there
            raise RayError(
                f"a Ray node could not check --out and the data ({_cause(exc)}); every node "
                "needs rtk installed (the same commit) and the shared storage mounted"
            ) from exc
        for ip, missing in answers:
            if missing:
                raise RayError(
                    f"node {ip} does not see {out if str(probe) in missing else data}: --out "
                    "and the data must be storage every node mounts at the same path (NFS, a "
                    "shared volume)"
                )
    finally:
        probe.unlink(missing_ok=True)


def train_runs(
    jobs: list[tuple[dict[str, Any], Path]],
    data: Path,
    settings: RaySettings,
    *,
    tensorboard: bool,
    done: Callable[[Path, Any], None],
) -> None:
    """Each job (settings, run folder) as one Ray task, all submitted at once; ``done`` is
    called with each run and its ``TrainResult`` as it finishes. Ctrl-C cancels them all."""
    import ray

    assert settings.cpus_per_run is not None  # resolved by ray_session
    # A task without GPUs must not see any (Ray leaves CUDA_VISIBLE_DEVICES alone for it): it
    # would take an unreserved GPU with --device auto. One run per worker process (max_calls):
    # a finished run's memory goes with its process.
    env = {"CUDA_VISIBLE_DEVICES": ""} if not settings.gpus_per_run else {}
    # The user's own models (RTK_MODELS) must load in the task too: files by absolute path,
    # which every node sees only on the shared storage (docs/your-own-model.md).
    if models := os.environ.get("RTK_MODELS"):
        env["RTK_MODELS"] = ",".join(
            str(Path(m.strip()).resolve()) if m.strip().endswith(".py") else m.strip()
            for m in models.split(",")
            if m.strip()
        )
    task = ray.remote(
        num_cpus=settings.cpus_per_run,
        num_gpus=settings.gpus_per_run,
        max_retries=MAX_RETRIES,
        retry_exceptions=False,  # a run's own failure would only fail again
        max_calls=1,
        runtime_env={"env_vars": env} if env else None,
    )(_train_one)
    from toolkit.training.rundir import RunDir

    for _, run in jobs:  # before resolve(), which would follow a link out of --out
        RunDir.refuse_link(run)
    threads = max(1, int(settings.cpus_per_run))
    pending = {
        task.remote(config, str(run.resolve()), str(data.resolve()), tensorboard, threads): run
        for config, run in jobs
    }
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause
                if isinstance(cause, RtkError):  # the run's own one-line error, as local
                    raise type(cause)(str(cause)) from exc
                if isinstance(cause, OSError):  # the file system refused: the app's one line
                    raise cause from exc
                raise  # a bug: the app's "internal error" line, the traceback on RTK_DEBUG
            except ray.exceptions.WorkerCrashedError as exc:  # retries used up
                raise RayError(
                    f"{run}: its Ray worker died {MAX_RETRIES + 1} times; the run keeps every "
                    "finished epoch (`ray status`, the node's logs)"
                ) from exc
            except ray.exceptions.RayError as exc:  # out of memory, node lost, env setup...
                raise RayError(f"{run}: Ray could not run it ({_cause(exc)})") from exc
            done(run, result)
    finally:
        for ref in pending:  # Ctrl-C or a failure: stop the rest (each keeps its epochs)
            ray.cancel(ref, force=True)


def _cause(exc: BaseException) -> str:
    """A Ray error's first line, in a few words."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def job_settings(config: Any) -> dict[str, Any]:
    """A run's settings as a task takes them (JSON's types, the way config.json holds them)."""
    return json.loads(json.dumps(config.to_dict()))


def train_on_ray(
    jobs: list[tuple[Any, Path]],
    data: Path,
    settings: RaySettings,
    *,
    say: Callable[[str], None],
    done: Callable[[Path, Any], None],
    rerun: str,
    tensorboard: bool = False,
) -> None:
    """Train ``jobs`` (settings, run folder) as Ray tasks on a session already open, after
    checking that every node sees their folders and the data; Ctrl-C cancels them and names
    ``rerun``, the command that continues."""
    with interrupted_names(rerun):
        for folder in sorted({run.parent for _, run in jobs}):
            check_shared(folder, data)
        say(
            f"{len(jobs)} run(s) as Ray tasks, {settings.cpus_per_run or 0:g} CPU and "
            f"{settings.gpus_per_run:g} GPU each"
        )
        train_runs(
            [(job_settings(config), run) for config, run in jobs],
            data,
            settings,
            tensorboard=tensorboard,
            done=done,
        )


@contextmanager
def interrupted_names(rerun: str) -> Iterator[None]:
    """Ctrl-C anywhere in Ray's part of a command (starting the session, the storage check,
    the tasks) says that each run keeps its finished epochs and which command continues."""
    from toolkit.training import TrainingInterrupted

    try:
        yield
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted; the Ray tasks were cancelled and each run keeps its finished "
            f"epochs: rerun `{rerun}` to continue"
        ) from None


def ray_executor(
    settings: RaySettings, data: Path, *, say: Callable[[str], None], rerun: str
) -> Callable[[list[tuple[Any, Path]]], None]:
    """What ``rtk study depth`` and ``rtk reproduce`` hand their unfinished runs to under
    ``--executor ray``: each (settings, run folder) a Ray task, all at once, on a session opened
    for them; the command then reuses the finished runs as it would its own. ``rerun`` is the
    command that continues after Ctrl-C."""

    def execute(jobs: list[tuple[Any, Path]]) -> None:
        for _, run in jobs:
            run.parent.mkdir(parents=True, exist_ok=True)
        with interrupted_names(rerun), ray_session(settings) as resolved:
            train_on_ray(
                jobs,
                data,
                resolved,
                say=say,
                done=lambda run, _: say(f"{run}: trained as a Ray task"),
                rerun=rerun,
            )

    return execute
