"""Where a run computes: the device, its mixed precision, its memory reading."""

from __future__ import annotations

import ctypes
import platform
import resource

import torch

from toolkit.config import ConfigError, TrainConfig


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available here; use --device cpu or auto")
    if requested not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {requested!r}; choose auto, cpu or cuda")
    return requested


# glibc serves every block above its mmap threshold (dynamic, at most 32 MiB) with a fresh
# mapping and unmaps it on free, so every training step re-faults its large activations page
# by page: a batch-256 ResNet-18 step here took about 500,000 minor page faults and spent 12% of
# its CPU time in the kernel. A 1 GiB threshold (and trimming only above 2 GiB) keeps freed
# blocks in the heap for the next step: +12% ResNet-18 and Mini-ResNet training images/s
# (benchmarks/cpu_allocator.py). The cost: the process keeps its peak heap until it exits.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
KEEP_FREED_BYTES = 1 << 30
_TRIM_BYTES = 2**31 - 1  # mallopt takes a C int: 2 GiB itself would wrap to a negative value


def keep_freed_memory() -> str:
    """Make this process's glibc malloc reuse freed blocks instead of returning them to the
    kernel; returns what the allocator now does, for config.json."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "the platform's default allocator"
    process, glibc = ctypes.CDLL(None), ctypes.CDLL("libc.so.6")
    if _address(process.malloc) != _address(glibc.malloc):
        return "a preloaded allocator (LD_PRELOAD), left as it is"
    glibc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # glibc before 2.35 refuses an mmap threshold above 32 MiB: say so rather than claim it.
    said = [
        f"{name} {size / 2**20:.0f} MiB"
        if glibc.mallopt(param, size)
        else f"{name} default (mallopt refused {size / 2**20:.0f} MiB)"
        for name, param, size in (
            ("mmap threshold", _M_MMAP_THRESHOLD, KEEP_FREED_BYTES),
            ("trim threshold", _M_TRIM_THRESHOLD, _TRIM_BYTES),
        )
    ]
    return "glibc malloc, " + ", ".join(said)


def _address(function: object) -> int | None:
    return ctypes.cast(function, ctypes.c_void_p).value


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by tensors this epoch. CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if not config.amp:
        return None
    if device.type != "cuda":
        raise ConfigError(
            "--amp needs CUDA (bf16 autocast is slower than fp32 on this kind of CPU); "
            "drop --amp or use --device cuda"
        )
    # bf16 only where this GPU computes it natively (Ampere and later); emulated bf16 is slow,
    # so older GPUs get fp16 with the gradient scaler.
    with torch.cuda.device(device):
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native else torch.float16
