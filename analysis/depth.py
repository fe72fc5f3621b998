"""``rtk study depth``: plain and residual networks at several depths under one recipe, after
He et al. 2016's Fig. 6 (CIFAR-10, plain-20..56 beside ResNet-20..56).

The question is the degradation problem: does a plain network's *training* error rise with depth
(an optimisation failure, not overfitting) while a residual network's falls? Every run lives in
``OUT/runs/ARCH`` and is reused or resumed on a rerun, as ``rtk reproduce`` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.plots import depth_curves
from analysis.report import markdown_table
from analysis.reproduce import Executor, train_all
from analysis.verdicts import Verdict, judge
from toolkit.data import Dataset
from toolkit.errors import RtkError
from toolkit.fileio import atomic_path, writing
from toolkit.models import architecture_names, get_architecture
from toolkit.training import Observer, RunDir, TrainConfig, make_config


@dataclass(frozen=True)
class DepthBudget:
    name: str
    recipe: str
    reduction: str  # what this budget trims from its recipe, stated in the report
    overrides: dict[str, Any]  # make_config overrides for every network


# He et al.'s CIFAR networks have no dropout and start from He et al.'s own initialisation
# (Kaiming normal), without zero-init residual, which would start every residual network as its
# shallow stem, a head start the plain twins cannot have: this study asks what the skips do.
# fp32 throughout: the study's figures were measured in fp32, and bf16's parity was measured
# on the paper's small models only (docs/speed-precision.md), not on these
# 20-56-layer networks.
_HE = {"dropout": 0.0, "init": "kaiming", "zero_init_residual": False, "tta": False, "amp": False}

DEPTH_BUDGETS = {
    # A first look in minutes (and the test suite's path): too short to converge, long enough
    # for the plain networks' early training curves to part by depth.
    "quick": DepthBudget(
        name="quick",
        recipe="fast",
        reduction="fast recipe, 3 epochs on a seeded 5,000-image training subset at batch 128, "
        "1,000 validation images",
        overrides={**_HE, "epochs": 3, "train_subset": 5000, "batch_size": 128, "val_size": 1000},
    ),
    # He et al. trained 64k iterations (164 epochs). On two CPU cores the six networks at 20,
    # 32 and 56 layers take 1,250 s of one core per epoch of 45,000 images (AVX-512), so the
    # full study is sized to finish in one sitting: 10 epochs on 30,000 images ran in 72
    # minutes as two one-thread processes (docs/studies.md).
    "full": DepthBudget(
        name="full",
        recipe="fast",
        reduction="fast recipe, 10 epochs on a seeded 30,000-image training subset "
        "(He et al.: 164 epochs on the full training set)",
        overrides={**_HE, "epochs": 10, "train_subset": 30_000},
    ),
}
DEFAULT_DEPTHS = (20, 32, 56)


@dataclass(frozen=True)
class EpochErrors:
    epoch: int
    train_error: float  # over the epoch's augmented training batches, in training mode
    val_error: float | None  # the held-out validation split, None without one


@dataclass(frozen=True)
class DepthRun:
    arch: str
    depth: int
    skip: bool
    run: str
    params: int
    epochs: int
    train_error: float  # the last epoch's
    val_error: float | None
    test_error: float  # the final weights on the test split
    train_min: float
    curve: list[EpochErrors]


DEPTH_COLUMNS = ("depth", "network", "params", "epochs", "training error", "validation error",
                 "test error", "train min")  # fmt: skip


def depth_cells(r: DepthRun) -> list[str]:
    """One network's row, in ``DEPTH_COLUMNS`` order: the terminal's table and DEPTH.md's."""
    val = "" if r.val_error is None else f"{r.val_error:.2%}"
    return [str(r.depth), r.arch, f"{r.params:,}", str(r.epochs), f"{r.train_error:.2%}", val,
            f"{r.test_error:.2%}", f"{r.train_min:.1f}"]  # fmt: skip


