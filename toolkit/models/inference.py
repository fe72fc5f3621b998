"""Batched inference, the one loop from input batches to logits.

Training's evaluation, the test-split metrics and export parity all run their PyTorch forward
passes here, so eval mode, inference mode and mixed precision are decided in one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Mixed precision to ``dtype`` on ``device``; no-op when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.inference_mode()
def batched_logits(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Float32 logits of every input batch, concatenated in order.

    The model runs in eval mode (its previous mode is restored afterwards, so evaluation
    can sit between training steps) under autocast to ``amp_dtype`` where given.
    """
    was_training = model.training
    model.eval()
    try:
        logits = []
        for x in batches:
            with autocast(x.device, amp_dtype):
                logits.append(model(x).float())
    finally:
        model.train(was_training)
    return torch.cat(logits)
