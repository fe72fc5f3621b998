"""``rtk bench``: which models to bench, the whole benchmark run, where results go, and the
CI gate against an earlier run's results.

Claim (iii) of the paper's section IV-E (similar inference latency across the four models)
is judged from each run's own numbers (``analysis.claims.latency_claim``).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import itertools
import json
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
import torch

from analysis.claims import latency_claim
from analysis.latency import (
    BenchRow,
    BenchTarget,
    LatencyStats,
    Machine,
    bench_onnx,
    bench_openvino,
    bench_torch,
    cpu_model,
    matmul_gflops,
)
from analysis.params import count_macs
from analysis.runtime_accuracy import RowAccuracy, measure_accuracy, source_checkpoint
from analysis.verdicts import Verdict
from exporters import metadata
from exporters.convert import export_name
from exporters.errors import ExportError
from exporters.openvino import PERFORMANCE_HINT, OVPrecision, compile_verified
from exporters.quantize import tensorrt_qdq_problem
from exporters.runtime import (
    PROVIDERS,
    Provider,
    ProviderUnavailableError,
    SessionInfo,
    create_session,
)
from toolkit.data import Dataset
from toolkit.errors import OutputError, RtkError, UnknownArchitectureError
from toolkit.fileio import TEMP_SUFFIX, atomic_path, parse_json
from toolkit.models import Architecture, get_architecture

# An architecture name is benched from a fresh export of untrained weights, whose parity
# check runs on seeded noise: a few dozen inputs prove the graph computes what PyTorch does.
FRESH_PARITY_IMAGES = 64


class BaselineError(RtkError):
    """A ``--baseline`` file that is missing or is not an rtk bench report."""


@dataclass(frozen=True)
class BenchSettings:
    """How one run times every model and batch size."""

    provider: Provider
    batch_sizes: tuple[int, ...]
    warmup: int  # untimed calls before timing, per model and batch size
    iters: int | None = None  # timed calls per batch size; None: as many as fit in seconds
    seconds: float | None = None  # timed seconds per batch size, when iters is None
    threads: int | None = None  # intra-op threads for ORT and PyTorch; None: their default
    # cuda/tensorrt: inputs and outputs stay on the device, as eager's do (ignored on the CPU)
    io_binding: bool = True
    allow_cpu_fallback: bool = False  # cuda/tensorrt: bench even if ORT left nodes to the CPU
    tensorrt_cache: Path | None = None  # TensorRT engines and timing caches, one folder per model
    compare_torch: bool = True  # time PyTorch eager beside each fp32 model
    channels_last: bool = False  # PyTorch eager in channels_last
    runtimes: tuple[Runtime, ...] = ("ort",)  # which runtimes time the ONNX files
    bf16: bool = False  # OpenVINO: also time each fp32 file in bf16 (native bf16 CPUs only)


@dataclass(frozen=True)
class BenchReport:
    timestamp: str
    machine: Machine
    provider: str  # as asked
    running: str  # the provider ORT ran, verified
    threads: int | None
    io_binding: bool  # GPU rows timed with inputs and outputs on the device
    cpu_fallback: bool  # some ORT rows ran nodes on the CPU (--allow-cpu-fallback; rows say which)
    runtimes: tuple[str, ...]
    openvino: str | None  # OpenVINO's settings, where it ran: its hint, streams, threads
    fp32_ceiling_gflops: float | None
    rows: list[BenchRow]
    verdicts: list[Verdict]
    notes: list[str]
    # --accuracy: each (runtime, precision) over the whole test split against PyTorch fp32
    accuracy: list[RowAccuracy]


Runtime = Literal["ort", "openvino"]
RUNTIMES: tuple[Runtime, ...] = ("ort", "openvino")
RowKey = tuple[str, str, str, str, int]  # model, precision, engine, provider, batch


@dataclass(frozen=True)
class Baseline:
    """Median latencies of an earlier ``rtk bench`` run, by row."""

    path: Path
    p50_ms: dict[RowKey, float]


@dataclass(frozen=True)
class Regression:
    model: str
    precision: str
    engine: str
    provider: str
    batch: int
    old_p50_ms: float
    new_p50_ms: float

    @property
    def percent(self) -> float:
        return (self.new_p50_ms / self.old_p50_ms - 1) * 100


def _row_key(row: BenchRow) -> RowKey:
    return (row.model, row.precision, row.engine, row.provider, row.stats.batch)


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
    graph = metadata.load_graph(path)
    props = metadata.props(graph)
    arch = props.get(metadata.ARCH)
    shape = _shape_from_model(graph, path, fill)
    # Latency does not depend on weights: eager runs a fresh model of the same architecture,
    # with the file's class count.
    model = None
    if arch:
        classes = parse_json(props[metadata.CLASSES]) if metadata.CLASSES in props else None
        spec = get_architecture(arch)
        count = len(classes) if isinstance(classes, list) else spec.num_classes
        model = spec.build(**spec.kwargs_for(num_classes=count))
    return BenchTarget(
        name=name or arch or path.stem,
        onnx_path=path,
        precision=props.get(metadata.PRECISION, "fp32"),
        arch=arch,
        torch_model=model,
        input_shape=shape,
        macs=count_macs(model, (1, *shape)) if model is not None else None,
    )


def _fresh_export(arch: Architecture, workdir: Path) -> Path:
    """``rtk export`` of a freshly initialised model: the same validated path as any export."""
    from exporters.convert import export_onnx
    from toolkit.training import RunDir, initial_checkpoint

    run = workdir / arch.name
    run.mkdir(parents=True, exist_ok=True)
    classes = [f"class {i}" for i in range(arch.num_classes)]
    RunDir(run).save_best(initial_checkpoint(arch.name, classes))
    (result,) = export_onnx(run, dataset=None, parity_images=FRESH_PARITY_IMAGES)
    return result.onnx_path


def resolve_targets(
    specs: list[str], *, runs: Path, workdir: Path, input_shape: tuple[int, ...] | None
) -> tuple[list[BenchTarget], list[str]]:
    """ONNX files, run directories (every precision exported there) and architecture names
    (a fresh fp32 export); with no specs, every exported run under ``runs``."""
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
            # A seed's run is seed-N in every group: GROUP-seed-N tells two apart.
            targets += [_from_onnx(f, input_shape, name=export_name(path)) for f in files]
        else:
            try:
                arch = get_architecture(spec)
            except UnknownArchitectureError as exc:
                raise ExportError(
                    f"{spec!r} is not an ONNX file, a run directory or {exc}"
                ) from exc
            fresh = _from_onnx(_fresh_export(arch, workdir), input_shape, name=arch.name)
            targets.append(dataclasses.replace(fresh, fresh=True))
            notes.append(
                f"{arch.name}: freshly initialised weights (latency does not depend on them)"
            )
    return _named_apart(targets), notes


def _named_apart(targets: list[BenchTarget]) -> list[BenchTarget]:
    """Rows, ratios and accuracies are told apart by model name and precision: files that
    would share both (``a/model.onnx`` and ``b/model.onnx`` of one architecture) are named
    after their folders instead; two that still clash are refused."""
    counts = Counter((t.name, t.precision) for t in targets)
    named = [
        dataclasses.replace(t, name=f"{t.onnx_path.parent.name}/{t.onnx_path.stem}")
        if counts[t.name, t.precision] > 1
        else t
        for t in targets
    ]
    seen: dict[tuple[str, str], Path] = {}
    for t in named:
        if (key := (t.name, t.precision)) in seen:
            raise ExportError(
                f"{seen[key]} and {t.onnx_path} would both be the {t.precision} rows of "
                f"{t.name}: bench them one at a time"
            )
        seen[key] = t.onnx_path
    return named


MAX_INPUT_BYTES = 2**31  # the largest timed input batch; the model's activations come on top


def openvino_precisions(target: BenchTarget, *, bf16: bool) -> list[OVPrecision]:
    """The precisions OpenVINO times a file in: an fp32 file in fp32 (and bf16 when asked), an
    int8 file in int8. An fp16 file is none: OpenVINO's CPU plugin computes it in fp32 or bf16,
    so its row would name a precision that did not run."""
    if target.precision == "fp32":
        return ["fp32", *(["bf16"] if bf16 else [])]  # type: ignore[list-item]
    return ["int8"] if target.precision == "int8" else []


def _check_settings(targets: list[BenchTarget], settings: BenchSettings, *, accuracy: bool) -> None:
    """Everything that can be refused is refused before the first timed call."""
    if not settings.runtimes:
        raise RtkError("no runtime to bench: give --runtime ort, openvino or both")
    if "openvino" in settings.runtimes and settings.provider != "cpu":
        raise RtkError(
            f"OpenVINO runs on the CPU here, not on {settings.provider}: bench --runtime ort "
            "with --provider cuda or tensorrt, and OpenVINO with --provider cpu"
        )
    if settings.bf16 and "openvino" not in settings.runtimes:
        raise RtkError("--bf16 times OpenVINO's bf16: add --runtime openvino")
    if accuracy and settings.provider != "cpu":
        raise RtkError(
            f"--accuracy runs the test split on the CPU, so its figures would sit beside "
            f"{settings.provider} timings they did not come from: bench --provider cpu"
        )
    if accuracy and (fresh := [t.name for t in targets if t.fresh]):
        raise RtkError(
            f"{', '.join(fresh)}: an architecture name is benched from untrained weights, which "
            "have no accuracy to measure; give trained run folders with --accuracy"
        )
    for target in targets:  # every timed batch is allocated, from --input-shape or the graph
        size = 4 * max(settings.batch_sizes) * math.prod(target.input_shape)  # float32 bytes
        if size > MAX_INPUT_BYTES:
            raise RtkError(
                f"{target.name}: a batch of {max(settings.batch_sizes)} inputs of shape "
                f"{','.join(map(str, target.input_shape))} takes {size / 2**30:,.1f} GiB, over "
                f"rtk bench's {MAX_INPUT_BYTES // 2**30} GiB cap; give smaller --batch-sizes "
                "(or --input-shape, for a model with dynamic sizes)"
            )


def _open_sessions(
    targets: list[BenchTarget], settings: BenchSettings, caches: dict[Path, Path | None]
) -> None:
    """Open every session the run will time, once, so that an unavailable provider, a CPU
    fallback not allowed or a precision that would not run is refused before anything is
    timed: no CPU number is ever measured (let alone recorded) under another label."""
    provider = settings.provider
    for target in targets:
        if "ort" in settings.runtimes:
            problem = (
                tensorrt_qdq_problem(metadata.load_graph(target.onnx_path))
                if provider == "tensorrt"
                else None
            )
            if problem is not None:
                raise ProviderUnavailableError(
                    f"{target.onnx_path} is not quantized for TensorRT ({problem}); TensorRT "
                    "takes only symmetric signed int8 Q/DQ: export it with `rtk export RUN "
                    "--onnx --int8 --int8-for tensorrt`"
                )
            create_session(
                target.onnx_path,
                provider,
                threads=settings.threads,
                precision=target.precision,
                tensorrt_cache=caches[target.onnx_path],
                allow_cpu_fallback=settings.allow_cpu_fallback,
            )
        if "openvino" in settings.runtimes:  # each batch size is a compiled model of its own
            for precision in openvino_precisions(target, bf16=settings.bf16):
                for batch in settings.batch_sizes:
                    compile_verified(
                        target.onnx_path,
                        shape=(batch, *target.input_shape),
                        precision=precision,
                        threads=settings.threads,
                    )


def _row(
    target: BenchTarget,
    precision: str,
    engine: str,
    provider: str,
    stats: LatencyStats,
    eager: LatencyStats | None,
    detail: str,
) -> BenchRow:
    """A runtime's row, with its speed-up over PyTorch eager at the same batch."""
    return BenchRow(
        model=target.name,
        arch=target.arch,
        precision=precision,
        engine=engine,
        provider=provider,
        stats=stats,
        speedup_vs_eager=eager.mean_ms / stats.mean_ms if eager is not None else None,
        gflops=_gflops(target, stats),
        detail=detail,
    )


