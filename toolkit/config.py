"""Training configuration: the paper's recipe, the seeds' SGD recipe, the fast recipe, and
every override."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from toolkit.errors import RtkError

Optimizer = Literal["adam", "sgd"]
# plateau and multistep step once per epoch; linear and cosine are per-step schedules: a linear
# warm-up from 0 over the first ``warmup_frac`` of all steps, then a decay to zero at the last.
Scheduler = Literal["plateau", "multistep", "linear", "cosine", "none"]
# Which weights become best.pt: the lowest validation loss (the paper's checkpoint callback), or
# the last epoch's (a schedule that decays to zero is meant to end on its final weights).
Select = Literal["val_loss", "last"]
# Mixed precision: False trains in fp32; True asks for it (bf16 where the device computes it
# natively, fp16 with a gradient scaler on older GPUs; refused on a CPU without native bf16,
# where it is slower than fp32); "auto" takes bf16 where it is native and stays fp32 elsewhere.
Amp = bool | Literal["auto"]
# How a run's weights start: "kaiming" is torchvision's scheme, which every rtk model applies
# when built (Kaiming-normal fan-out convolutions, BN (1, 0)); "torch" is each layer's PyTorch
# default (Kaiming-uniform, a=sqrt(5): a sixth of the squared weight norm of a conv as wide in
# as out).
Init = Literal["kaiming", "torch"]
# How pixels are normalised: "paper" is (x - 0.5) / 0.5 on the [0, 1] scale for every channel;
# "data" the per-channel mean and std of the training split; "auto" the paper's on CIFAR-10
# (what the paper trains on) and the training split's on any other dataset.
NormalizeMode = Literal["auto", "paper", "data"]
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 8, 1024  # the sides --image-size resizes a dataset's images to


class ConfigError(RtkError):
    """An invalid training setting."""


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the type ``hint`` declares, as JSON can write it (an int where
    a float is declared; never a bool for a number)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is tuple:
        return isinstance(value, tuple) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items()
        )
    if hint is float:
        return type(value) in (int, float)
    return type(value) is hint


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"a list, each {_describe(args[0])}"
    if origin is dict:
        return f"an object, each value {_describe(args[1])}"
    names = {type(None): "null", bool: "true or false", int: "a whole number", float: "a number"}
    return names.get(hint, f"a {getattr(hint, '__name__', hint)}")


def mistyped(values: dict[str, Any], record: type, names: typing.Iterable[str]) -> list[str]:
    """Each of ``names`` present in ``values`` whose value is not of the type the dataclass
    ``record`` declares for it, as ``name (want: ...)``: the file rtk wrote from that record was
    edited or is foreign. One schema per file, the writer's own dataclass."""
    hints = typing.get_type_hints(record)
    return [
        f"{name} {values[name]!r} (want {_describe(hints[name])})"
        for name in names
        if name in values and not _fits(values[name], hints[name])
    ]


