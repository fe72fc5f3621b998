"""Where a run computes: the device, its mixed precision, its memory reading."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import platform
import re
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from toolkit.config import Amp, ConfigError, TrainConfig

CPUINFO = Path("/proc/cpuinfo")
# x86 flags of a CPU that computes bf16 dot products in hardware (AVX512-BF16: Zen 4 and later,
# Cooper Lake; AMX-BF16: Sapphire Rapids and later). Without them oneDNN emulates bf16 and
# autocast trains slower than fp32 (PyTorch issues #118499, #183815).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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
# by page and spends a good share of its CPU time in the kernel. A 1 GiB threshold (and
# trimming only above 2 GiB) keeps freed blocks in the heap for the next step; the gain is
# measured by benchmarks/cpu_allocator.py (figures: docs/speed-precision.md). The cost: the
# process keeps its peak heap until it exits.
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


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of /proc/cpuinfo (x86 ``flags``, Arm ``Features``)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_description() -> str:
    """The CPU a run computes on, for config.json and `rtk doctor`: its name, x86 family and model
    (a VM's name may say only "AMD EPYC"; the model tells Zen 4 from Zen 5) and the cores usable."""
    try:
        cpuinfo = CPUINFO.read_text()
    except OSError:
        cpuinfo = ""

    def field(key: str) -> str | None:
        match = re.search(rf"^{key}\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        return match.group(1).strip() if match else None

    name = field("model name") or platform.processor() or "unknown CPU"
    family, model = field("cpu family"), field("model")
    kind = f" (family {family}, model {model})" if family and model else ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}{kind}, {cores} logical CPUs usable"


@dataclass(frozen=True)
class Bf16Support:
    native: bool
    source: str  # how it was decided, for `rtk doctor` and the refusal


def cpu_bf16_support() -> Bf16Support:
    """Whether this CPU computes bf16 natively, read from the kernel's CPU flags. Arm's ``bf16``
    feature is not taken as native: autocast's speed there has not been measured."""
    cpuinfo = CPUINFO
    try:
        flags = cpu_flags(cpuinfo.read_text())
    except OSError:
        return Bf16Support(False, f"{cpuinfo} unreadable, so no CPU flags to go by")
    found = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    if found:
        return Bf16Support(True, f"{cpuinfo} lists {', '.join(found)}")
    return Bf16Support(False, f"{cpuinfo} lists neither {' nor '.join(NATIVE_BF16_FLAGS)}")


@dataclass(frozen=True)
class Precision:
    """What a run computes in on this machine, and why (config.json records both)."""

    dtype: torch.dtype | None  # the autocast dtype; None: no autocast
    name: str  # fp32, tf32 (a GPU's fp32 convolutions on tensor cores), bf16 or fp16
    why: str


FP32 = Precision(None, "fp32", "amp off in the settings")


def resolve_precision(amp: Amp, device: torch.device, *, resuming: bool = False) -> Precision:
    """The precision ``amp`` gives on ``device``. ``--amp`` asks for mixed precision and is
    refused where it would be slower; the fast recipe's ``auto`` takes bf16 only where the
    device computes it natively and stays fp32 elsewhere. ``resuming``: the refusal says how to
    continue a run started with ``--amp``, whose settings cannot change."""
    if device.type == "cuda":
        # bf16 where this GPU computes it natively (Ampere and later); emulated bf16 is slow,
        # so older GPUs get fp16 with the gradient scaler, and only when asked for.
        with torch.cuda.device(device):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
            # cuDNN runs "fp32" convolutions in TF32 on Ampere and later unless told not to.
            tf32 = torch.backends.cudnn.allow_tf32 and torch.cuda.get_device_capability()[0] >= 8
        full = dataclasses.replace(FP32, name="tf32") if tf32 else FP32
        if amp is False:
            return full
        if native:
            return Precision(torch.bfloat16, "bf16", "the GPU computes bf16 natively")
        if amp is True:
            return Precision(torch.float16, "fp16", "the GPU has no native bf16: fp16, scaled")
        return Precision(None, full.name, "amp auto: the GPU has no native bf16")
    if amp is False:
        return FP32
    support = cpu_bf16_support()
    why = f"native bf16 {'yes' if support.native else 'no'}: {support.source}"
    if support.native:
        return Precision(torch.bfloat16, "bf16", why)
    if amp is True:
        fix = (
            "resume it on a CPU with native bf16 (its settings cannot change)"
            if resuming
            else "drop --amp"
        )
        raise ConfigError(
            f"--amp on this CPU would train slower than fp32: it has no native bf16 "
            f"({support.source}); {fix}"
        )
    return Precision(None, "fp32", why)


def check_precision(config: TrainConfig, *, resuming: bool = False) -> Precision:
    """The precision ``config`` would train in on this machine; refuses what
    ``resolve_precision`` refuses, so a command can fail before it reads data or makes a folder."""
    device = torch.device(resolve_device(config.device))
    return resolve_precision(config.amp, device, resuming=resuming)


@contextmanager
def strict_fp32() -> Iterator[None]:
    """fp32 that is fp32 on a GPU too: no TF32 in cuDNN's convolutions or CUDA's matmuls
    (the test pass; a no-op on the CPU)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
