"""Training cost of one step per model: images per second and activation memory.

Memory is the activation memory autograd holds for the backward pass, measured the same way on
every device: the bytes of every distinct tensor storage saved during the forward
(``torch.autograd.graph.saved_tensors_hooks``), parameters excluded. That is what skip
connections could add to, and so what claim (i) compares. A whole step's CUDA peak
(``max_memory_allocated``) would also count the weights, their gradients and Adam's two
moments, which skips do not change, and would make the claim mean something else on a GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from toolkit.models import create_model
from toolkit.models.inference import autocast
from toolkit.training.device import FP32, Precision

MEMORY_METHOD = "activation bytes saved for backward (saved_tensors_hooks, distinct storages)"


@dataclass(frozen=True)
class TrainStepResult:
    arch: str
    batch: int
    device: str
    images_per_s: float
    step_ms: float
    memory_mb: float
    memory_method: str
    precision: str  # fp32, or the autocast dtype of forward and loss


def saved_activation_bytes(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, amp_dtype: torch.dtype | None
) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward pass."""
    seen: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not _cast_of_parameter(tensor, params):  # autocast's bf16 weight copies: weights
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(x.device, amp_dtype):
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    # Parameters are saved too (conv weights for the input gradient); they are not activations.
    return sum(n for ptr, n in seen.items() if ptr not in params)


def _cast_of_parameter(tensor: torch.Tensor, params: set[int]) -> bool:
    """Whether ``tensor`` is autocast's lower-precision copy of a parameter (a ``_to_copy``
    whose input is a leaf among ``params``)."""
    fn = tensor.grad_fn
    if fn is None or fn.name() != "ToCopyBackward0":
        return False
    source = getattr(fn.next_functions[0][0], "variable", None)
    return source is not None and source.untyped_storage().data_ptr() in params


def bench_train_step(
    arch: str,
    *,
    batch: int = 64,
    device: str = "cpu",
    precision: Precision = FP32,
    warmup: int = 2,
    iters: int = 5,
) -> TrainStepResult:
    amp_dtype = precision.dtype
    torch.manual_seed(0)
    model = create_model(arch).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(x.device, amp_dtype):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    step_s = (time.perf_counter() - start) / iters
    optimizer.zero_grad(set_to_none=True)
    memory = saved_activation_bytes(model, x, y, amp_dtype=amp_dtype)
    return TrainStepResult(
        arch,
        batch,
        device,
        batch / step_s,
        step_s * 1e3,
        memory / 2**20,
        MEMORY_METHOD,
        precision.name,
    )