def _against_ort_fp32(rows: list[BenchRow]) -> list[BenchRow]:
    """Each row's speed-up over ONNX Runtime fp32 on the same model and batch, where timed."""
    reference = {
        (r.model, r.stats.batch): r.stats.mean_ms
        for r in rows
        if r.engine == "onnxruntime" and r.precision == "fp32"
    }
    return [
        dataclasses.replace(r, vs_ort_fp32=reference[key] / r.stats.mean_ms)
        if (key := (r.model, r.stats.batch)) in reference
        else r
        for r in rows
    ]


def latency_accuracy_points(
    report: BenchReport, batch: int
) -> list[tuple[str, str, str, float, float]]:
    """(model, engine, precision, ms per image at ``batch``, test accuracy) of every row that
    has both a timing and an accuracy."""
    ms = {
        (r.model, r.engine, r.precision): r.stats.ms_per_image
        for r in report.rows
        if r.stats.batch == batch
    }
    return [
        (a.model, a.engine, a.precision, ms[key], a.parity.acc_onnx)
        for a in report.accuracy
        if (key := (a.model, a.engine, a.precision)) in ms and a.parity.acc_onnx is not None
    ]


def run_bench(
    targets: list[BenchTarget],
    *,
    settings: BenchSettings,
    notes: list[str],
    accuracy_on: Callable[[], Dataset] | None = None,
    accuracy_images: int | None = None,
) -> BenchReport:
    """Time every target in every runtime and batch size; with ``accuracy_on`` (the dataset,
    loaded once everything else has been checked), first run each (runtime, precision) over
    its test split, or ``accuracy_images`` of it (``analysis.runtime_accuracy``), which refuses
    before any timing a file without its checkpoint or a checkpoint of other classes."""
    import onnxruntime as ort

    provider, threads = settings.provider, settings.threads
    compare_torch, channels_last = settings.compare_torch, settings.channels_last
    io_binding = settings.io_binding and provider != "cpu"
    _check_settings(targets, settings, accuracy=accuracy_on is not None)
    caches = {t.onnx_path: _tensorrt_cache(t.onnx_path, settings) for t in targets}
    _open_sessions(targets, settings, caches)
    accuracy: list[RowAccuracy] = []
    if accuracy_on is not None:
        # A file without its checkpoint is refused before the dataset is loaded (or downloaded).
        sources = {t.onnx_path: source_checkpoint(t.onnx_path) for t in targets}
        accuracy = measure_accuracy(
            targets,
            accuracy_on(),
            sources=sources,
            runtimes=settings.runtimes,
            openvino_precisions={
                t.onnx_path: openvino_precisions(t, bf16=settings.bf16)
                for t in targets
                if "openvino" in settings.runtimes
            },
            threads=threads,
            count=accuracy_images,
        )
    if provider != "cpu" and compare_torch and not torch.cuda.is_available():
        raise ProviderUnavailableError(
            f"ONNX Runtime runs {provider}, but PyTorch sees no CUDA for the eager "
            "comparison; pass --no-compare-torch or install a CUDA build of PyTorch"
        )
    if "openvino" in settings.runtimes:
        notes += [
            f"{t.name}: OpenVINO times no fp16 file (its CPU plugin computes one in fp32 or "
            "bf16); its fp32 file's bf16 row (--bf16) is the half-precision figure"
            for t in targets
            if not openvino_precisions(t, bf16=settings.bf16)
        ]
    if threads is not None:
        torch.set_num_threads(threads)
    device = "cuda" if provider in ("cuda", "tensorrt") else "cpu"
    timing = {"warmup": settings.warmup, "iters": settings.iters, "seconds": settings.seconds}
    rows: list[BenchRow] = []
    running = ""
    cpu_fallback = False
    ov_version: str | None = None
    for target in targets:
        for batch in settings.batch_sizes:
            eager: LatencyStats | None = None
            # Eager is fp32: timed once per architecture and batch, beside the fp32 export.
            if compare_torch and target.torch_model is not None and target.precision == "fp32":
                eager = bench_torch(
                    target.torch_model,
                    batch,
                    device=device,
                    input_shape=target.input_shape,
                    channels_last=channels_last,
                    **timing,  # type: ignore[arg-type]
                )

            if "ort" in settings.runtimes:
                stats, info = bench_onnx(
                    target,
                    batch,
                    provider=provider,
                    threads=threads,
                    io_binding=io_binding,
                    tensorrt_cache=caches[target.onnx_path],
                    allow_cpu_fallback=settings.allow_cpu_fallback,
                    **timing,  # type: ignore[arg-type]
                )
                running = info.running
                cpu_fallback |= info.cpu_fallback
                detail = row_detail(info, target.precision, io_binding=io_binding)
                rows.append(
                    _row(target, target.precision, "onnxruntime", info.label, stats, eager, detail)
                )
            if "openvino" in settings.runtimes:
                for precision in openvino_precisions(target, bf16=settings.bf16):
                    stats, ov = bench_openvino(
                        target,
                        batch,
                        precision=precision,
                        threads=threads,
                        **timing,  # type: ignore[arg-type]
                    )
                    ov_version = ov.version
                    detail = f"ran: {ov.label}"
                    rows.append(_row(target, precision, "openvino", "CPU", stats, eager, detail))
            if eager is not None:
                label = "torch-eager" + (" channels_last" if channels_last else "")
                eager_row = BenchRow(
                    target.name, target.arch, "fp32", label, f"torch {device}", eager, None,
                    _gflops(target, eager),
                )  # fmt: skip
                rows.append(eager_row)
    # Claim (iii) per runtime: each times the same four files.
    verdicts = [latency_claim(rows, provider)] if "ort" in settings.runtimes else []
    if ov_version:
        verdicts.append(latency_claim(rows, "OpenVINO CPU", engine="openvino"))
    ceiling = matmul_gflops() if device == "cpu" else None
    machine = Machine(
        cpu=cpu_model(),
        cores=os.cpu_count() or 1,
        torch_threads=torch.get_num_threads(),
        device=torch.cuda.get_device_name() if device == "cuda" else cpu_model(),
        ort_version=ort.__version__,
        torch_version=torch.__version__,
        openvino_version=ov_version,
    )
    return BenchReport(
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        machine=machine,
        provider=provider,
        running=running,
        threads=threads,
        io_binding=io_binding,
        cpu_fallback=cpu_fallback,
        runtimes=settings.runtimes,
        openvino=(
            f"precision hint as each row says (f32 for fp32 and int8 rows), performance hint "
            f"{PERFORMANCE_HINT}, 1 stream, threads {threads or 'default'}, input shape fixed "
            "at compile"
            if ov_version
            else None
        ),
        fp32_ceiling_gflops=ceiling,
        rows=_against_ort_fp32(rows),
        verdicts=verdicts,
        notes=notes,
        accuracy=accuracy,
    )


