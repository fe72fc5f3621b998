"""DistributedDataParallel through torchrun: gloo on the CPU, nccl on CUDA.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them, training is one process and
every helper here is a no-op. Each rank trains on its own shard of every epoch, so the
effective batch is ``batch_size * world_size``; only rank 0 writes files and prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from toolkit.config import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device_type: str) -> World:
    """Join the process group torchrun prepared, if any. On CUDA each rank first claims its
    own GPU: without ``set_device`` and ``device_id``, NCCL's object collectives build their
    tensors on cuda:0 on every rank and the run hangs."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return World()
    world = World(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        size=int(os.environ["WORLD_SIZE"]),
    )
    if dist.is_initialized():
        return world
    if device_type == "cuda":
        check_gpus(world.local_rank + 1)
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        dist.init_process_group(backend="gloo")
    return world


def check_gpus(needed: int) -> None:
    """Refuse, in one line, more processes per machine than it has visible GPUs."""
    visible = torch.cuda.device_count()
    if needed > visible:
        raise ConfigError(
            f"{needed} processes on this machine need {needed} GPUs but {visible} "
            f"{'is' if visible == 1 else 'are'} visible (CUDA_VISIBLE_DEVICES); "
            f"pass --nproc {visible} or fewer, or --device cpu"
        )


def device_for(world: World, device_type: str) -> torch.device:
    if device_type == "cuda":
        return torch.device("cuda", world.local_rank)
    return torch.device(device_type)


def gather_object(world: World, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not world.distributed:
        return [value]
    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def broadcast_object(world: World, value: Any) -> Any:
    """Rank 0's value on every rank (a run name, a decision)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(world: World, model: nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics, so evaluations agree exactly across
    ranks (DDP averages gradients, but each rank's running statistics saw its own shard)."""
    if not world.distributed:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def wrap(world: World, model: nn.Module, device: torch.device) -> nn.Module:
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
