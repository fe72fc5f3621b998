"""Figures as PNG files (matplotlib, no display needed), each titled so it reads alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: these machines and CI have no display

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.gradients import GradientProfile
from analysis.lesion import LesionReport
from analysis.metrics import Confusion
from analysis.seeds import curve_band
from toolkit.fileio import atomic_path


def _save(figure: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def confusion_heatmap(result: Confusion, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7.5, 6.5))
    image = axes.imshow(result.matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    ticks = range(len(result.classes))
    axes.set_xticks(ticks, result.classes, rotation=45, ha="right")
    axes.set_yticks(ticks, result.classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    peak = max(max(row) for row in result.matrix) or 1
    for i, row in enumerate(result.matrix):
        for j, value in enumerate(row):
            text = f"{value:.2f}" if result.normalized else f"{int(value)}"
            color = "white" if value > peak / 2 else "black"
            axes.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    axes.set_title(
        f"Confusion matrix, {result.source.name} ({result.engine}), "
        f"test accuracy {result.accuracy:.2%}"
    )
    return _save(figure, path)


def training_curves(
    histories: dict[str, list[dict[str, Any]]],
    path: Path,
    *,
    groups: dict[str, list[list[dict[str, Any]]]] | None = None,
) -> Path:
    """Training and validation accuracy and loss per epoch, models overlaid (Fig. 1, 2, 4, 5);
    each seed group (label -> every seed's history) as its mean with a shaded min-max band."""
    figure, grid = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    panels = [
        ("train_acc", "training accuracy"),
        ("val_acc", "validation accuracy"),
        ("train_loss", "training loss"),
        ("val_loss", "validation loss"),
    ]
    for axes, (key, title) in zip(grid.flat, panels, strict=True):
        for label, rows in histories.items():
            points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                axes.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
        for label, runs in (groups or {}).items():
            if band := curve_band(runs, key):
                epochs = [p.epoch for p in band]
                (line,) = axes.plot(
                    epochs, [p.mean for p in band], marker="o", markersize=3,
                    label=f"{label} (mean of {len(runs)} seeds; band: min-max)",
                )  # fmt: skip
                axes.fill_between(epochs, [p.low for p in band], [p.high for p in band],
                                  color=line.get_color(), alpha=0.25, linewidth=0)  # fmt: skip
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
    grid[0][0].legend(fontsize=8)
    figure.suptitle("Training curves")
    return _save(figure, path)


def gradient_flow(profiles: list[GradientProfile], path: Path) -> Path:
    """Per-layer gradient magnitude against depth, log scale (the paper's Fig. 3): the raw L2
    norm the paper plots, and beside it the RMS, since raw norms grow with a layer's size."""
    figure, panels = plt.subplots(1, 2, figsize=(14, 5.5), sharex=True)
    measures = (("L2 norm", "norm_mean"), ("RMS (L2 norm / sqrt(weights))", "rms_mean"))
    for axes, (measure, field) in zip(panels, measures, strict=True):
        for profile in profiles:
            main = [layer for layer in profile.layers if layer.kind != "shortcut"]
            axes.plot(
                range(1, len(main) + 1), [getattr(layer, field) for layer in main], marker="o",
                markersize=3, label=f"{profile.model} ({profile.at})",
            )  # fmt: skip
        axes.set_yscale("log")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("weight layer, input to output (shortcut projections left out)")
        axes.set_ylabel(f"gradient {measure}")
        axes.set_title(f"weight-gradient {measure}")
        axes.grid(alpha=0.3, which="both")
    panels[0].legend(fontsize=8)
    batches = profiles[0].batches if profiles else 0
    figure.suptitle(f"Gradient flow per layer, mean of {batches} training batches")
    return _save(figure, path)


def gradients_over_training(label: str, rows: list[dict[str, Any]], path: Path) -> Path:
    """The per-layer norms ``rtk train`` recorded each epoch, one line per layer."""
    figure, axes = plt.subplots(figsize=(10, 5.5))
    names = list(rows[0]["grad_norms"]) if rows else []
    colors = plt.get_cmap("viridis")
    for index, name in enumerate(names):
        values = [(r["epoch"], r["grad_norms"][name]) for r in rows]
        axes.plot(*zip(*values, strict=True), color=colors(index / max(len(names) - 1, 1)),
                  label=name if index in (0, len(names) - 1) else None)  # fmt: skip
    axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("gradient L2 norm (mean of the epoch's last batches)")
    axes.set_title(f"{label}: per-layer gradient norms during training (dark: input end)")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    return _save(figure, path)


def depth_curves(
    curves: dict[str, list[tuple[int, float, float | None]]], *, skips: dict[str, bool], path: Path
) -> Path:
    """He et al.'s Fig. 6: error per epoch, plain networks left and residual ones right, one
    color per network (deeper: darker), training error dashed and validation error solid.
    ``curves`` maps a network to its (epoch, training error, validation error) points."""
    figure, panels = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    colors = plt.get_cmap("plasma")
    for axes, skip, title in ((panels[0], False, "plain"), (panels[1], True, "residual")):
        names = [name for name in curves if skips[name] == skip]
        for index, name in enumerate(names):
            color = colors(0.8 * (1 - index / max(len(names) - 1, 1)))
            epochs = [e for e, _, _ in curves[name]]
            axes.plot(epochs, [t * 100 for _, t, _ in curves[name]], "--", color=color)
            val = [(e, v * 100) for e, _, v in curves[name] if v is not None]
            if val:
                axes.plot(*zip(*val, strict=True), "-", color=color, linewidth=2)
            axes.plot([], [], "-", color=color, label=name)  # one legend entry per network
        axes.set_title(f"{title} networks")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    panels[0].set_ylabel("error (%)")
    figure.suptitle("Error per epoch by depth (dashed: training, solid: validation)")
    return _save(figure, path)


def lesion_curves(report: LesionReport, path: Path) -> Path:
    """Veit et al.'s Fig. 3 and 5 side by side: test accuracy with each block removed alone
    (blocks that cannot be removed marked at the bottom), and with k random blocks removed
    together (mean over the draws, the band from the lowest to the highest draw)."""
    figure, (blocks, counts) = plt.subplots(1, 2, figsize=(14, 5.5))
    names = list(dict.fromkeys(row.block for s in report.studies for row in s.blocks))
    for study in report.studies:
        kind = "residual" if study.residual else "plain"
        label = f"{study.model} ({kind}, {study.accuracy:.1%} intact)"
        where = [names.index(row.block) for row in study.blocks]
        # NaN where a block cannot be removed, so the line breaks there instead of bridging it.
        accuracy = [math.nan if row.accuracy is None else row.accuracy for row in study.blocks]
        (line,) = blocks.plot(where, accuracy, marker="o", markersize=4, label=label)
        blocks.axhline(study.accuracy, color=line.get_color(), linestyle="--", linewidth=0.8)
        impossible = [x for x, row in zip(where, study.blocks, strict=True) if not row.removable]
        if impossible:
            blocks.plot(impossible, [0.0] * len(impossible), "x", color=line.get_color(),
                        markersize=9, label=f"{study.model}: cannot be removed")  # fmt: skip
        k = [r.removed for r in study.removals]
        counts.plot(k, [r.accuracy_mean for r in study.removals], marker="o", markersize=4,
                    color=line.get_color(), label=label)  # fmt: skip
        counts.fill_between(k, [r.accuracy_min for r in study.removals],
                            [r.accuracy_max for r in study.removals], color=line.get_color(),
                            alpha=0.2)  # fmt: skip
    chance = report.studies[0].chance if report.studies else 0.0
    for axes in (blocks, counts):
        axes.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
        axes.set_ylim(-0.03, 1.0)
        axes.set_ylabel("test accuracy")
        axes.grid(alpha=0.3)
    blocks.set_xticks(range(len(names)), names, rotation=45, ha="right")
    blocks.set_xlabel("block removed (dashed: nothing removed)")
    blocks.set_title("one block removed at a time (Veit et al., Fig. 3)")
    counts.xaxis.set_major_locator(MaxNLocator(integer=True))
    counts.set_xlabel(
        f"k blocks drawn at random ({report.draws} draws each; band: lowest to highest)"
    )
    counts.set_title("k random blocks removed together (Fig. 5)")
    blocks.legend(fontsize=8)
    images = report.studies[0].images if report.studies else 0
    figure.suptitle(f"Lesion study on {images:,} test images")
    return _save(figure, path)


def latency_accuracy(
    points: list[tuple[str, str, str, float, float]], batch: int, path: Path
) -> Path:
    """One point per model x runtime x precision: ms per image at ``batch`` against test
    accuracy (``points``: model, engine, precision, ms per image, accuracy)."""
    figure, axes = plt.subplots(figsize=(8, 5.5))
    markers = {"fp32": "o", "fp16": "s", "bf16": "D", "int8": "^"}
    colors: dict[str, str] = {}
    for model, engine, precision, ms, acc in points:
        color = colors.setdefault(model, f"C{len(colors) % 10}")
        axes.scatter(ms, acc * 100, marker=markers.get(precision, "x"), color=color, s=45)
        axes.annotate(f"{engine} {precision}", (ms, acc * 100), fontsize=7,
                      xytext=(4, 3), textcoords="offset points")  # fmt: skip
    for model, color in colors.items():
        axes.scatter([], [], color=color, label=model)
    axes.set_xscale("log")
    axes.set_xlabel(f"latency, ms per image at batch {batch} (log scale)")
    axes.set_ylabel("test accuracy (%)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    axes.set_title("Latency against accuracy, each runtime and precision (verified)")
    return _save(figure, path)