def _tensorrt_cache(model: Path, settings: BenchSettings) -> Path | None:
    """Where TensorRT keeps ``model``'s engine and timing caches: a folder named by the
    file's content. ORT names a cached engine after the file name and node names only, not the
    weights, so two runs' ``model.onnx`` would otherwise share (and run) one engine."""
    if settings.provider != "tensorrt" or settings.tensorrt_cache is None:
        return None
    from exporters.convert import file_sha256

    return settings.tensorrt_cache / file_sha256(model)[:16]


# ORT's int8 kernels for Q/DQ models (fused from DequantizeLinear -> op -> QuantizeLinear).
_INT8_OPS = ("QLinear", "ConvInteger", "MatMulInteger")


def row_detail(info: SessionInfo, precision: str, *, io_binding: bool) -> str:
    """What an ORT row's numbers mean beyond its columns, in a few words each."""
    if info.provider == "cpu":
        return ""
    parts = ["io-binding (data on the device)" if io_binding else "host copies timed"]
    cpu, cuda = PROVIDERS["cpu"], PROVIDERS["cuda"]
    if info.cpu_fallback:
        n = info.placements.get(cpu)
        ops = ", ".join(sorted(set(info.placed_ops.get(cpu, ()))))
        parts.append(
            f"{n or 'some'} nodes on the CPU{f' ({ops})' if ops else ''}, --allow-cpu-fallback"
        )
    if info.provider == "tensorrt" and info.placements.get(cuda):
        parts.append(f"{info.placements[cuda]} nodes TensorRT rejected ran on CUDA")
    on_cuda = info.placed_ops.get(cuda, ())
    if (
        info.provider == "cuda"
        and precision == "int8"
        and not any(op.startswith(_INT8_OPS) for op in on_cuda)
    ):
        # ORT's CUDA provider has no int8 convolution for Q/DQ graphs: it runs each
        # DequantizeLinear, then the float Conv/Gemm (see docs/gpu.md).
        parts.append("int8 weights, fp32 compute (the CUDA provider has no int8 kernels)")
    return "; ".join(parts)


