"""``rtk analyze`` (gradients, parameters, lesions, residual sizes) and ``rtk report``
(confusion, classification, curves, the paper's Table I, seed groups)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from toolkit.cli.output import console, err_console, notice, print_json, styled

if TYPE_CHECKING:
    from analysis.lesion import LesionReport
    from analysis.metrics import ClassReport
    from analysis.residuals import ResidualProfile
    from analysis.verdicts import Verdict

analyze_app = typer.Typer(
    help="Gradient flow, parameter counts, lesions and residual sizes.", no_args_is_help=True
)
report_app = typer.Typer(
    help="Test-set reports, curves, Table I and seed groups.", no_args_is_help=True
)

DataOption = typer.Option(None, "--data", help="Dataset path (see `rtk data info`).")
JsonOption = typer.Option(False, "--json", help="Print JSON instead of tables.")
ImagesOption = typer.Option(
    None,
    "--images",
    help="Test images to use, a seeded sample of the split \\[all].",
    show_default=False,
)


MAX_GRAD_BATCHES = 1000  # each is a forward and backward pass of every model


@analyze_app.command("gradients")
def gradients(
    sources: list[str] = typer.Argument(
        ..., help="Run directories, checkpoints or architecture names."
    ),
    batches: int = typer.Option(8, help="Real training batches (of 64) to average over."),
    at: str = typer.Option("init", help="init (initial weights) or best (a run's best.pt)."),
    plot: Path | None = typer.Option(None, help="Write the log-scale gradient-flow PNG here."),
    history_plot: Path | None = typer.Option(
        None, help="Plot the norms a run recorded while training (first run) here."
    ),
    data: Path | None = DataOption,
    as_json: bool = JsonOption,
) -> None:
    """Per-layer weight-gradient L2 norms and RMS, in depth order, models side by side."""
    from analysis.gradients import profile_source
    from analysis.sources import load_data_for
    from toolkit.errors import RtkError

    if at not in ("init", "best"):
        raise RtkError(f"--at takes init or best, got {at!r}")
    if not 1 <= batches <= MAX_GRAD_BATCHES:
        raise RtkError(f"--batches must be in [1, {MAX_GRAD_BATCHES}], got {batches}")
    dataset = load_data_for(sources, data, announce=notice)
    profiles = [profile_source(s, dataset, batches=batches, at=at) for s in sources]
    if plot is not None:
        from analysis.plots import gradient_flow

        notice(f"wrote {gradient_flow(profiles, plot)}")
    if history_plot is not None:
        from analysis.plots import gradients_over_training
        from analysis.report import read_history

        run = Path(sources[0])
        notice(f"wrote {gradients_over_training(run.name, read_history(run), history_plot)}")
    if as_json:
        print_json(profiles)
        return
    for p in profiles:
        table = Table(
            title=f"{p.model} at {p.at}: gradients over {p.batches} batches of {p.batch_size}"
        )
        for column in ("layer", "kind", "depth", "weights", "L2 norm", "+/- std", "RMS"):
            table.add_column(column, justify="left" if column in ("layer", "kind") else "right")
        for layer in p.layers:
            table.add_row(
                layer.name, layer.kind, str(layer.depth), f"{layer.weights:,}",
                f"{layer.norm_mean:.3e}", f"{layer.norm_std:.1e}", f"{layer.rms_mean:.3e}",
            )  # fmt: skip
        console.print(table)
        stages = ", ".join(f"{s.stage} {s.norm_mean:.2e} (RMS {s.rms_mean:.1e})" for s in p.stages)
        console.print(f"per part (mean L2 norm): {stages}")
        console.print(
            f"first/last layer: L2 norm {p.first_last_norm_ratio:.2f}, "
            f"RMS {p.first_last_rms_ratio:.2f}"
        )


@analyze_app.command("params")
def params(
    sources: list[str] = typer.Argument(None, help="Architectures or run directories \\[all]."),
    as_json: bool = JsonOption,
) -> None:
    """Total and trainable parameters, per stage, MACs, and the published count if any."""
    from analysis.params import summarize
    from toolkit.models import architectures, get_architecture
    from toolkit.training import RunDir

    summaries = []
    for source in sources or []:
        path = Path(source)
        if not path.is_dir():
            summaries.append(summarize(get_architecture(source)))
            continue
        # A run's network as it trained: its dataset's classes and image size.
        payload = RunDir.open(path).load_best()
        summaries.append(
            summarize(
                get_architecture(payload["arch"]),
                num_classes=len(payload["classes"]),
                input_size=payload["input_size"],
            )
        )
    summaries = summaries or [summarize(a) for a in architectures()]
    if as_json:
        print_json(summaries)
        return
    table = Table(title="Parameters (MACs: one image, 32x32 unless a run's own size)")
    for column in ("model", "total", "trainable", "published", "difference", "MACs", "per part"):
        table.add_column(column, justify="left" if column in ("model", "per part") else "right")
    for s in summaries:
        parts = ", ".join(f"{k} {v:,}" for k, v in s.per_stage.items())
        published, difference = "-", "-"  # where no source gives a count
        if s.published_params is not None:
            published = f"{s.published_params:,}"
            difference = f"{s.params - s.published_params:+,}"
        table.add_row(
            s.name, f"{s.params:,}", f"{s.trainable_params:,}", published, difference,
            f"{s.macs / 1e6:,.1f} M", parts,
        )  # fmt: skip
    console.print(table)


@analyze_app.command("lesion")
def lesion(
    sources: list[str] = typer.Argument(..., help="Run directories or checkpoints to compare."),
    data: Path | None = DataOption,
    images: int | None = ImagesOption,
    draws: int = typer.Option(5, help="Random sets drawn for each number of removed blocks."),
    seed: int = typer.Option(0, help="Seeds the test sample and the random draws."),
    out: Path | None = typer.Option(None, "--out", help="Write the lesion figure (PNG) here."),
    as_json: bool = JsonOption,
) -> None:
    """Test accuracy with residual blocks removed at test time (Veit et al. 2016): each block
    alone, per stage, and k random blocks together; residual and plain networks side by side."""
    from analysis.lesion import lesion_sources
    from analysis.sources import load_data_for

    dataset = load_data_for(sources, data, announce=notice)
    report = lesion_sources(sources, dataset, images=images, draws=draws, seed=seed)
    if out is not None:
        from analysis.plots import lesion_curves

        notice(f"wrote {lesion_curves(report, out)}")
    if as_json:
        print_json(report)
        return
    _print_lesion(report)


def _print_lesion(report: LesionReport) -> None:
    studies = report.studies
    images = studies[0].images
    names = list(dict.fromkeys(row.block for s in studies for row in s.blocks))
    table = Table(title=f"Test accuracy with one block removed ({images:,} test images)")
    table.add_column("block removed")
    for s in studies:
        table.add_column(f"{s.model} ({'residual' if s.residual else 'plain'})", justify="right")
    table.add_row("none (intact)", *(f"{s.accuracy:.2%}" for s in studies), style="bold")
    for name in names:
        cells = []
        for s in studies:
            row = next((r for r in s.blocks if r.block == name), None)
            if row is None:
                cells.append("-")  # this model has no such block
            elif row.accuracy is None:
                cells.append(styled(("impossible (shape changes, no shortcut)", "yellow")))
            else:
                shortcut = "no shortcut" if row.shortcut == "none" else row.shortcut
                cells.append(f"{row.accuracy:.2%} ({shortcut})")
        table.add_row(name, *cells)
    console.print(table)
    stages = Table(title="Per stage: mean (lowest) accuracy over its blocks removed one at a time")
    stages.add_column("stage")
    for s in studies:
        stages.add_column(s.model, justify="right")
    for stage in dict.fromkeys(row.stage for s in studies for row in s.stages):
        cells = []
        for s in studies:
            row = next((r for r in s.stages if r.stage == stage), None)
            if row is None:
                cells.append("-")
            elif row.accuracy_mean is None or row.accuracy_min is None:
                cells.append(f"none of {row.blocks} removable")
            else:
                removable = (
                    f", {row.removable} of {row.blocks}" if row.removable < row.blocks else ""
                )
                cells.append(f"{row.accuracy_mean:.2%} ({row.accuracy_min:.2%}{removable})")
        stages.add_row(stage, *cells)
    console.print(stages)
    counts = Table(
        title=f"k random blocks removed together: mean +/- std (lowest to highest) of "
        f"{report.draws} draws (seed {report.seed})"
    )
    counts.add_column("k", justify="right")
    for s in studies:
        counts.add_column(s.model, justify="right")
    for k in range(1, max(len(s.removals) for s in studies) + 1):
        cells = []
        for s in studies:
            if k > len(s.removals):
                cells.append("-")  # fewer removable blocks than k
                continue
            r = s.removals[k - 1]
            cells.append(
                f"{r.accuracy_mean:.2%} +/- {r.accuracy_std:.2%} "
                f"({r.accuracy_min:.2%} to {r.accuracy_max:.2%})"
            )
        counts.add_row(str(k), *cells)
    console.print(counts)
    _print_verdict(report.verdict)


def _print_verdict(verdict: Verdict) -> None:
    color = {"supported": "green", "not supported": "red"}.get(verdict.verdict, "yellow")
    console.print(styled((verdict.claim, "bold"), ": ", (verdict.verdict, color)), soft_wrap=True)
    console.print(f"  {verdict.evidence}", soft_wrap=True)


@analyze_app.command("residuals")
def residuals(
    sources: list[str] = typer.Argument(
        ..., help="Run directories, checkpoints or (with --at init) architecture names."
    ),
    at: str = typer.Option(
        "both", help="init (the run's initial weights), best (its trained weights) or both."
    ),
    data: Path | None = DataOption,
    images: int | None = ImagesOption,
    seed: int = typer.Option(0, help="Seeds the test sample (and an architecture's weights)."),
    as_json: bool = JsonOption,
) -> None:
    """Per block, ||F(x)|| / ||shortcut(x)|| over real test images (mean, spread), per stage,
    and whether residuals stay small (ratio below 1) in each stage."""
    from analysis.residuals import residual_sources
    from analysis.sources import load_data_for
    from toolkit.errors import RtkError

    if at not in ("init", "best", "both"):
        raise RtkError(f"--at takes init, best or both, got {at!r}")
    ats = ["init", "best"] if at == "both" else [at]
    dataset = load_data_for(sources, data, announce=notice)
    profiles = residual_sources(sources, dataset, ats=ats, images=images, seed=seed)
    if as_json:
        print_json(profiles)
        return
    for p in profiles:
        _print_residuals(p)


def _print_residuals(p: ResidualProfile) -> None:
    if not p.applicable:
        console.print(f"{p.model} at {p.at}: not applicable; {p.reason}", soft_wrap=True)
        return
    table = Table(
        title=f"{p.model} at {p.at}: ||F(x)|| / ||shortcut(x)|| over {p.images:,} test images"
    )
    for column in ("block", "shortcut", "ratio", "+/- std", "||F(x)||", "||shortcut(x)||"):
        table.add_column(column, justify="left" if column in ("block", "shortcut") else "right")
    for b in p.blocks:
        table.add_row(
            b.block, b.shortcut, f"{b.ratio_mean:.3f}", f"{b.ratio_std:.3f}",
            f"{b.branch_norm_mean:.3g}", f"{b.shortcut_norm_mean:.3g}",
        )  # fmt: skip
    console.print(table)
    for s in p.stages:
        console.print(
            f"{s.stage}: mean ratio {s.ratio_mean:.3f}, largest block {s.ratio_max:.3f}; "
            f"residuals stay small: {s.verdict.verdict}"
        )


def _predictions(source: Path, data: Path | None) -> object:
    from analysis.metrics import predict_test
    from analysis.sources import load_data_for

    return predict_test(source, load_data_for([source], data, announce=notice))


@report_app.command("confusion")
def confusion(
    source: Path = typer.Argument(..., help="A run directory, checkpoint or ONNX model."),
    normalize: bool = typer.Option(False, help="Rows as fractions of each true class."),
    plot: Path | None = typer.Option(None, help="Write the heatmap PNG here."),
    data: Path | None = DataOption,
    as_json: bool = JsonOption,
) -> None:
    """The confusion matrix on the full test split (rows: true class)."""
    from analysis.metrics import confusion as compute

    result = compute(_predictions(source, data), normalize_rows=normalize)  # type: ignore[arg-type]
    if plot is not None:
        from analysis.plots import confusion_heatmap

        notice(f"wrote {confusion_heatmap(result, plot)}")
    if as_json:
        print_json(result)
        return
    table = Table(
        title=f"Confusion matrix: {source} ({result.engine}), accuracy {result.accuracy:.2%}"
    )
    table.add_column("true \\ predicted", style="bold", no_wrap=True)
    for name in result.classes:
        table.add_column(name[:5], justify="right")
    for i, (name, row) in enumerate(zip(result.classes, result.matrix, strict=True)):
        cells = [f"{v:.2f}" if normalize else f"{int(v)}" for v in row]
        table.add_row(name, *cells[:i], styled((cells[i], "bold green")), *cells[i + 1 :])
    console.print(table)
    _imbalance_note(result.imbalance)


def _imbalance_note(ratio: float) -> None:
    from toolkit.data.dataset import IMBALANCED

    if ratio >= IMBALANCED:
        console.print(
            f"imbalanced test classes (largest/smallest {ratio:.2f}): accuracy favours the large "
            "classes; read each class's recall and the macro average (`rtk report "
            "classification`)"
        )


@report_app.command("classification")
def classification(
    source: Path = typer.Argument(..., help="A run directory, checkpoint or ONNX model."),
    data: Path | None = DataOption,
    min_accuracy: float | None = typer.Option(
        None,
        help="A CI gate: exit 1 when the test accuracy is below this fraction in [0, 1] "
        "(0.85, not 85).",
        show_default=False,
    ),
    as_json: bool = JsonOption,
) -> None:
    """Per-class precision, recall, F1 and support (scikit-learn's classification_report)."""
    from analysis.metrics import class_report
    from toolkit.errors import RtkError

    # Checked before the test pass: `not 0 <= x <= 1` also refuses NaN.
    if min_accuracy is not None and not 0 <= min_accuracy <= 1:
        raise RtkError(f"--min-accuracy is a fraction in [0, 1] (0.85 for 85%), got {min_accuracy}")
    report = class_report(_predictions(source, data))  # type: ignore[arg-type]
    if as_json:
        print_json(report)
    else:
        _print_class_report(report, source)
    if min_accuracy is not None and report.accuracy < min_accuracy:
        err_console.print(
            styled(
                ("gate failed:", "bold red"),
                f" accuracy {report.accuracy:.4f} is below the required {min_accuracy:.4f} "
                f"(--min-accuracy) for {source}",
            ),
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _print_class_report(report: ClassReport, source: Path) -> None:
    table = Table(
        title=f"Classification report: {source} ({report.engine}), {report.images:,} images"
    )
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in report.rows:
        style = "bold" if row.name.endswith("avg") else None
        table.add_row(
            row.name, f"{row.precision:.4f}", f"{row.recall:.4f}", f"{row.f1:.4f}",
            f"{row.support:,}", style=style,
        )  # fmt: skip
    console.print(table)
    console.print(f"accuracy {report.accuracy:.4f}")
    _imbalance_note(report.imbalance)


@report_app.command("curves")
def curves(
    runs: list[Path] = typer.Argument(..., help="Run directories or seed groups to overlay."),
    plot: Path = typer.Option(Path("curves.png"), help="Where to write the PNG."),
) -> None:
    """Training and validation accuracy and loss per epoch, models overlaid; a seed group as
    its mean over the seeds with a min-max band."""
    from analysis.plots import training_curves
    from analysis.report import read_history
    from analysis.seeds import group_histories
    from toolkit.training import SeedGroup

    histories = {run.name: read_history(run) for run in runs if not SeedGroup.is_group(run)}
    groups = {run.name: group_histories(run) for run in runs if SeedGroup.is_group(run)}
    console.print(f"wrote {training_curves(histories, plot, groups=groups)}")


@report_app.command("compare")
def compare(
    runs: list[Path] = typer.Argument(
        None, help="Run directories or seed groups \\[every one under runs/]."
    ),
    markdown: Path | None = typer.Option(None, help="Also write the table as Markdown here."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs", help="Where to look by default."),
    ablation: bool = typer.Option(
        False,
        help="An ablation table instead: each run against the first, the settings it changes, "
        "its accuracy and cost (--markdown writes it too).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """The paper's Table I beside this machine's runs: accuracy, time, epochs, parameters; a seed
    group's row gives its mean, spread, 95% interval and n."""
    from analysis.report import (
        ABLATION_COLUMNS,
        TABLE_COLUMNS,
        ablation_cells,
        ablation_markdown,
        ablation_rows,
        compare_runs,
        runs_under,
        table_cells,
        table_markdown,
    )

    if ablation:  # in the order given: the first run is the reference
        rows: list[Any] = ablation_rows(runs or [])
        title, columns, cells, text = (
            "Ablation: each run against the first",
            ABLATION_COLUMNS,
            ablation_cells,
            ablation_markdown(rows),
        )
    else:
        # Every run under --runs: the networks beyond the paper have no Table I row beside them.
        rows = compare_runs(runs or runs_under(runs_dir), skip_others=not runs)
        title, columns, cells, text = (
            "Table I: this machine's runs beside the paper's",
            TABLE_COLUMNS,
            table_cells,
            table_markdown(rows),
        )
    if markdown is not None:
        from toolkit.fileio import atomic_path

        with atomic_path(markdown) as tmp:
            tmp.write_text(text)
        notice(f"wrote {markdown}")
    if as_json:
        print_json(rows)
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("model", "run", ABLATION_COLUMNS[1]) else "right"
        )
    for r in rows:
        table.add_row(*cells(r))
    console.print(table)


@report_app.command("refresh")
def refresh(
    files: list[Path] = typer.Argument(
        ..., help="Markdown files holding results blocks (<!-- rtk report ... --> comments)."
    ),
    check: bool = typer.Option(
        False, help="Change nothing; exit 1 when a block differs from its records (for CI)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Regenerate every results table in these Markdown files from the run records it names, so
    no quoted number can drift from its record."""
    from analysis.records import refresh as refresh_file
    from toolkit.fileio import atomic_path

    done = [refresh_file(f) for f in files]
    stale = [(r.file, b) for r in done for b in r.stale]
    if not check:
        for r in done:
            if r.stale:
                with atomic_path(r.file) as tmp:
                    tmp.write_text(r.text)
    if as_json:
        print_json({"check": check, "files": done})
    else:
        for file, block in stale:
            state = "differs from its records" if check else "regenerated"
            console.print(f"{file}:{block.line}: rtk report {block.command}: {state}", markup=False)
        blocks = sum(len(r.blocks) for r in done)
        console.print(f"{blocks} block(s) in {len(files)} file(s), {len(stale)} out of date")
    if check and stale:
        raise typer.Exit(1)


@report_app.command("seeds")
def seeds(
    groups: list[Path] = typer.Argument(
        ..., help="A seed group (`rtk train --seeds`), or two trained under the same seeds."
    ),
    as_json: bool = JsonOption,
) -> None:
    """A seed group's test results per seed, their mean, spread and 95% interval; for two groups,
    also the difference seed by seed, its interval and a verdict on it."""
    from analysis.seeds import compare_groups, percent, summarize_group
    from analysis.verdicts import paired_claim
    from toolkit.errors import RtkError

    if len(groups) > 2:
        raise RtkError(f"rtk report seeds takes one seed group or two, got {len(groups)}")
    summaries = [summarize_group(g) for g in groups]
    paired = compare_groups(*summaries) if len(summaries) == 2 else []
    verdicts = [paired_claim(p) for p in paired]
    if as_json:
        print_json({"groups": summaries, "paired": paired, "verdicts": verdicts})
        return
    for s in summaries:
        tta = s.estimate("test_acc_tta") is not None
        table = Table(title=f"{s.group}: {s.arch}, {s.recipe} recipe, {len(s.runs)} seed(s)")
        columns = ["seed", "test acc", *(["flip TTA"] if tta else []), "test loss",
                   "best epoch", "epochs", "train min", "run"]  # fmt: skip
        for column in columns:
            table.add_column(column, justify="left" if column == "run" else "right")
        for r in s.runs:
            table.add_row(
                str(r.seed), f"{r.test_acc:.2%}",
                *([f"{r.test_acc_tta:.2%}" if r.test_acc_tta is not None else ""] if tta else []),
                f"{r.test_loss:.4f}", str(r.best_epoch), str(r.epochs_run),
                f"{r.train_s / 60:.1f}", str(r.run),
            )  # fmt: skip
        console.print(table)
        for e in s.estimates:
            console.print(f"{e.metric}: {percent(e)}")
    for p, v in zip(paired, verdicts, strict=True):
        d = p.difference
        per_seed = ", ".join(
            f"seed {seed} {x * 100:+.2f}" for seed, x in zip(d.seeds, d.values, strict=True)
        )
        console.print(f"{d.metric}, {p.first} minus {p.second} (pt): {per_seed}")
        console.print(f"  paired difference: {percent(d, difference=True)}")
        console.print(styled((v.claim, "bold"), f": {v.verdict}"))


@report_app.command("claims")
def claims(
    runs: list[Path] = typer.Argument(
        ...,
        help="Runs or seed groups, one per Table I model (a folder stands for every run and "
        "group under it).",
    ),
    markdown: Path | None = typer.Option(None, help="Also write the verdicts as Markdown here."),
    as_json: bool = JsonOption,
) -> None:
    """The paper's claims that run records decide (1, 2, 4 and 5(ii)), each residual network
    against its plain twin, and where the Mini-ResNet's lead comes from. Accuracy differences
    between two seed groups are judged on their paired 95% interval (a residual network and its
    twin on one run each: inconclusive); rankings and curves on the means over seeds; claim 4's
    gradient half on the norms training recorded. Claims 3, 5(i) and 5(iii) need weights or a
    benchmark: `rtk reproduce` judges them."""
    from analysis.claims import claims_markdown, record_claims
    from analysis.records import record_paths

    verdicts = record_claims(record_paths(runs))
    if markdown is not None:
        from toolkit.fileio import atomic_path

        with atomic_path(markdown) as tmp:
            tmp.write_text(claims_markdown(verdicts))
        notice(f"wrote {markdown}")
    if as_json:
        print_json(verdicts)
        return
    for verdict in verdicts:
        _print_verdict(verdict)
