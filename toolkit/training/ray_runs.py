"""Many training runs across machines: each run one Ray task, writing its ordinary run folder.

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

import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import RtkError

MAX_RETRIES = 3  # a worker or node that dies: the run resumes from its last.pt this many times


class RayError(RtkError):
    """Ray cannot start, cannot reach its cluster, or cannot run the tasks as asked."""


@dataclass(frozen=True)
class RaySettings:
    address: str | None  # a running cluster ("auto", "ray://host:10001"); None: a local one
    cpus_per_run: float
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
    dataset = load_dataset(Path(data))
    board = Observers(TensorBoardObserver(Path(run))) if tensorboard else None
    _, trainer = open_run(config, Path(run), dataset, observer=board)
    return None if trainer is None else trainer.run()


def _sees(paths: list[str]) -> tuple[str, list[str]]:
    """In a Ray task on one node: that node's address and the paths it cannot see."""
    import ray

    return ray.util.get_node_ip_address(), [p for p in paths if not os.path.exists(p)]


@contextmanager
def ray_session(settings: RaySettings) -> Iterator[None]:
    """Ray connected (to ``settings.address``, else ``RAY_ADDRESS``, else a new local instance
    of this machine's CPUs), and shut down again when the block ends."""
    import ray

    address = settings.address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_listening(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(
                num_cpus=os.cpu_count(),
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
        _check_resources(settings)
        yield
    finally:
        ray.shutdown()


CONNECT_TIMEOUT_S = 10.0


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


def _check_resources(settings: RaySettings) -> None:
    import ray

    have = ray.cluster_resources()
    for name, wanted, flag in (
        ("CPU", settings.cpus_per_run, "--cpus-per-run"),
        ("GPU", settings.gpus_per_run, "--gpus-per-run"),
    ):
        if wanted > have.get(name, 0):
            raise RayError(
                f"{flag} {wanted:g}, but the Ray cluster has {have.get(name, 0):g} {name}s in "
                f"all: no run could ever be scheduled; lower {flag} or add nodes"
            )


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
        for ip, missing in ray.get(checks):
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

    task = ray.remote(
        num_cpus=settings.cpus_per_run,
        num_gpus=settings.gpus_per_run,
        max_retries=MAX_RETRIES,
        retry_exceptions=False,  # a run's own failure would only fail again
    )(_train_one)
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
                    raise type(cause)(str(cause)) from None
                raise RayError(f"{run} failed in its Ray worker: {cause!r}") from None
            except ray.exceptions.RayError as exc:  # retries used up: the worker kept dying
                raise RayError(
                    f"{run}: its Ray worker died {MAX_RETRIES + 1} times "
                    f"({type(exc).__name__}); it keeps every finished epoch"
                ) from None
            done(run, result)
    finally:
        for ref in pending:  # Ctrl-C or a failure: stop the rest (each keeps its epochs)
            ray.cancel(ref, force=True)


def job_settings(config: Any) -> dict[str, Any]:
    """A run's settings as a task takes them (JSON's types, the way config.json holds them)."""
    return json.loads(json.dumps(config.to_dict()))
