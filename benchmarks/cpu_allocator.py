"""The CPU trainer's allocator setting, measured: glibc's default against ``keep_freed_memory``.

Each case runs in a fresh process (the setting is process-wide and cannot be undone), the two
alternating ``--rounds`` times so a shared machine's drift hits both alike: the fast recipe's
training step (batch 256, channels_last, Nesterov SGD with foreach updates) on random images,
``--steps`` timed steps after 2 untimed ones. Reported per case: training images/s, the minor
page faults and the kernel (system) CPU seconds of the timed steps, and the ratio of the
medians. Usage: ``python benchmarks/cpu_allocator.py [--steps N] [--rounds N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STEPS = {"mini-resnet": 12, "resnet18": 4}  # about 6 and 25 s per case on 2 AVX2 cores


def child(arch: str, steps: int, keep: bool) -> dict[str, Any]:
    """One case, in this process: timed training steps of ``arch``."""
    import torch
    import torch.nn.functional as F

    from toolkit.models import create_model
    from toolkit.training.device import keep_freed_memory

    allocator = keep_freed_memory() if keep else "glibc default"
    torch.manual_seed(0)
    model = create_model(arch).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, foreach=True
    )
    x = torch.randn(256, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (256,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "images_per_s": steps * 256 / seconds,
        "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
        "system_s_per_step": (after.ru_stime - before.ru_stime) / steps,
        "user_s_per_step": (after.ru_utime - before.ru_utime) / steps,
        "allocator": allocator,
    }


def run_case(arch: str, steps: int, keep: bool) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", arch, str(steps), "1" if keep else "0"]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default per model)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from analysis.latency import cpu_model

    print(f"machine: {cpu_model()}; fast-recipe training step, batch 256, random images")
    models: dict[str, object] = {}
    for arch, default_steps in STEPS.items():
        steps = args.steps or default_steps
        cases: dict[str, list[dict[str, Any]]] = {"default": [], "keep_freed_memory": []}
        for _ in range(args.rounds):
            cases["default"].append(run_case(arch, steps, keep=False))
            cases["keep_freed_memory"].append(run_case(arch, steps, keep=True))
        medians = {}
        for name, runs in cases.items():
            rate = statistics.median(r["images_per_s"] for r in runs)
            faults = statistics.median(r["minor_faults_per_step"] for r in runs)
            system = statistics.median(r["system_s_per_step"] for r in runs)
            user = statistics.median(r["user_s_per_step"] for r in runs)
            medians[name] = rate
            print(
                f"{arch:<12} {name:<18} {rate:8.1f} img/s  {faults:>10,.0f} minor faults/step  "
                f"kernel {system:5.2f} s, user {user:5.2f} s per step"
            )
        gain = medians["keep_freed_memory"] / medians["default"]
        print(f"{arch:<12} keep_freed_memory / default = {gain:.2f}x")
        models[arch] = {"cases": cases, "ratio": gain}
    if args.json:
        report = {"machine": cpu_model(), "models": models}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