@dataclass(frozen=True)
class DepthStudy:
    report: Path
    figure: Path
    budget: str
    recipe: str
    depths: list[int]
    runs: list[DepthRun]
    verdict: Verdict
    apart: dict[str, str]  # runs trained under other settings than this study's
    minutes: float


def depth_archs(depth: int) -> tuple[str, str]:
    """The plain and the residual network of ``depth`` layers (He et al.'s CIFAR family)."""
    family = architecture_names("he2015")
    plain, residual = f"plain{depth}", f"resnet{depth}"
    if plain not in family or residual not in family:
        depths = sorted({int(n.removeprefix("resnet")) for n in family if n.startswith("resnet")})
        raise RtkError(
            f"no depth {depth} in He et al.'s CIFAR family; choose from "
            f"{', '.join(map(str, depths))}"
        )
    return plain, residual


def study_configs(
    budget: DepthBudget, depths: list[int], overrides: dict[str, Any] | None = None
) -> dict[str, TrainConfig]:
    """Every network's settings, plain then residual per depth (shallow first): checks the
    depths and the overrides (``None`` keeps the budget's) before anything trains."""
    chosen = {**budget.overrides, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    archs = [arch for depth in sorted(set(depths)) for arch in depth_archs(depth)]
    return {arch: make_config(arch, budget.recipe, **chosen) for arch in archs}


def budget_changes(budget: DepthBudget, config: TrainConfig) -> str:
    """The settings where ``config`` departs from ``budget`` ("epochs 5, val_size 500"), empty
    when none: the budget's ``reduction`` alone would misstate an overridden study."""
    ours = config.to_dict()
    theirs = make_config(config.arch, budget.recipe, **budget.overrides).to_dict()
    return ", ".join(f"{k} {v}" for k, v in ours.items() if k != "device" and theirs[k] != v)


def _depth_run(arch: str, run: Path) -> DepthRun:
    rundir = RunDir.open(run)
    metrics = rundir.read_metrics()
    history = rundir.read_history()
    spec = get_architecture(arch)
    classes = rundir.read_config()["data"].get("classes") or [None] * spec.num_classes
    model = spec.build(**spec.kwargs_for(num_classes=len(classes)))
    curve = [
        EpochErrors(
            epoch=int(r["epoch"]),
            train_error=1 - float(r["train_acc"]),
            val_error=None if r.get("val_acc") is None else 1 - float(r["val_acc"]),
        )
        for r in history
    ]
    return DepthRun(
        arch=arch,
        depth=model.weight_layers()[-1].depth,
        skip=bool(spec.kwargs.get("skip", True)),
        run=str(run),
        params=sum(p.numel() for p in model.parameters()),
        epochs=len(curve),
        train_error=curve[-1].train_error,
        val_error=curve[-1].val_error,
        test_error=1 - float(metrics["test_acc"]),
        train_min=float(metrics["train_s"]) / 60,
        curve=curve,
    )


def degradation_claim(runs: list[DepthRun]) -> Verdict:
    """He et al.: the plain network's training error rises from the shallowest depth to the
    deepest while the residual network's falls. Judged on the last epoch's training error."""
    claim = "Degradation: plain nets' training error rises with depth, residual nets' falls"
    plain = sorted((r for r in runs if not r.skip), key=lambda r: r.depth)
    residual = sorted((r for r in runs if r.skip), key=lambda r: r.depth)
    if len(plain) < 2 or len(residual) < 2:
        return Verdict(claim, "not measured", "needs at least two depths of each kind")

    def trend(rows: list[DepthRun]) -> str:
        return " -> ".join(f"{r.depth}: {r.train_error:.2%}" for r in rows)

    rises = plain[-1].train_error > plain[0].train_error
    falls = residual[-1].train_error < residual[0].train_error
    evidence = (
        f"last-epoch training error by depth, plain {trend(plain)} "
        f"({'rises' if rises else 'does not rise'}); residual {trend(residual)} "
        f"({'falls' if falls else 'does not fall'})"
    )
    return Verdict(claim, judge(rises and falls), evidence)


def depth_study(
    *,
    budget: DepthBudget,
    depths: list[int],
    out: Path,
    dataset: Dataset,
    overrides: dict[str, Any] | None = None,
    say: Callable[[str], None] = lambda _: None,
    observer: Observer | None = None,
    rerun: str | None = None,
    executor: Executor | None = None,
) -> DepthStudy:
    """Train (or reuse, or resume) the plain and residual network at each depth, then write
    the Fig. 6-style figure and ``DEPTH.md`` into ``out``; one process at a time writes it.
    ``executor`` trains the unfinished runs elsewhere (Ray) first."""
    rerun = rerun or f"rtk study depth --budget {budget.name} --out {out}"
    with writing(out, outputs=[out / "DEPTH.md", out / "figures"]):
        return _depth_study(budget, depths, out, dataset, overrides, say, observer, rerun, executor)


def _depth_study(
    budget: DepthBudget,
    depths: list[int],
    out: Path,
    dataset: Dataset,
    overrides: dict[str, Any] | None,
    say: Callable[[str], None],
    observer: Observer | None,
    rerun: str,
    executor: Executor | None,
) -> DepthStudy:
    start = time.perf_counter()
    configs = study_configs(budget, depths, overrides)
    archs = list(configs)
    planned = {arch: (config, out / "runs" / arch) for arch, config in configs.items()}
    apart = train_all(planned, dataset, observer, rerun=rerun, executor=executor, say=say)
    runs = [_depth_run(arch, out / "runs" / arch) for arch in archs]
    verdict = degradation_claim(runs)
    figure = depth_curves(
        {r.arch: [(e.epoch, e.train_error, e.val_error) for e in r.curve] for r in runs},
        skips={r.arch: r.skip for r in runs},
        path=out / "figures" / "depth.png",
    )
    study = DepthStudy(
        report=out / "DEPTH.md", figure=figure, budget=budget.name, recipe=budget.recipe,
        depths=sorted(set(depths)), runs=runs, verdict=verdict, apart=apart,
        minutes=(time.perf_counter() - start) / 60,
    )  # fmt: skip
    with atomic_path(study.report) as tmp:
        tmp.write_text(_markdown(study, budget, configs[archs[0]], dataset, out))
    return study


def _markdown(
    study: DepthStudy,
    budget: DepthBudget,
    config: TrainConfig,
    dataset: Dataset,
    out: Path,
) -> str:
    settings = {k: v for k, v in config.to_dict().items() if k not in ("arch", "device")}
    changed = budget_changes(budget, config)
    lines = [
        "# Depth study: plain against residual networks (He et al. 2016, Fig. 6)",
        "",
        f"Written by `rtk study depth --budget {study.budget}`; this run's own work took "
        f"{study.minutes:.1f} min (reused runs excluded).",
        "",
        f"- Data: {dataset.source.path}, {len(dataset.train):,} training images (validation "
        f"held out of them), {len(dataset.test):,} test images.",
        f"- Budget `{budget.name}`: {budget.reduction}"
        + (f"; overridden here: {changed}" if changed else "")
        + ".",
        "- Settings of every run: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + ".",
    ]
    if study.apart:
        runs = "; ".join(f"{arch}: {difference}" for arch, difference in study.apart.items())
        lines.append(f"- Trained under other settings (reused or resumed runs): {runs}.")
    rows = [depth_cells(r) for r in sorted(study.runs, key=lambda r: (r.depth, r.skip))]
    lines += ["", markdown_table(DEPTH_COLUMNS, rows).rstrip("\n")]
    v = study.verdict
    lines += [
        "",
        "Training error is the last epoch's, over its augmented batches in training mode (as "
        "He et al. plot it); test error is the final weights' on the test split.",
        "",
        f"**{v.claim}: {v.verdict}.** {v.evidence}.",
        "",
        f"![depth curves]({study.figure.relative_to(out)})",
    ]
    return "\n".join(lines) + "\n"
