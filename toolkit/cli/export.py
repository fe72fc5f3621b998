"""``rtk export``, ``rtk predict`` and ``rtk view``: ONNX files, checked, used and shown."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from toolkit.cli.output import console, err_console, notice, print_json, styled


def _runs_with_checkpoints(runs: Path) -> list[Path]:
    from toolkit.training import RunDir

    return sorted(p.parent for p in runs.glob(f"*/{RunDir.BEST}"))


def export(
    targets: list[Path] = typer.Argument(
        None, help="Run directories or checkpoints \\[every run under runs/].", show_default=False
    ),
    onnx_format: bool = typer.Option(False, "--onnx", help="Export to ONNX (the one format)."),
    out: Path | None = typer.Option(None, help="Folder for the files \\[beside each checkpoint]."),
    opset: int | None = typer.Option(None, help="ONNX opset \\[newest both exporter and ORT run]."),
    simplify: bool = typer.Option(True, help="Simplify the graph with onnxslim."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write an FP16 copy."),
    int8: bool = typer.Option(False, "--int8", help="Also write a static INT8 copy."),
    int8_for: str = typer.Option(
        "cpu",
        help="The INT8 copy's recipe: cpu (ORT's integer kernels) or tensorrt (symmetric "
        "signed int8 Q/DQ, float biases: the only Q/DQ TensorRT takes).",
    ),
    calib_images: int = typer.Option(512, help="Training images that calibrate INT8."),
    parity_images: int = typer.Option(1000, help="Test images for the parity check."),
    data: Path | None = typer.Option(None, help="Dataset path (see `rtk data info`)."),
    runs: Path = typer.Option(Path("runs"), help="Where to look when no target is given."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Export checkpoints to ONNX and validate each file against PyTorch on real test images."""
    from analysis.sources import load_data_for
    from exporters.convert import check_targets, export_onnx, export_paths
    from exporters.errors import ExportError
    from exporters.opset import opset_support
    from exporters.quantize import INT8_TARGETS

    if not onnx_format:
        raise ExportError("say which format: --onnx (the only one rtk exports)")
    chosen = targets or _runs_with_checkpoints(runs)
    if not chosen:
        raise ExportError(f"no run with a best.pt under {runs}/; train one or name a checkpoint")
    if int8_for not in INT8_TARGETS:
        raise ExportError(f"--int8-for is one of {', '.join(INT8_TARGETS)}, got {int8_for!r}")
    if parity_images < 1 or calib_images < 1:
        raise ExportError("--parity-images and --calib-images must be positive")
    written: dict[Path, Path] = {}  # each file, by the target that would write it
    for target in chosen:
        path = export_paths(target, out)["fp32"]
        if (other := written.setdefault(path.absolute(), target)) != target:
            raise ExportError(
                f"{other} and {target} would both be exported as {path}; export them to "
                "different --out folders (or without --out, beside each checkpoint)"
            )
    support = opset_support()
    if not as_json:
        notice(
            f"opset {opset or support.default} (newest the exporter writes: "
            f"{support.exporter_max}; ONNX Runtime runs up to: {support.runtime_max})"
        )
    dataset = load_data_for(chosen, data, announce=notice)
    check_targets(chosen, dataset)
    results = []
    for target in chosen:
        results += export_onnx(
            target,
            dataset=dataset,
            out_dir=out,
            opset=opset,
            simplify=simplify,
            fp16=fp16,
            int8=int8,
            int8_target=int8_for,  # type: ignore[arg-type]
            calib_images=calib_images,
            parity_images=parity_images,
        )
    if as_json:
        print_json(results)
        return
    table = Table(title="ONNX exports (parity on real test images vs PyTorch fp32)")
    for column in (
        "model",
        "file",
        "size",
        "opset",
        "nodes",
        "max |diff|",
        "agree",
        "acc torch/onnx",
    ):
        table.add_column(column, justify="left" if column in ("model", "file") else "right")
    for r in results:
        p = r.parity
        limit = f" (<= {p.tolerance:.0e})" if p.tolerance else ""
        table.add_row(
            f"{r.arch} {r.precision}",
            str(r.onnx_path),
            f"{r.size_bytes / 2**20:.2f} MiB",
            str(r.opset),
            str(r.nodes),
            f"{p.max_abs_diff:.1e}{limit}",
            f"{p.agreement:.1%}",
            f"{p.acc_torch:.1%} / {p.acc_onnx:.1%} ({p.images:,})",
        )
    console.print(table)


