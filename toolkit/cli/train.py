"""``rtk train``: the paper's training runs, resumable and observable."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from toolkit.cli import executor as ex
from toolkit.cli.output import console, err_console, notice, print_json, styled
from toolkit.config import RECIPES, TrainConfig

if TYPE_CHECKING:
    from analysis.seeds import GroupSummary
    from toolkit.cluster import RaySettings
    from toolkit.data import Dataset
    from toolkit.training import SeedGroup, Trainer, TrainResult
    from toolkit.training.observers import Observers


class RichObserver:
    """A progress bar per epoch and one summary line per finished epoch."""

    def __init__(self, out: Console, *, progress: bool) -> None:
        self.out = out
        self.show_progress = progress
        self.progress: Progress | None = None
        self.task = 0

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        if not self.show_progress:
            return
        self.progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=batches, stats="")

    def batch_progress(self, done: int, loss: float, acc: float, images_per_s: float) -> None:
        if self.progress is not None:
            stats = f"loss {loss:.3f}  acc {acc:.3f}  {images_per_s:,.0f} img/s"
            self.progress.update(self.task, completed=done, stats=stats)

    def epoch_end(self, record: object) -> None:
        from toolkit.training import EpochRecord

        assert isinstance(record, EpochRecord)
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        val = (
            f"val loss {record.val_loss:.4f} acc {record.val_acc:.4f}"
            if record.val_loss is not None and record.val_acc is not None
            else "no validation"
        )
        self.out.print(
            f"epoch {record.epoch:>3}  train loss {record.train_loss:.4f} acc "
            f"{record.train_acc:.4f}  {val}  lr {record.lr:.2e}  {record.epoch_s:.1f} s  "
            f"{record.images_per_s:,.0f} img/s"
        )

    def close(self) -> None:
        if self.progress is not None:  # an epoch cut short (Ctrl-C, an error): clear its bar
            self.progress.stop()
            self.progress = None


def _run_path(out: Path, name: str | None, arch: str) -> Path:
    """The run folder ``out/name``; a name that would leave ``out`` is refused."""
    from toolkit.training import ConfigError, default_run_name

    if name is not None and (name in ("", ".", "..") or Path(name).name != name):
        raise ConfigError(
            f"--name {name!r} must be a plain folder name (no '/', '..' or absolute path), "
            "since the run folder lives in --out"
        )
    path = out / (name or default_run_name(arch))
    if path.is_symlink():  # writing through it would put the run outside --out
        raise ConfigError(
            f"{path} is a symbolic link; rtk writes run folders only inside --out: remove the "
            "link or pick another --name"
        )
    return path


def _default(setting: str) -> str:
    """A setting's default for the help text, read from ``TrainConfig`` and ``RECIPES``: one
    value, or each recipe's where they differ."""
    values = {name: RECIPES[name].get(setting, getattr(TrainConfig, setting)) for name in RECIPES}
    if setting == "recipe":
        values = {"": TrainConfig.recipe}

    def shown(value: object) -> str:
        return ("yes" if value else "no") if isinstance(value, bool) else str(value)

    # "\\[": a literal bracket, not Rich markup, in Typer's help.
    if len(set(map(str, values.values()))) == 1:
        return f"\\[{shown(next(iter(values.values())))}]"
    return "\\[" + ", ".join(f"{name} {shown(v)}" for name, v in values.items()) + "]"


