"""Where one training step of an rtk model spends its time, by op: ``torch.profiler`` over rtk's
own step (channels_last, the fast recipe's Nesterov SGD and label smoothing, the trainer's
allocator setting) in fp32 or bf16 autocast, on random tensors. A diagnostic for the bf16
throughput goals (README "Precision"), not part of ``make bench``. Run it alone. Usage:
``python benchmarks/profile_step.py [ARCH] [--precision fp32|bf16] [--batch N] [--steps N]``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from toolkit.config import RECIPES
from toolkit.models import create_model
from toolkit.training.device import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", nargs="?", default="resnet18")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps, after 2 untimed")
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    fast = RECIPES["fast"]
    print(f"allocator: {keep_freed_memory()}")
    torch.manual_seed(0)
    model = create_model(args.arch).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=fast["nesterov"], foreach=True
    )
    x = torch.randn(args.batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=fast["label_smoothing"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    print(f"{args.arch}, {args.precision}, batch {args.batch}, {args.steps} steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