def _gflops(target: BenchTarget, stats: LatencyStats) -> float | None:
    return 2 * target.macs * stats.images_per_s / 1e9 if target.macs else None


def write_result(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole, or fail in one line. Results are shown before they
    are saved, so a folder that cannot be written costs a file, never the measurement."""
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    except OSError as exc:  # a full disk or a read-only file; a missing folder is OutputError
        raise OutputError(
            f"cannot write {path} ({exc.strerror or exc}); the results are printed above: "
            "free disk space or choose another path"
        ) from exc


def keep_in_history(history: Path, stem: str, content: str) -> Path:
    """``content`` as a new file in ``history``, whole or absent, under a name no other bench
    took: two benches ending in the same second each keep their report (a hard link claims a
    name atomically, and fails if it is taken)."""
    try:
        history.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=history, prefix=f".{stem}.", suffix=TEMP_SUFFIX, delete=False
        ) as tmp:
            tmp.write(content)
            tmp.flush()
            os.fsync(tmp.fileno())
        try:
            for n in itertools.count(1):
                path = history / (f"{stem}.json" if n == 1 else f"{stem}-{n}.json")
                with contextlib.suppress(FileExistsError):
                    os.link(tmp.name, path)
                    return path
        finally:
            os.unlink(tmp.name)
    except OSError as exc:
        raise OutputError(
            f"cannot write the bench history in {history} ({exc.strerror or exc}); free disk "
            "space or pick another --runs"
        ) from exc
    raise AssertionError("unreachable")


def save_report(
    report: BenchReport, *, json_path: Path | None, csv_path: Path | None, history: Path
) -> Path:
    """Write the report where asked, and always append it to ``history`` with a timestamp."""
    content = json.dumps(dataclasses.asdict(report), indent=2, default=str) + "\n"  # Paths
    kept = keep_in_history(history, f"bench-{time.strftime('%Y%m%d-%H%M%S')}", content)
    if json_path is not None:
        write_result(json_path, content)
    if csv_path is not None:
        write_result(csv_path, _csv_text(report))
    return kept


def _csv_text(report: BenchReport) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    stat_fields = [f.name for f in dataclasses.fields(LatencyStats)]
    writer.writerow(
        ["model", "precision", "engine", "provider", *stat_fields, "speedup_vs_eager",
         "vs_ort_fp32", "detail"]
    )  # fmt: skip
    for r in report.rows:
        values = [getattr(r.stats, f) for f in stat_fields]
        writer.writerow(
            [r.model, r.precision, r.engine, r.provider, *values, r.speedup_vs_eager,
             r.vs_ort_fp32, r.detail]
        )  # fmt: skip
    return text.getvalue()


MAX_REPORT_BYTES = 64 * 2**20


def load_baseline(path: Path) -> Baseline:
    """The median latency of every row of an earlier ``rtk bench`` JSON report (``--json`` or
    ``--json-out``, or one kept under ``runs/bench/``)."""
    fix = "pass a report written by `rtk bench --json-out PATH` (or kept in runs/bench/)"
    if path.exists() and not path.is_file():  # a FIFO would hang the gate, /dev/zero fill memory
        raise BaselineError(f"baseline {path} is not a regular file; {fix}")
    if path.is_file() and path.stat().st_size > MAX_REPORT_BYTES:
        raise BaselineError(
            f"baseline {path} is {path.stat().st_size / 2**20:,.0f} MiB, larger than any bench "
            f"report ({MAX_REPORT_BYTES // 2**20} MiB cap); {fix}"
        )
    try:
        content = parse_json(path.read_text())
    except FileNotFoundError as exc:
        raise BaselineError(f"baseline {path} does not exist; {fix}") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BaselineError(f"baseline {path} is not JSON ({type(exc).__name__}); {fix}") from exc
    try:
        p50_ms = {
            (r["model"], r["precision"], r["engine"], r["provider"], int(r["stats"]["batch"])): (
                float(r["stats"]["p50_ms"])
            )
            for r in content["rows"]
        }
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise BaselineError(
            f"baseline {path} is not an rtk bench report (no rows with model, precision, "
            f"engine, provider and latency statistics); {fix}"
        ) from exc
    if not p50_ms or not all(math.isfinite(v) and v > 0 for v in p50_ms.values()):
        raise BaselineError(f"baseline {path} holds no positive, finite latencies; {fix}")
    return Baseline(path=path, p50_ms=p50_ms)


def latency_regressions(
    report: BenchReport, baseline: Baseline, *, max_regression_pct: float
) -> list[Regression]:
    """Rows whose median latency grew by more than ``max_regression_pct`` percent over the
    same row (model, precision, engine, provider, batch) of the baseline. The median, not the
    mean: one descheduled call on a shared CI machine should not fail the gate."""
    matched = [
        (r, baseline.p50_ms[_row_key(r)]) for r in report.rows if _row_key(r) in baseline.p50_ms
    ]
    if not matched:
        raise BaselineError(
            f"baseline {baseline.path} has no row for the models, precisions, providers and "
            "batch sizes benched now; bench the same ones as the baseline"
        )
    return [
        Regression(*_row_key(row), old_p50_ms=old, new_p50_ms=row.stats.p50_ms)
        for row, old in matched
        if row.stats.p50_ms > old * (1 + max_regression_pct / 100)
    ]