@dataclass(frozen=True)
class TrainConfig:
    arch: str
    recipe: str = "paper"
    optimizer: Optimizer = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    nesterov: bool = False  # SGD only
    weight_decay: float = 0.0
    decay_norm_bias: bool = True  # False: no weight decay on BatchNorm weights and biases
    label_smoothing: float = 0.0  # training loss only; validation and test loss stay plain CE
    scheduler: Scheduler = "plateau"
    plateau_factor: float = 0.2  # ReduceLROnPlateau on validation loss
    plateau_patience: int = 3  # epochs without improvement before the lr drops
    milestones: tuple[int, ...] = ()  # MultiStepLR epochs
    gamma: float = 0.1  # MultiStepLR factor
    warmup_frac: float = 0.0  # linear/cosine: share of all steps spent warming up from lr 0
    epochs: int = 30
    batch_size: int = 64  # per process; the effective batch is this times the world size
    patience: int = 7  # early stopping on validation loss, in epochs; 0 disables it
    select: Select = "val_loss"
    dropout: float = 0.5
    flip: bool = True
    brightness: float = 0.1  # max additive delta on the [0, 1] scale
    translate: int = 0  # max random shift in pixels
    image_size: int | None = None  # resize every image to NxN at decode; None: stored size
    normalize: NormalizeMode = "auto"
    seed: int = 0
    val_size: int = 5_000
    split_seed: int = 0
    train_subset: int | None = None  # first N images of the shuffled training split
    tta: bool = False  # also test with flip test-time augmentation, reported apart
    init: Init = "kaiming"
    # Residual blocks start as their shortcut (last BN scale 0); no effect on plain networks.
    zero_init_residual: bool = False
    device: str = "auto"
    # NHWC: oneDNN's CPU convolutions train faster in it (docs/speed-precision.md has the
    # side-by-side figures), and cuDNN's fast kernels want it too.
    channels_last: bool = True
    compile: bool = False
    amp: Amp = False  # see Amp above; the precision a run really took is in config.json
    grad_norm_batches: int = 8  # per-layer gradient norms averaged over the epoch's last N batches

    def validate(self) -> TrainConfig:
        # Every value of its declared type first: settings also come from files anyone can edit
        # (an optimizer "rmsprop" trained with Adam). Then NaN, which passes every comparison
        # below (``nan <= 0`` is False).
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _fits(value, hints[f.name]):
                raise ConfigError(
                    f"{_flag(f.name)} must be {_describe(hints[f.name])}, got {value!r}"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{_flag(f.name)} must be a finite number, got {value}")
        if self.recipe not in RECIPES:  # from a file: reports would name a recipe that never was
            raise ConfigError(
                f"unknown recipe {self.recipe!r}; choose one of: {', '.join(RECIPES)}"
            )
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{_flag(name)} must be positive, got {value}")
        if not 0 <= self.split_seed < 2**32:  # scikit-learn's random_state range
            raise ConfigError(f"split_seed must be in [0, 2**32), got {self.split_seed}")
        if self.grad_norm_batches < 1:
            raise ConfigError(
                f"grad_norm_batches must be 1 or more (gradient norms averaged over the epoch's "
                f"last batches), got {self.grad_norm_batches}"
            )
        if self.patience < 0:
            raise ConfigError(f"--patience must be 0 (off) or more, got {self.patience}")
        if self.plateau_patience < 0:
            raise ConfigError(f"--plateau-patience must be 0 or more, got {self.plateau_patience}")
        if not 0 < self.plateau_factor < 1:
            raise ConfigError(
                f"--plateau-factor must be in (0, 1) (it multiplies the lr), "
                f"got {self.plateau_factor}"
            )
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.seed < 2**64:  # torch.manual_seed's range
            raise ConfigError(f"--seed must be in [0, 2**64), got {self.seed}")
        if self.translate < 0:  # its upper bound is the dataset's image side: check_dataset
            raise ConfigError(f"--translate must be 0 or more pixels, got {self.translate}")
        if self.image_size is not None and not (
            MIN_IMAGE_SIDE <= self.image_size <= MAX_IMAGE_SIDE
        ):
            raise ConfigError(
                f"--image-size must be in [{MIN_IMAGE_SIDE}, {MAX_IMAGE_SIDE}] pixels, "
                f"got {self.image_size}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.optimizer == "sgd" and self.nesterov and self.momentum <= 0:
            raise ConfigError(
                f"this recipe uses Nesterov momentum, which needs --momentum above 0, "
                f"got {self.momentum}"
            )
        if not 0 <= self.warmup_frac < 1:
            raise ConfigError(f"--warmup-frac must be in [0, 1), got {self.warmup_frac}")
        if self.val_size < 0:
            raise ConfigError(f"--val-size must be 0 or more, got {self.val_size}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ConfigError(f"--train-subset must be positive, got {self.train_subset}")
        if self.val_size == 0 and (self.scheduler == "plateau" or self.patience > 0):
            raise ConfigError(
                "--val-size 0 leaves nothing to validate on, but this recipe reduces the lr "
                "and stops early on validation loss; keep a validation set or use --recipe sgd"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def config_from_settings(settings: dict[str, Any], *, where: object) -> TrainConfig:
    """The ``TrainConfig`` a file's stored settings describe (JSON keeps tuples as lists);
    ``where`` names the file in the error when this rtk does not know a setting."""
    values = dict(settings)
    if isinstance(values.get("milestones"), list):  # JSON's list for the tuple
        values["milestones"] = tuple(values["milestones"])
    try:
        return TrainConfig(**values).validate()
    except TypeError as exc:
        raise ConfigError(f"{where} has settings this rtk does not know ({exc})") from exc
    except ConfigError as exc:
        raise ConfigError(f"{where} holds a setting this rtk cannot train with: {exc}") from None


def canonical_settings(settings: dict[str, Any], *, where: object) -> dict[str, Any]:
    """Stored settings as this rtk reads them, for comparing two runs' or a run's and a group's:
    every field (a setting added to rtk since takes its default), in JSON's types."""
    return json.loads(json.dumps(config_from_settings(settings, where=where).to_dict()))


def differing_settings(
    stored: dict[str, Any], wanted: dict[str, Any], *, where: tuple[object, object]
) -> dict[str, tuple[Any, Any]]:
    """The settings on which ``stored`` and ``wanted`` disagree once both are read as this rtk
    reads them, each as ``(stored value, wanted value)``; ``where`` names the two for errors."""
    first = canonical_settings(stored, where=where[0])
    second = canonical_settings(wanted, where=where[1])
    return {k: (first.get(k), v) for k, v in second.items() if first.get(k) != v}


# A whole number, signed so that "-1" is refused as out of range rather than as not a number;
# ASCII digits only (int() would also take "1_0" and other scripts' digits).
_SEED = re.compile(r"[+-]?[0-9]+")


def parse_seeds(text: str) -> tuple[int, ...]:
    """``--seeds 0,1,2``: distinct seeds in the range ``--seed`` takes, in the order given."""
    items = [item.strip() for item in text.split(",")]
    if items == [""]:
        raise ConfigError("--seeds needs at least one seed, e.g. --seeds 0,1,2")
    seeds: list[int] = []
    for item in items:
        if not _SEED.fullmatch(item):
            raise ConfigError(
                f"--seeds takes whole numbers separated by commas, e.g. 0,1,2; got {item!r}"
            )
        seed = int(item)
        if not 0 <= seed < 2**64:  # torch.manual_seed's range, as for --seed
            raise ConfigError(f"--seeds: every seed must be in [0, 2**64), got {seed}")
        if seed in seeds:
            raise ConfigError(f"--seeds names seed {seed} twice; give each seed once")
        seeds.append(seed)
    return tuple(seeds)


def check_dataset(
    config: TrainConfig, *, classes: int, train_images: int, input_size: list[int]
) -> None:
    """Fail before any run folder exists when the data cannot train ``config``'s model: too
    few images, a shift as large as the images, or images the network cannot take (its
    downsampling needs a larger side: tried on shapes alone, so nothing is computed)."""
    from toolkit.models import get_architecture, input_problem

    _, height, width = input_size
    if config.translate >= min(height, width):  # reflect padding needs less than the image
        raise ConfigError(
            f"--translate must be in [0, {min(height, width) - 1}] pixels for "
            f"{width}x{height} images, got {config.translate}"
        )
    arch = get_architecture(config.arch)
    problem = input_problem(arch, num_classes=classes, input_size=input_size)
    if problem is not None:
        raise ConfigError(
            f"{arch.name} cannot take this dataset's {width}x{height} images ({problem}); "
            "pass a larger --image-size"
        )
    if config.val_size >= train_images:
        raise ConfigError(
            f"--val-size {config.val_size} leaves no training images of the dataset's "
            f"{train_images}; pass a smaller --val-size"
        )


_SEED_SGD: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.1,
    "scheduler": "multistep",
    "milestones": (30, 45),
    "gamma": 0.1,
    "epochs": 60,
    "patience": 0,
}

RECIPES: dict[str, dict[str, Any]] = {
    # The paper: Adam 1e-3, ReduceLROnPlateau(0.2, 3) and early stopping (7) on validation loss.
    "paper": {},
    # From seed 003's implementation: SGD momentum 0.9, lr 0.1, steps at 30 and 45, 60 epochs.
    "sgd": _SEED_SGD,
    # Seed 003's slim ResNet-18 as its author trained it: the SGD recipe above at batch 64, its
    # final weights, a head without dropout. The seed names no weight decay and no augmentation
    # beyond "standard supervised learning"; rtk takes that to be CIFAR's standard flip and
    # 4-pixel translation (He et al. 2016) and adds nothing else.
    "seed003": {**_SEED_SGD, "select": "last", "dropout": 0.0, "brightness": 0.0, "translate": 4},
    # Fast training on a CPU budget (one recipe for every architecture, so they compare on equal
    # terms), after the fast CIFAR-10 literature (Page's DAWNBench ResNet, airbench): a per-step
    # schedule that warms up then decays linearly to zero, SGD with Nesterov momentum at batch
    # 256 with the rate scaled from 0.1 at 128, weight decay on conv and linear weights only,
    # label smoothing, and random translation on top of the paper's flip and brightness. No
    # early stopping: the schedule ends on its final weights, which become best.pt.
    "fast": {
        "optimizer": "sgd",
        "lr": 0.2,  # at batch 256; another --batch-size scales it (LR_BATCH below)
        "nesterov": True,
        "weight_decay": 5e-4,
        "decay_norm_bias": False,
        "label_smoothing": 0.1,
        "scheduler": "linear",
        "warmup_frac": 0.15,
        "epochs": 18,
        "batch_size": 256,
        "patience": 0,
        "select": "last",
        "translate": 4,
        "tta": True,
        # PyTorch's default start, no zero-init: rtk's Kaiming start blew ResNet-18's loss up
        # once the warm-up took the rate to 0.2 (zero-init hid it), PyTorch's does not, and it
        # trained every Table I model as well or better (results/r18-proxy, results/goals).
        # Without zero-init a residual network and its plain twin start alike (zero-init would
        # start only the residual one as its shallow stem).
        "init": "torch",
        "zero_init_residual": False,
        # bf16 autocast where the CPU or GPU computes it natively (about 2x the training
        # images/s on a CPU with AVX512-BF16, the same accuracy: docs/speed-precision.md).
        "amp": "auto",
    },
}


# Recipes whose rate is tied to their batch: another batch size without an --lr of its own gets
# the rate scaled linearly (Goyal et al. 2017), so a budget can trim the batch and keep the recipe.
LR_BATCH: dict[str, int] = {"fast": 256}


def make_config(arch: str, recipe: str = "paper", **overrides: Any) -> TrainConfig:
    """A recipe's settings with ``overrides`` on top (``None`` means: keep the recipe's)."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    chosen = {k: v for k, v in overrides.items() if v is not None}
    settings = {**RECIPES[recipe], **chosen}
    if recipe in LR_BATCH and "lr" not in chosen and "batch_size" in chosen:
        settings["lr"] = settings["lr"] * chosen["batch_size"] / LR_BATCH[recipe]
    return TrainConfig(arch=arch, recipe=recipe, **settings).validate()
