"""``--executor local|ray`` and its options, shared by the commands that train several runs
(``rtk train --seeds``, ``rtk study depth``, ``rtk reproduce``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from toolkit.cluster import RaySettings

EXECUTOR = typer.Option(
    "local",
    help="local (one run after another, here) or ray (each run a Ray task, on a cluster or a "
    "local Ray instance; the output folder and the data on storage every node sees).",
)
RAY_ADDRESS = typer.Option(
    None, help="--executor ray: the cluster to use \\[RAY_ADDRESS, else a local instance]."
)
CPUS_PER_RUN = typer.Option(
    None, help="--executor ray: CPUs each run takes \\[this machine's count]."
)
GPUS_PER_RUN = typer.Option(0.0, help="--executor ray: GPUs each run takes.")


def ray_settings(
    executor: str, address: str | None, cpus: float | None, gpus: float
) -> RaySettings | None:
    """The Ray executor's settings, or None for the local loop; refused in one line when off."""
    from toolkit.cluster import RaySettings
    from toolkit.training import ConfigError

    if executor not in ("local", "ray"):
        raise ConfigError(f"--executor is local or ray, got {executor!r}")
    if executor == "local":
        given = [
            f for f, v in (("--ray-address", address), ("--cpus-per-run", cpus)) if v is not None
        ]
        if gpus:
            given.append("--gpus-per-run")
        if given:
            raise ConfigError(f"{', '.join(given)} go with --executor ray")
        return None
    if not (cpus is None or (math.isfinite(cpus) and cpus > 0)) or not (
        math.isfinite(gpus) and gpus >= 0
    ):
        raise ConfigError(
            f"--cpus-per-run must be positive and --gpus-per-run 0 or more, got {cpus} and {gpus}"
        )
    return RaySettings(address=address, cpus_per_run=cpus, gpus_per_run=gpus)


def ray_flags(ray: RaySettings | None) -> str:
    """The options that train on Ray again, for the command printed after Ctrl-C."""
    if ray is None:
        return ""
    address = f" --ray-address {ray.address}" if ray.address else ""
    cpus = f" --cpus-per-run {ray.cpus_per_run:g}" if ray.cpus_per_run is not None else ""
    gpus = f" --gpus-per-run {ray.gpus_per_run:g}" if ray.gpus_per_run else ""
    return f" --executor ray{address}{cpus}{gpus}"


def executor_for(
    ray: RaySettings | None, data: Path, rerun: str
) -> Callable[[list[tuple[Any, Path]]], None] | None:
    """``rtk study depth`` / ``rtk reproduce``: what trains their unfinished runs, None for
    this process (one run after another)."""
    if ray is None:
        return None
    from toolkit.cli.output import notice
    from toolkit.cluster import ray_executor

    return ray_executor(ray, data, say=notice, rerun=rerun)
