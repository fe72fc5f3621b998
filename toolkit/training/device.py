"""Where a run computes: the device, its mixed precision, its memory reading."""

from __future__ import annotations

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
