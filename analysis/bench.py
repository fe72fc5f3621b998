"""``rtk bench``: which models to bench, the whole benchmark run, and where results go.

Claim (iii) of the paper's section IV-E (similar inference latency across the four models)
is judged from each run's own numbers (``analysis.claims.latency_verdict``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from analysis.claims import Verdict, latency_verdict
from analysis.latency import (
    BenchRow,
    BenchTarget,
    LatencyStats,
    Machine,
    bench_onnx,
    bench_torch,
    cpu_model,
    fp32_ceiling_gflops,
)
from analysis.params import count_macs
from exporters.errors import ExportError
from exporters.runtime import Provider, ProviderUnavailableError
from toolkit.errors import UnknownArchitectureError
from toolkit.fileio import atomic_path
from toolkit.models import create_model, get_architecture


@dataclass(frozen=True)
class BenchReport:
    timestamp: str
    machine: Machine
    provider: str  # as asked
    running: str  # the provider ORT ran, verified
    threads: int | None
    fp32_ceiling_gflops: float | None
    rows: list[BenchRow]
    verdicts: list[Verdict]
    notes: list[str]


def _load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ExportError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from exc


def _shape_from_model(
    model: onnx.ModelProto, path: Path, fill: tuple[int, ...] | None
) -> tuple[int, ...]:
    """Per-image input shape from the graph; ``fill`` supplies dynamic dimensions."""
    dims = model.graph.input[0].type.tensor_type.shape.dim[1:]
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if None in shape:
        if fill is None or len(fill) != len(shape):
            raise ExportError(
                f"{path} has dynamic input dimensions {shape} (after the batch); "
                "give them with --input-shape C,H,W"
            )
        return tuple(fill)
    return tuple(int(d) for d in shape)  # type: ignore[arg-type]


def _from_onnx(path: Path, fill: tuple[int, ...] | None, name: str | None = None) -> BenchTarget:
    graph = _load(path)
    props = {p.key: p.value for p in graph.metadata_props}
    arch = props.get("rtk.arch")
    # Latency does not depend on weights: eager runs a fresh model of the same architecture.
    model = create_model(arch) if arch else None
    return BenchTarget(
        name=name or arch or path.stem,
        onnx_path=path,
        precision=props.get("rtk.precision", "fp32"),
        arch=arch,
        torch_model=model,
        input_shape=_shape_from_model(graph, path, fill),
        macs=count_macs(model) if model is not None else None,
    )


def resolve_targets(
    specs: list[str], *, runs: Path, workdir: Path, input_shape: tuple[int, ...] | None
) -> tuple[list[BenchTarget], list[str]]:
    """ONNX files, run directories (every precision exported there) and architecture names
    (a fresh fp32 export); with no specs, every exported run under ``runs``."""
    from exporters.convert import simplify_proto, to_onnx_proto
    from exporters.opset import opset_support

    notes: list[str] = []
    if not specs:
        specs = [str(p.parent) for p in sorted(runs.glob("*/model.onnx"))]
        if not specs:
            raise ExportError(
                f"no exported run under {runs}/: run `rtk export --onnx` or name models"
            )
    targets: list[BenchTarget] = []
    for spec in specs:
        path = Path(spec)
        if path.suffix == ".onnx":
            if not path.is_file():
                raise ExportError(f"model {path} does not exist")
            targets.append(_from_onnx(path, input_shape))
        elif path.is_dir():
            files = sorted(path.glob("model*.onnx"))
            if not files:
                raise ExportError(f"{path} holds no model.onnx; run `rtk export {path} --onnx`")
            targets += [_from_onnx(f, input_shape, name=path.name) for f in files]
        else:
            try:
                arch = get_architecture(spec)
            except UnknownArchitectureError as exc:
                raise ExportError(
                    f"{spec!r} is not an ONNX file, a run directory or {exc}"
                ) from exc
            model = arch.build().eval()
            out = workdir / f"{arch.name}.onnx"
            proto = simplify_proto(to_onnx_proto(model, opset_support().default))
            onnx.helper.set_model_props(proto, {"rtk.arch": arch.name, "rtk.precision": "fp32"})
            onnx.save(proto, str(out))
            targets.append(
                BenchTarget(
                    arch.name, out, "fp32", arch.name, model, (3, 32, 32), count_macs(model)
                )
            )
            notes.append(
                f"{arch.name}: freshly initialised weights (latency does not depend on them)"
            )
    return targets, notes


def run_bench(
    targets: list[BenchTarget],
    *,
    provider: Provider,
    batch_sizes: list[int],
    warmup: int,
    iters: int | None,
    seconds: float | None,
    threads: int | None,
    io_binding: bool,
    compare_torch: bool,
    channels_last: bool,
    notes: list[str],
) -> BenchReport:
    import onnxruntime as ort

    from exporters.runtime import create_session

    # Refuse an unavailable provider before anything is timed, so no CPU number is ever
    # measured (let alone recorded) under a GPU label.
    create_session(targets[0].onnx_path, provider, threads=threads)
    if provider != "cpu" and compare_torch and not torch.cuda.is_available():
        raise ProviderUnavailableError(
            f"ONNX Runtime runs {provider}, but PyTorch sees no CUDA for the eager comparison; "
            "pass --no-compare-torch or install a CUDA build of PyTorch"
        )
    if threads is not None:
        torch.set_num_threads(threads)
    device = "cuda" if provider in ("cuda", "tensorrt") else "cpu"
    rows: list[BenchRow] = []
    running = ""
    for target in targets:
        for batch in batch_sizes:
            eager: LatencyStats | None = None
            # Eager is fp32: timed once per architecture and batch, beside the fp32 export.
            if compare_torch and target.torch_model is not None and target.precision == "fp32":
                eager = bench_torch(
                    target.torch_model,
                    batch,
                    device=device,
                    input_shape=target.input_shape,
                    warmup=warmup,
                    iters=iters,
                    seconds=seconds,
                    channels_last=channels_last,
                )
            stats, info = bench_onnx(
                target,
                batch,
                provider=provider,
                threads=threads,
                warmup=warmup,
                iters=iters,
                seconds=seconds,
                io_binding=io_binding,
            )
            running = info.running
            speedup = eager.mean_ms / stats.mean_ms if eager is not None else None
            ort_row = BenchRow(
                target.name, target.arch, target.precision, "onnxruntime", info.running, stats,
                speedup,
                _gflops(target, stats),
            )  # fmt: skip
            rows.append(ort_row)
            if eager is not None:
                label = "torch-eager" + (" channels_last" if channels_last else "")
                eager_row = BenchRow(
                    target.name, target.arch, "fp32", label, f"torch {device}", eager, None,
                    _gflops(target, eager),
                )  # fmt: skip
                rows.append(eager_row)
    ceiling = fp32_ceiling_gflops() if device == "cpu" else None
    machine = Machine(
        cpu=cpu_model(),
        cores=os.cpu_count() or 1,
        torch_threads=torch.get_num_threads(),
        device=torch.cuda.get_device_name() if device == "cuda" else cpu_model(),
        ort_version=ort.__version__,
        torch_version=torch.__version__,
    )
    return BenchReport(
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        machine=machine,
        provider=provider,
        running=running,
        threads=threads,
        fp32_ceiling_gflops=ceiling,
        rows=rows,
        verdicts=[latency_verdict(rows, provider)],
        notes=notes,
    )


def _gflops(target: BenchTarget, stats: LatencyStats) -> float | None:
    return 2 * target.macs * stats.images_per_s / 1e9 if target.macs else None


def save_report(
    report: BenchReport, *, json_path: Path | None, csv_path: Path | None, history: Path
) -> Path:
    """Write the report where asked, and always append it to ``history`` with a timestamp."""
    content = json.dumps(dataclasses.asdict(report), indent=2, default=str) + "\n"  # Paths
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = history / f"bench-{stamp}.json"
    for path in filter(None, (json_path, kept)):
        with atomic_path(path) as tmp:
            tmp.write_text(content)
    if csv_path is not None:
        with atomic_path(csv_path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            stat_fields = [f.name for f in dataclasses.fields(LatencyStats)]
            writer.writerow(
                ["model", "precision", "engine", "provider", *stat_fields, "speedup_vs_eager"]
            )
            for r in report.rows:
                values = [getattr(r.stats, f) for f in stat_fields]
                writer.writerow(
                    [r.model, r.precision, r.engine, r.provider, *values, r.speedup_vs_eager]
                )
    return kept
