"""Inference targets on this CPU, measured side by side in one run.

1. ONNX Runtime at least 2x faster than PyTorch eager at batch 1, for every model.
2. ResNet-18 fp32 at batch 256 reaches at least 85% of the machine's fp32 ceiling (a
   2048x2048 matrix product measured in the same run).
3. INT8 ResNet-18 at least 2x the fp32 throughput at batch 64 and above.

The INT8 model comes from `rtk export --int8` of a freshly initialised ResNet-18 checkpoint,
calibrated and validated on real CIFAR-10 images (speed does not depend on the weights).
Usage: ``python benchmarks/inference.py [--data PATH] [--seconds S] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from analysis.bench import BenchSettings, resolve_targets, run_bench
from exporters.convert import export_onnx
from toolkit.data import load_dataset
from toolkit.models import PAPER, architecture_names
from toolkit.training import initial_checkpoint, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per case")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    dataset = load_dataset(args.data)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        run = work / "resnet18-int8"
        run.mkdir()
        save_checkpoint(run / "best.pt", initial_checkpoint("resnet18", list(dataset.classes)))
        export_onnx(run, dataset=dataset, int8=True)
        targets, notes = resolve_targets(
            architecture_names(PAPER), runs=work, workdir=work, input_shape=None
        )
        int8 = [t for t in resolve_targets([str(run)], runs=work, workdir=work, input_shape=None)[0]
                if t.precision == "int8"]  # fmt: skip
        timing = BenchSettings(
            provider="cpu", batch_sizes=(1, 8, 64, 256), warmup=5, seconds=args.seconds
        )
        fp32 = run_bench(targets, settings=timing, notes=notes)
        int8_timing = dataclasses.replace(timing, batch_sizes=(64, 256), compare_torch=False)
        quantized = run_bench(int8, settings=int8_timing, notes=[])

    ort = {(r.model, r.stats.batch): r for r in fp32.rows if r.engine == "onnxruntime"}
    print(f"machine: {fp32.machine.cpu}, torch threads {fp32.machine.torch_threads}, "
          f"ORT {fp32.machine.ort_version} on {fp32.running}")  # fmt: skip
    print(f"fp32 ceiling: {fp32.fp32_ceiling_gflops:.0f} GFLOP/s\n")
    print(f"{'model':<16} {'batch':>5} {'ORT img/s':>10} {'eager img/s':>12} {'ORT/eager':>9}")
    for (model, batch), row in ort.items():
        eager = next(r for r in fp32.rows if r.model == model and r.stats.batch == batch
                     and r.engine.startswith("torch"))  # fmt: skip
        print(f"{model:<16} {batch:>5} {row.stats.images_per_s:>10,.0f} "
              f"{eager.stats.images_per_s:>12,.0f} {row.speedup_vs_eager:>8.2f}x")  # fmt: skip

    print("\ntargets:")
    batch1 = {m: ort[(m, 1)].speedup_vs_eager or 0 for m in architecture_names(PAPER)}
    worst = min(batch1, key=batch1.get)  # type: ignore[arg-type]
    print(f"1. ORT/eager at batch 1 >= 2x for every model: worst {worst} {batch1[worst]:.2f}x "
          f"-> {'met' if batch1[worst] >= 2 else 'NOT met'}")  # fmt: skip
    r18 = ort[("resnet18", 256)]
    share = (r18.gflops or 0) / (fp32.fp32_ceiling_gflops or 1)
    print(f"2. ResNet-18 fp32 batch 256: {r18.gflops:.0f} GFLOP/s = {share:.0%} of the ceiling "
          f"-> {'met' if share >= 0.85 else 'NOT met'}")  # fmt: skip
    for row in quantized.rows:
        base = ort[("resnet18", row.stats.batch)].stats.images_per_s
        ratio = row.stats.images_per_s / base
        verdict = "met" if ratio >= 2 else "NOT met"
        print(f"3. INT8 ResNet-18 batch {row.stats.batch}: {row.stats.images_per_s:,.0f} img/s "
              f"vs fp32 {base:,.0f} = {ratio:.2f}x -> {verdict}")  # fmt: skip
    for verdict in fp32.verdicts:
        print(f"\n{verdict.claim}: {verdict.verdict}\n  {verdict.evidence}")
    if args.json:
        reports = {"fp32": dataclasses.asdict(fp32), "int8": dataclasses.asdict(quantized)}
        args.json.write_text(json.dumps(reports, indent=2, default=str))


if __name__ == "__main__":
    main()
