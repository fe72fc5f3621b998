"""What Ray costs on one machine: a two-seed group trained by the local loop and by
``--executor ray`` (a local Ray instance, one run at a time with the local loop's threads).

Both are the real CLI in a fresh process (``rtk train baseline-cnn --seeds 0,1``), alternating
``--rounds`` times so a shared machine's drift hits both alike; each case trains into a new
folder. Reported: each case's wall times, the medians, Ray's overhead in seconds and as a ratio,
and whether both trained the same numbers (they must). Usage:
``python benchmarks/ray_overhead.py [--data D] [--epochs N] [--subset N] [--rounds N] [--json P]``
(the data as ``rtk train`` finds it unless ``--data``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from toolkit.training.device import cpu_description

RTK = str(Path(sys.executable).with_name("rtk"))


def _group(data: str | None, out: Path, epochs: int, subset: int, ray: bool) -> float:
    command = [RTK, "train", "baseline-cnn", "--seeds", "0,1", "--recipe", "fast", "--epochs",
               str(epochs), "--train-subset", str(subset), "--val-size", "1000", "--out",
               str(out), "--name", "g", "--quiet"]  # fmt: skip
    if data is not None:  # else rtk's own lookup: RTK_DATA, its cache, a download
        command += ["--data", data]
    if ray:
        command += ["--executor", "ray"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local instance
    start = time.perf_counter()
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:  # rtk's own one-line reason, not a bare exit status
        sys.exit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return seconds


def _numbers(group: Path) -> list[Any]:
    return [json.loads((group / f"seed-{s}" / "metrics.json").read_text())["test_acc"]
            for s in (0, 1)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"local": [], "ray": []}
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.rounds):
            folders = {}
            for case in ("local", "ray"):
                folders[case] = Path(tmp) / f"{case}-{index}"
                seconds = _group(args.data, folders[case], args.epochs, args.subset, case == "ray")
                times[case].append(seconds)
                print(f"round {index + 1} {case}: {seconds:.1f} s", flush=True)
            same &= _numbers(folders["local"] / "g") == _numbers(folders["ray"] / "g")
    local, ray = (statistics.median(times[c]) for c in ("local", "ray"))
    report = {
        "machine": cpu_description(),
        "group": f"baseline-cnn, seeds 0 and 1, fast recipe, {args.epochs} epochs on a seeded "
        f"{args.subset:,}-image subset",
        "seconds": times,
        "median_local_s": local,
        "median_ray_s": ray,
        "ray_overhead_s": ray - local,
        "ray_over_local": ray / local,
        "same_numbers": same,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