def _floats(text: str | None) -> list[float] | None:
    from exporters.errors import MetadataError

    if not text:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise MetadataError(f"expected numbers separated by commas, got {text!r}") from exc


def predict(
    model: Path = typer.Argument(..., help="An ONNX classifier (from `rtk export`)."),
    images: list[Path] = typer.Argument(..., help="PNG or JPEG files, any size."),
    top_k: int = typer.Option(3, "--top-k", help="Classes to show per image."),
    provider: str = typer.Option("cpu", help="cpu, cuda or tensorrt (verified)."),
    runtime: str = typer.Option(
        "ort", help="ort (ONNX Runtime) or openvino (CPU, the file's fp32 or int8, verified)."
    ),
    classes: str | None = typer.Option(None, help="Comma-separated class names \\[metadata]."),
    mean: str | None = typer.Option(None, help="Comma-separated channel means \\[metadata]."),
    std: str | None = typer.Option(None, help="Comma-separated channel stds \\[metadata]."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Classify images with an ONNX model; class names and normalisation come from its metadata."""
    from exporters.predict import predict as run_predict

    meta, predictions = run_predict(
        model,
        images,
        top_k=top_k,
        provider=provider,  # type: ignore[arg-type]
        runtime=runtime,
        classes=classes.split(",") if classes else None,
        mean=_floats(mean),
        std=_floats(std),
    )
    if as_json:
        print_json({"model": model, "meta": meta, "predictions": predictions})
        return
    for p in predictions:
        if p.resized:
            w, h = p.original_size
            notice(f"{p.image} is {w}x{h}; resized to {meta.input_size[2]}x{meta.input_size[1]}")
    table = Table(title=f"{model.name} ({meta.arch or 'unknown architecture'})")
    table.add_column("image")
    for rank in range(1, len(predictions[0].top) + 1):
        table.add_column(f"#{rank}")
    for p in predictions:
        table.add_row(str(p.image), *(f"{g.label} {g.probability:.1%}" for g in p.top))
    console.print(table)


def view(
    model: Path = typer.Argument(..., help="An ONNX file to show in netron."),
    host: str = typer.Option(
        "127.0.0.1",
        help="Address to bind (localhost by default); beyond it, a copy of the model alone is "
        "served.",
    ),
    port: int | None = typer.Option(None, help="Port \\[a free one]."),
    browser: bool = typer.Option(True, help="Open a browser where there is a display."),
) -> None:
    """Serve the graph in netron and print its URL; Ctrl-C stops it."""
    import netron

    from exporters.view import serve, stop

    served = serve(model, host=host, port=port, browse=browser)
    try:
        if served.exposed:
            err_console.print(
                styled(("warning:", "yellow")),
                f"{host} is not loopback: anyone who can reach port {served.port} can see and "
                f"download this graph (a copy of {model.name} alone, nothing else from its folder)",
                soft_wrap=True,
            )
        if browser and not served.browser_opened:
            err_console.print("no display here: open the URL in a browser", style="dim")
        console.print(
            styled(f"netron serves {model} at ", (served.url, "bold"), "  (Ctrl-C stops it)")
        )
        netron.wait()  # returns on Ctrl-C (netron stops its servers)
    except KeyboardInterrupt:
        # Ctrl-C is how a user stops the server, so it is a clean stop (exit 0) even when it lands
        # just before netron.wait() has begun to catch it.
        pass
    finally:
        stop(served)
