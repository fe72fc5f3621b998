"""CPU inference beyond ONNX Runtime fp32, side by side in one run (issue 29's goals).

Every runtime and precision this CPU runs natively, each verified (OpenVINO's layer precisions
read back from the compiled model), timed at batch 1 and 64 against ONNX Runtime fp32, and, for
trained runs, run over the whole test split against PyTorch fp32:

1. ResNet-18: the fastest verified configuration >= 4x ORT fp32 at batch 1 and >= 3x at 64.
2. Every Table I model: >= 2x at both batch sizes.
3. Each of those within 0.5 points of fp32 test accuracy (trained runs only).
4. ORT INT8 ResNet-18 >= 3x ORT fp32 at batch 64.

Usage: ``python benchmarks/cpu_runtimes.py [RUN ...] [--data PATH] [--seconds S] [--json F]``.
Each RUN is a trained run folder; it is exported (fp32 and the int8 Q/DQ copy) unless it already
holds both. Without RUNs, the four Table I architectures are exported from fresh weights (int8
calibrated on real images) and no accuracy is measured: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from analysis.bench import BenchReport, BenchSettings, resolve_targets, run_bench
from exporters.convert import export_onnx
from exporters.openvino import cpu_capabilities
from toolkit.cli.output import to_json
from toolkit.data import Dataset, load_dataset
from toolkit.fileio import atomic_path
from toolkit.models import PAPER, architecture_names
from toolkit.training import initial_checkpoint, save_checkpoint

BATCHES = (1, 64)
MAX_DROP = 0.5  # points of test accuracy below PyTorch fp32


def _runs(args: argparse.Namespace, dataset: Dataset, work: Path) -> list[Path]:
    runs = list(args.runs)
    if not runs:  # fresh weights: latency does not depend on them
        for arch in architecture_names(PAPER):
            run = work / arch
            run.mkdir()
            save_checkpoint(run / "best.pt", initial_checkpoint(arch, list(dataset.classes)))
            runs.append(run)
    for run in runs:
        if not ((run / "model.onnx").is_file() and (run / "model.int8.onnx").is_file()):
            export_onnx(run, dataset=dataset, int8=True)
    return runs


def _goal(arch: str | None, batch: int) -> float:
    """The speed-up over ORT fp32 the fastest verified configuration must reach."""
    if arch == "resnet18":
        return 4.0 if batch == 1 else 3.0
    return 2.0


def _goals(report: BenchReport, trained: bool) -> list[str]:
    """Per model and batch, the fastest row that ran verified (and, for trained runs, within
    0.5 points of fp32 accuracy), against its goal; then ORT int8's ResNet-18 goal."""
    drops = {
        (a.model, a.engine, a.precision): (a.parity.acc_torch - a.parity.acc_onnx) * 100
        for a in report.accuracy
        if a.parity.acc_torch is not None and a.parity.acc_onnx is not None
    }
    lines = []
    for model in sorted({r.model for r in report.rows}):
        for batch in BATCHES:
            fit = [
                r for r in report.rows
                if r.model == model and r.stats.batch == batch and r.vs_ort_fp32
                and r.engine != "torch-eager"  # the reference, never the fastest
                and (not trained or drops.get((r.model, r.engine, r.precision), 99) <= MAX_DROP)
            ]  # fmt: skip
            best = max(fit, key=lambda r: r.vs_ort_fp32 or 0.0)
            goal = _goal(best.arch, batch)
            drop = drops.get((best.model, best.engine, best.precision))
            lines.append(
                f"{model} batch {batch}: fastest verified {best.engine} {best.precision} "
                f"{best.vs_ort_fp32:.2f}x ORT fp32 (goal >= {goal:g}x: "
                f"{'met' if (best.vs_ort_fp32 or 0) >= goal else 'MISSED'}"
                + (f"; {drop:+.2f} pt below fp32 accuracy" if drop is not None else "")
                + f"; {best.detail or best.provider})"
            )
    for r in report.rows:
        if (r.arch, r.engine, r.precision, r.stats.batch) == (
            "resnet18",
            "onnxruntime",
            "int8",
            64,
        ):
            met = "met" if (r.vs_ort_fp32 or 0) >= 3.0 else "MISSED"
            lines.append(
                f"ORT int8 ResNet-18, batch 64: {r.vs_ort_fp32:.2f}x ORT fp32 (goal >= 3x: {met})"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="trained run folders")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per case")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    bf16 = "BF16" in cpu_capabilities()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        dataset = load_dataset(args.data)
        runs = _runs(args, dataset, work)
        specs = [str(r / name) for r in runs for name in ("model.onnx", "model.int8.onnx")]
        targets, notes = resolve_targets(specs, runs=work, workdir=work, input_shape=None)
        settings = BenchSettings(
            provider="cpu", batch_sizes=BATCHES, warmup=5, seconds=args.seconds,
            threads=args.threads, runtimes=("ort", "openvino"), bf16=bf16,
        )  # fmt: skip
        trained = bool(args.runs)
        report = run_bench(
            targets, settings=settings, notes=notes,
            accuracy_on=(lambda: dataset) if trained else None,
        )  # fmt: skip

    m = report.machine
    print(f"machine: {m.cpu}, {m.cores} cores; ORT {m.ort_version}, OpenVINO {m.openvino_version}")
    print(f"OpenVINO CPU capabilities: {', '.join(cpu_capabilities())}; {report.openvino}")
    print(f"fp32 ceiling: {report.fp32_ceiling_gflops:.0f} GFLOP/s (same run)\n")
    print(f"{'model':<22} {'engine':<12} {'prec':<5} {'batch':>5} {'img/s':>9} {'vs ORT fp32':>11}")
    for r in report.rows:
        ratio = f"{r.vs_ort_fp32:.2f}x" if r.vs_ort_fp32 else ""
        print(f"{r.model:<22} {r.engine:<12} {r.precision:<5} {r.stats.batch:>5} "
              f"{r.stats.images_per_s:>9,.0f} {ratio:>11}")  # fmt: skip
    if report.accuracy:
        print(f"\naccuracy on {report.accuracy[0].parity.images:,} test images:")
        for a in report.accuracy:
            p = a.parity
            print(f"{a.model:<22} {a.engine:<12} {a.precision:<5} {p.acc_onnx:.2%} "
                  f"(PyTorch fp32 {p.acc_torch:.2%}), agreement {p.agreement:.2%}")  # fmt: skip
    print()
    for line in _goals(report, trained):
        print(line)
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(to_json(report))


if __name__ == "__main__":
    main()