def _launch_torchrun(nproc: int, run_path: Path) -> int:
    """Re-run this command under torchrun with ``nproc`` processes on this machine.

    torchrun runs in this process, so a failed rank becomes its own exit code and one line
    (the rank printed its error already), not torchrun's traceback.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from toolkit.training import RunDir

    RunDir.check_new(run_path)  # fail here, once, rather than in rank 0 under torchrun
    args = sys.argv[1:]
    cleaned: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            cleaned.append(arg)
    if "--name" not in cleaned:
        cleaned += ["--name", run_path.name]  # every rank must agree on the run directory
    launch = ["--standalone", f"--nproc-per-node={nproc}", "-m", "toolkit", *cleaned]
    try:
        run(get_args_parser().parse_args(launch))
    except ChildFailedError as exc:
        codes = [failure.exitcode for failure in exc.failures.values()]
        return next((code for code in codes if code > 0), 1)
    except (SignalException, KeyboardInterrupt):
        return 130
    return 0


def train(
    archs: list[str] = typer.Argument(
        None,
        help="Architectures to train (see `rtk models`), or `all` for the paper's four.",
        show_default=False,
    ),
    recipe: str | None = typer.Option(
        None,
        help="paper (Adam, plateau, early stop), sgd (seed 003's SGD), seed003 (sgd as seed 003 "
        f"trained its slim ResNet-18) or fast (per-step schedule, for a CPU budget) "
        f"{_default('recipe')}.",
    ),
    epochs: int | None = typer.Option(None, help=f"Maximum epochs {_default('epochs')}."),
    batch_size: int | None = typer.Option(
        None, help=f"Batch size per process {_default('batch_size')}."
    ),
    lr: float | None = typer.Option(None, help=f"Initial learning rate {_default('lr')}."),
    momentum: float | None = typer.Option(None, help=f"SGD momentum {_default('momentum')}."),
    weight_decay: float | None = typer.Option(
        None, help=f"Weight decay {_default('weight_decay')}."
    ),
    patience: int | None = typer.Option(
        None, help=f"Early-stopping patience in epochs, 0 = off {_default('patience')}."
    ),
    plateau_patience: int | None = typer.Option(
        None, help=f"ReduceLROnPlateau patience {_default('plateau_patience')}."
    ),
    plateau_factor: float | None = typer.Option(
        None, help=f"ReduceLROnPlateau factor {_default('plateau_factor')}."
    ),
    dropout: float | None = typer.Option(
        None, help=f"Dropout before the classifier {_default('dropout')}."
    ),
    label_smoothing: float | None = typer.Option(
        None, help=f"Label smoothing {_default('label_smoothing')}."
    ),
    warmup_frac: float | None = typer.Option(
        None, help=f"Warm-up share of all steps, per-step schedules {_default('warmup_frac')}."
    ),
    tta: bool | None = typer.Option(
        None, help=f"Also report flip test-time-augmentation accuracy {_default('tta')}."
    ),
    init: str | None = typer.Option(
        None,
        help="Initial weights: kaiming (torchvision's Kaiming-normal fan-out) or torch "
        f"(PyTorch's layer defaults) {_default('init')}.",
    ),
    zero_init_residual: bool | None = typer.Option(
        None,
        help="Start each residual block as its shortcut (last BN scale 0) "
        f"{_default('zero_init_residual')}.",
    ),
    translate: int | None = typer.Option(
        None, help=f"Random shift in pixels, 0 = off {_default('translate')}."
    ),
    image_size: int | None = typer.Option(
        None,
        help="Resize every image to NxN when decoding an ImageFolder dataset (by default they "
        "keep their stored size, which must be one).",
        show_default=False,
    ),
    normalize: str | None = typer.Option(
        None,
        help="Input normalisation: paper ((x - 0.5) / 0.5), data (per-channel mean and std of "
        "the training split) or auto (paper on CIFAR-10, data on any other dataset) "
        f"{_default('normalize')}.",
    ),
    seed: int | None = typer.Option(
        None, help=f"Seed of weights, order, augmentation {_default('seed')}."
    ),
    seeds: str | None = typer.Option(
        None,
        help="Several seeds, e.g. 0,1,2: one seed group per architecture, GROUP/seed-N/ each "
        "an ordinary run (`rtk report seeds GROUP` summarises it).",
        show_default=False,
    ),
    device: str | None = typer.Option(None, help=f"auto, cpu or cuda {_default('device')}."),
    channels_last: bool | None = typer.Option(
        None, help=f"channels_last memory format {_default('channels_last')}."
    ),
    compile_model: bool | None = typer.Option(
        None, "--compile", help=f"torch.compile the model {_default('compile')}."
    ),
    amp: bool | None = typer.Option(
        None,
        help="Mixed precision: bf16 where the CPU or GPU computes it natively, fp16 on older "
        "GPUs; refused on a CPU without native bf16 (slower than fp32). auto: bf16 where native, "
        f"else fp32 {_default('amp')}.",
    ),
    train_subset: int | None = typer.Option(None, help="Train on N images, for quick runs."),
    val_size: int | None = typer.Option(
        None, help=f"Training images held out {_default('val_size')}."
    ),
    data: Path | None = typer.Option(None, help="Dataset path (see `rtk data info`)."),
    out: Path | None = typer.Option(
        None, help="Parent folder of run directories \\[runs].", show_default=False
    ),
    name: str | None = typer.Option(
        None, help="Run directory name [ARCH-DATE-TIME; with --seeds ARCH-seeds-DATE-TIME]."
    ),
    resume: Path | None = typer.Option(
        None, help="Continue the run (or the seed group) in this directory."
    ),
    nproc: int = typer.Option(1, help="Processes on this machine (DDP through torchrun)."),
    tensorboard: bool = typer.Option(
        False, help="Also write TensorBoard event files into the run folder."
    ),
    quiet: bool = typer.Option(False, help="No progress bars or epoch lines."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    executor: str = ex.EXECUTOR,
    ray_address: str | None = ex.RAY_ADDRESS,
    cpus_per_run: float | None = ex.CPUS_PER_RUN,
    gpus_per_run: float = ex.GPUS_PER_RUN,
) -> None:
    """Train architectures with the paper's recipe (or --recipe sgd|seed003|fast); test the best
    weights."""
    from toolkit.training import ConfigError

    overrides = _settings(locals())
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    ray = ex.ray_settings(executor, ray_address, cpus_per_run, gpus_per_run)
    if ray is not None and resume is None and seeds is None:  # before torchrun could start
        raise ConfigError(_RAY_NEEDS_GROUPS)
    if resume is not None:
        given = {**overrides, "recipe": recipe, "name": name, "seeds": seeds, "out": out}
        given["nproc"] = nproc if nproc > 1 else None  # a resumed run keeps its process count
        flags = ", ".join(
            "--" + k.replace("_", "-") for k, v in given.items() if v is not None and k != "epochs"
        )
        if flags:
            raise ConfigError(
                f"--resume continues a run with its own settings; only --epochs may change "
                f"(got {flags})"
            )
        if archs:
            raise ConfigError("--resume continues the run's own architecture; name none")
        plan = _resume_plan(resume, epochs)
    else:
        where = out or Path("runs")
        plan = _new_plan(
            archs or [], recipe, overrides, seeds=seeds, nproc=nproc, out=where, name=name
        )
    if ray is not None and not (plan.groups or plan.new_groups):  # --resume of one run
        raise ConfigError(_RAY_NEEDS_GROUPS)
    options = {"tensorboard": tensorboard, "quiet": quiet, "as_json": as_json, "ray": ray}
    _run_plan(plan, data, resuming=resume is not None, **options)


_RAY_NEEDS_GROUPS = (
    "--executor ray trains the seeds of a group as Ray tasks: give --seeds (or --resume a seed "
    "group); a single run trains here, or across processes with --nproc"
)


# Options named apart from the setting they give (`compile` would shadow the builtin).
_OPTION_SETTING = {"compile_model": "compile"}


def _settings(options: dict[str, object]) -> dict[str, object]:
    """The command's options that give a ``TrainConfig`` setting, under the setting's name
    (``None``: not given, the recipe's value holds). Read from the signature itself, so an
    option is written once; `tests/test_cli.py` checks every option is a setting or known."""
    settable = {f.name for f in fields(TrainConfig)} - {"arch", "recipe"}
    named = {_OPTION_SETTING.get(k, k): v for k, v in options.items()}
    return {k: v for k, v in named.items() if k in settable}


@dataclass
class _Plan:
    """What one `rtk train` does: single runs, seed groups to continue, seed groups to make."""

    jobs: list[tuple[TrainConfig, Path]] = field(default_factory=list)
    groups: list[SeedGroup] = field(default_factory=list)
    new_groups: list[tuple[TrainConfig, Path, list[int]]] = field(default_factory=list)

    @property
    def configs(self) -> list[TrainConfig]:
        configs = [c for c, _ in self.jobs] + [c for c, _, _ in self.new_groups]
        return configs + [g.config(g.seeds[0]) for g in self.groups]


def _resume_plan(resume: Path, epochs: int | None) -> _Plan:
    from toolkit.training import ConfigError, SeedGroup, resume_config

    if not SeedGroup.is_group(resume):
        return _Plan(jobs=[(resume_config(resume, epochs=epochs), resume)])
    if epochs is not None:
        raise ConfigError(
            "--resume of a seed group keeps the settings all its seeds share; "
            "--epochs cannot change (train a new group)"
        )
    return _Plan(groups=[SeedGroup.open(resume)])


def _new_plan(
    archs: list[str],
    recipe: str | None,
    overrides: dict[str, object],
    *,
    seeds: str | None,
    nproc: int,
    out: Path,
    name: str | None,
) -> _Plan:
    """The runs or seed groups to make, every one checked before the first is made; with
    ``nproc`` > 1 this process hands the one run to torchrun and exits."""
    from toolkit.config import parse_seeds
    from toolkit.models import PAPER, architecture_names, get_architecture
    from toolkit.training import ConfigError, SeedGroup, make_config
    from toolkit.training.device import check_precision

    if not archs:
        raise ConfigError("name an architecture to train (or `all`), or pass --resume RUN_DIR")
    seed_list = parse_seeds(seeds) if seeds is not None else None
    if seed_list is not None and overrides["seed"] is not None:
        raise ConfigError("--seed and --seeds exclude each other; list every seed in --seeds")
    all_four = archs == ["all"]  # the paper's models; the seeds' networks are named one by one
    names = architecture_names(PAPER) if all_four else [get_architecture(a).name for a in archs]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(
            f"{', '.join(twice)} named more than once; name each architecture once (for several "
            "runs of one, use --seeds)"
        )
    if nproc > 1:
        if seed_list is not None:
            raise ConfigError(
                "--seeds trains its seeds one after another in one process; drop --nproc"
            )
        if len(names) != 1:
            raise ConfigError("--nproc trains one new run at a time; name exactly one architecture")
        config = make_config(names[0], recipe or "paper", **overrides)  # once, before torchrun
        from toolkit.training import resolve_device
        from toolkit.training.distributed import check_gpus

        check_precision(config)
        if resolve_device(config.device) == "cuda":
            check_gpus(nproc)  # "invalid device ordinal" in a rank otherwise
        raise typer.Exit(_launch_torchrun(nproc, _run_path(out, name, names[0])))
    plan = _Plan()
    for arch in names:
        run_name = name if len(names) == 1 else (f"{name}-{arch}" if name else None)
        config = make_config(arch, recipe or "paper", **overrides)
        if seed_list is None:
            plan.jobs.append((config, _run_path(out, run_name, arch)))
        else:
            path = _run_path(out, run_name, f"{arch}-seeds")
            SeedGroup.check_new(path)  # every group, before the first is made
            plan.new_groups.append((config, path, seed_list))
    return plan


def _run_plan(
    plan: _Plan,
    data: Path | None,
    *,
    resuming: bool,
    tensorboard: bool,
    quiet: bool,
    as_json: bool,
    ray: RaySettings | None,
) -> None:
    from toolkit.data import load_dataset
    from toolkit.training import ConfigError, RunDir, SeedGroup, Trainer, check_dataset
    from toolkit.training.device import check_precision
    from toolkit.training.rundir import resume_command

    # Under torchrun every rank would make the group, and each seed's run ends the process group.
    if (plan.groups or plan.new_groups) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("a seed group trains in one process; run it without torchrun")
    for config in plan.configs:  # a refused device or precision, before the data is read
        check_precision(config, resuming=resuming)
    sizes = {config.image_size for config in plan.configs}
    if len(sizes) > 1:
        raise ConfigError(
            f"the runs resumed together decode their images at different sizes "
            f"({', '.join(map(str, sizes))}); resume them one by one"
        )
    dataset = load_dataset(data, image_size=sizes.pop(), announce=notice)
    for config in plan.configs:  # every job, before the first run folder is made
        check_dataset(
            config,
            classes=len(dataset.classes),
            train_images=len(dataset.train),
            input_size=dataset.input_size,
        )
    for group in plan.groups:
        group.check_data(dataset)
    out_console = err_console if as_json else console
    if plan.groups or plan.new_groups:
        from toolkit.cluster import ray_session

        # Ray is reached, and its resources checked, before any group folder is made (and not
        # at all when every seed of the groups resumed has finished).
        unfinished = plan.new_groups or any(
            not RunDir(g.run_path(seed)).finished for g in plan.groups for seed in g.seeds
        )
        on_ray = ray is not None and unfinished
        session = ray_session(ray) if on_ray else contextlib.nullcontext(ray)  # type: ignore[arg-type]
        with session as ray:
            groups = plan.groups + [
                SeedGroup.create(path, config, seeds, data=str(dataset.source.path))
                for config, path, seeds in plan.new_groups
            ]
            summaries = []
            for index, group in enumerate(groups):
                # After Ctrl-C, one line continues this group and every one after it.
                rerun = " && ".join(
                    resume_command(g.path, dataset.source.path) + ex.ray_flags(ray)
                    for g in groups[index:]
                )
                summary = _train_group(
                    group, dataset, rerun=rerun, tensorboard=tensorboard, quiet=quiet,
                    as_json=as_json, ray=ray,
                )  # fmt: skip
                summaries.append(summary)
        if as_json:
            print_json(summaries if len(summaries) > 1 else summaries[0])
        return
    results = []
    main_rank = True
    for config, run_path in plan.jobs:
        observer = _observers(run_path, tensorboard=tensorboard, quiet=quiet, out=out_console)
        trainer = Trainer(config, dataset, run_path, observer=observer, resume=resuming)
        main_rank = trainer.world.is_main
        if main_rank and not quiet:
            _announce(trainer, run_path, out_console, resuming=resuming)
        result = trainer.run()  # closes the observers (TensorBoard's files) before unlocking
        results.append(result.summary())
        if main_rank and not as_json:
            _print_result(result)
    if as_json and main_rank:
        print_json(results if len(results) > 1 else results[0])


def _train_group_on_ray(
    group: SeedGroup,
    dataset: Dataset,
    ray: RaySettings,
    *,
    rerun: str,
    tensorboard: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """The group's unfinished seeds as Ray tasks, all at once; each is reported as it ends,
    a finished seed reused as the local loop reuses it."""
    from toolkit.cluster import train_on_ray
    from toolkit.training import RunDir

    out = err_console if as_json else console
    jobs = []
    for seed in group.seeds:
        run_path = group.run_path(seed)
        if not RunDir(run_path).finished:
            jobs.append((group.config(seed), run_path))
        elif not quiet:
            reused = f" seed {seed}: finished earlier, reused ({run_path})"
            out.print(styled((group.arch, "bold"), reused))
    if not jobs:
        return

    def say(message: str) -> None:
        if not quiet:
            out.print(styled((group.arch, "bold"), f" {message} -> {group.path}"))

    def done(run: Path, result: TrainResult | None) -> None:
        if result is not None and not as_json:
            _print_result(result)

    train_on_ray(jobs, dataset.source.path, ray, say=say, done=done, rerun=rerun,
                 tensorboard=tensorboard)  # fmt: skip


def _observers(run_path: Path, *, tensorboard: bool, quiet: bool, out: Console) -> Observers:
    """The terminal's progress (unless quiet) and TensorBoard's event files (if asked)."""
    from toolkit.training.observers import Observers, TensorBoardObserver

    board = TensorBoardObserver(run_path) if tensorboard else None
    shown = None if quiet else RichObserver(out, progress=True)
    return Observers(*(o for o in (shown, board) if o is not None))


def _announce(trainer: Trainer, run_path: Path, out: Console, *, resuming: bool) -> None:
    config = trainer.config
    where = f", resuming after epoch {trainer.epoch}" if resuming else ""
    out.print(
        styled(
            (config.arch, "bold"),
            f" -> {run_path}  ({config.recipe} recipe, "
            f"{trainer.device} in {trainer.precision.name}, "
            f"{trainer.world.size} process(es), effective batch "
            f"{config.batch_size * trainer.world.size}{where})",
        )
    )


def _print_result(result: TrainResult) -> None:
    tta = f", {result.test_acc_tta:.2%} with flip TTA" if result.test_acc_tta is not None else ""
    console.print(
        styled(
            (result.arch, "bold green"),
            f": test accuracy {result.test_acc:.2%}{tta} (loss {result.test_loss:.4f}, "
            f"{result.test_images:,} images, {result.test_precision}) with the weights "
            f"of epoch {result.best_epoch}; {result.epochs_run} epochs in {result.precision}, "
            f"{result.train_s / 60:.1f} min{' (early stop)' if result.stopped_early else ''}"
            f"  -> {result.run_dir}",
        )
    )


def _train_group(
    group: SeedGroup,
    dataset: Dataset,
    *,
    rerun: str,
    tensorboard: bool,
    quiet: bool,
    as_json: bool,
    ray: RaySettings | None,
) -> GroupSummary:
    """Each seed in turn: a finished seed is reused, a started one resumed, the rest trained;
    then the group's summary over its seeds. ``rerun`` continues the job after Ctrl-C."""
    from analysis.seeds import percent, summarize_group
    from toolkit.fileio import writing
    from toolkit.training import open_run, rerun_on_interrupt

    out = err_console if as_json else console
    with writing(group.path):  # one process trains a group: a second is refused
        if ray is not None:
            _train_group_on_ray(
                group, dataset, ray, rerun=rerun, tensorboard=tensorboard, quiet=quiet,
                as_json=as_json,
            )  # fmt: skip
        else:
            for seed in group.seeds:
                run_path = group.run_path(seed)
                observer = _observers(run_path, tensorboard=tensorboard, quiet=quiet, out=out)
                action, trainer = open_run(group.config(seed), run_path, dataset, observer=observer)
                if trainer is None:
                    if not quiet:
                        reused = f" seed {seed}: finished earlier, reused ({run_path})"
                        out.print(styled((group.arch, "bold"), reused))
                    continue
                if not quiet:
                    _announce(trainer, run_path, out, resuming=action == "resume")
                with rerun_on_interrupt(run_path, rerun):
                    result = trainer.run()
                if not as_json:
                    _print_result(result)
    summary = summarize_group(group.path)
    if not as_json:
        seeds = ",".join(map(str, summary.seeds))
        for e in summary.estimates:
            console.print(
                styled(
                    (summary.arch, "bold green"),
                    f" over seeds {seeds}: {e.metric} {percent(e)}  -> {summary.group}",
                )
            )
    return summary
