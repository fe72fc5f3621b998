"""The one registry of architectures: the CLI, the tests and the reports all read it.

Each entry is data (a model class and its arguments), so a checkpoint that stores the class
name and arguments can rebuild its model without this registry.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from toolkit.errors import UnknownArchitectureError
from toolkit.models.base import Classifier, start_weights
from toolkit.models.baseline import BaselineCNN
from toolkit.models.resnet import ResNet

if TYPE_CHECKING:
    from toolkit.config import Init

MODEL_CLASSES: dict[str, type[Classifier]] = {"ResNet": ResNet, "BaselineCNN": BaselineCNN}

# Where each family of networks comes from. The paper's group is the one Table I, `rtk
# reproduce`, `rtk train all` and the claims use; the others are there to go beyond it.
PAPER = "paper"
CONTROL = "control"
USER = "user"
GROUPS: dict[str, str] = {
    PAPER: "Liu & Goh 2025 (arXiv 2510.24036): the paper's four models, Table I",
    CONTROL: "rtk's controls in Table I: a paper model without its skips, which the paper "
    "does not train",
    "seed003": "seeds/003: a slim ResNet-18 (stem 3->16, padding 3; 16-128 wide)",
    "he2015": "He et al. 2015, Sec. 4.2: CIFAR ResNets (option-A shortcuts) and plain twins",
    "seed004": "seeds/004: ResNet-34, bottleneck ResNet-50 and ResNeXt on the CIFAR stem",
    USER: "your own: registered by your module with @register_model (docs/your-own-model.md)",
}


@dataclass(frozen=True)
class Published:
    """What a source reports for a network, to set beside this machine's figures; a figure
    the source does not give stays None."""

    source: str  # the table or text the figures come from
    name: str  # the network's name there
    params: int | None = None  # the exact count of the structure it describes (it rounds it)
    test_acc: float | None = None  # CIFAR-10 top-1 test accuracy
    train_min: float | None = None  # training time in minutes, on the source's hardware


@dataclass(frozen=True)
class Architecture:
    name: str
    group: str  # a key of GROUPS: which source the network comes from
    description: str
    model_class: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    published: Published | None = None  # None: the source publishes no figure for it

    @property
    def num_classes(self) -> int:
        """The classifier's outputs: its own argument, else the model class's default."""
        if "num_classes" in self.kwargs:
            return int(self.kwargs["num_classes"])
        signature = inspect.signature(MODEL_CLASSES[self.model_class])
        return int(signature.parameters["num_classes"].default)

    def build(self, **overrides: Any) -> Classifier:
        return build_model(self.model_class, {**self.kwargs, **overrides})

    def kwargs_for(self, *, num_classes: int, dropout: float | None = None) -> dict[str, Any]:
        """The arguments a run on a dataset of ``num_classes`` classes builds this network
        with: the registry's, a recipe's dropout (None: the network's default), and the class
        count only where it is not the network's own (a CIFAR-10 checkpoint's arguments stay
        what they always were)."""
        kwargs = dict(self.kwargs) if dropout is None else {**self.kwargs, "dropout": dropout}
        if num_classes != self.num_classes:
            kwargs["num_classes"] = num_classes
        return kwargs


def input_problem(arch: Architecture, *, num_classes: int, input_size: list[int]) -> str | None:
    """Why ``arch`` cannot classify images of ``input_size`` ([C, H, W]) into ``num_classes``,
    or None when it can: a forward pass on shapes alone (the meta device), so a too-small image
    for a network's downsampling is found before anything trains, without a byte of weights."""
    try:
        with torch.device("meta"):
            model = arch.build(**arch.kwargs_for(num_classes=num_classes))
            logits = model(torch.zeros(2, *input_size))
    except NotImplementedError:  # an operation shapes alone cannot run: training will tell
        return None
    except (RuntimeError, ValueError) as exc:  # how PyTorch's layers refuse a shape
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if tuple(logits.shape) != (2, num_classes):
        return f"it gives {list(logits.shape[1:])} outputs per image, not {num_classes}"
    return None


def build_model(model_class: str, kwargs: dict[str, Any]) -> Classifier:
    """Rebuild a model from the class name and arguments stored in a checkpoint (a user's
    class as ``module:QualName``, registered once its module is loaded)."""
    if model_class not in MODEL_CLASSES:
        raise UnknownArchitectureError(
            f"unknown model class {model_class!r}; known: {', '.join(MODEL_CLASSES)}"
        )
    return MODEL_CLASSES[model_class](**kwargs)


def initial_model(
    model_class: str,
    kwargs: dict[str, Any],
    *,
    seed: int,
    init: Init = "kaiming",
    zero_init_residual: bool = False,
) -> Classifier:
    """The weights a run of ``seed`` starts from. The trainer and every analysis that rebuilds
    a run's start come here; built on the CPU from the CPU generator, so that a GPU run starts
    where a CPU run (and the rebuild) would."""
    torch.manual_seed(seed)
    model = build_model(model_class, kwargs)
    start_weights(model, init=init, zero_init_residual=zero_init_residual)
    return model


_REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    if _REGISTRY.get(arch.name) == arch:  # a user's module imported twice: one architecture
        return arch
    if arch.name in _REGISTRY:
        raise ValueError(f"architecture {arch.name!r} is registered twice")
    if arch.group not in GROUPS:
        raise ValueError(f"{arch.name}: unknown group {arch.group!r}; known: {', '.join(GROUPS)}")
    figures = arch.published
    if arch.group == PAPER and (
        figures is None or None in (figures.params, figures.test_acc, figures.train_min)
    ):
        raise ValueError(f"{arch.name}: a paper model needs its Table I figures")
    _REGISTRY[arch.name] = arch
    return arch


def architectures(group: str | None = None) -> list[Architecture]:
    """Every registered architecture (or one group's), the paper's four first, in its order;
    the user's own last."""
    from toolkit.models.plugins import load_user_models

    load_user_models()
    return [a for a in _REGISTRY.values() if group is None or a.group == group]


def architecture_names(group: str | None = None) -> list[str]:
    return [a.name for a in architectures(group)]


def canonical_name(name: str) -> str:
    """An architecture's name as the registry keeps it: ``ResNet18_noskip`` is
    ``resnet18-noskip``."""
    return name.strip().lower().replace("_", "-")


def get_architecture(name: str) -> Architecture:
    """Look an architecture up by name; ``resnet18_noskip`` and ``resnet18-noskip`` are one."""
    key = canonical_name(name)
    from toolkit.models.plugins import load_user_models

    load_user_models()
    if key not in _REGISTRY:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; choose one of: {', '.join(_REGISTRY)}"
        )
    return _REGISTRY[key]


def create_model(name: str, **overrides: Any) -> Classifier:
    return get_architecture(name).build(**overrides)


_STAGES = {"blocks": (2, 2, 2, 2)}
_TABLE_ONE = "Liu & Goh 2025, Table I"

register(
    Architecture(
        name="baseline-cnn",
        group=PAPER,
        published=Published(_TABLE_ONE, "Baseline CNN", 391_946, test_acc=0.841, train_min=2),
        description="plain CNN: 4 conv-BN-ReLU-maxpool blocks, 32-256 wide",
        model_class="BaselineCNN",
        kwargs={"widths": (32, 64, 128, 256)},
    )
)
register(
    Architecture(
        name="mini-resnet",
        group=PAPER,
        published=Published(_TABLE_ONE, "Mini-ResNet", 2_798_698, test_acc=0.87, train_min=7),
        description="ResNet: 4 stages x 2 blocks, 32-256 wide, all strided",
        model_class="ResNet",
        kwargs={"stem_width": 32, "widths": (32, 64, 128, 256), "first_stride": 2, **_STAGES},
    )
)
register(
    Architecture(
        name="resnet18",
        group=PAPER,
        published=Published(
            _TABLE_ONE, "ResNet-18 (With Skip)", 11_173_962, test_acc=0.899, train_min=24
        ),
        description="CIFAR ResNet-18: 4 stages x 2 blocks, 64-512 wide",
        model_class="ResNet",
        kwargs={"stem_width": 64, "widths": (64, 128, 256, 512), "first_stride": 1, **_STAGES},
    )
)
register(
    Architecture(
        name="resnet18-noskip",
        group=PAPER,
        published=Published(
            _TABLE_ONE, "ResNet-18 (No Skip)", 11_000_138, test_acc=0.86, train_min=210
        ),
        description="ResNet-18 with every shortcut removed",
        model_class="ResNet",
        kwargs={
            "stem_width": 64,
            "widths": (64, 128, 256, 512),
            "first_stride": 1,
            "skip": False,
            **_STAGES,
        },
    )
)

# The reviewer's next question: is the Mini-ResNet's lead over the baseline its skips or its
# 7x parameters? Its plain twin answers it (same layers, no shortcuts, so no projections).
register(
    Architecture(
        name="mini-resnet-noskip",
        group=CONTROL,
        description="Mini-ResNet with every shortcut removed",
        model_class="ResNet",
        kwargs={**_REGISTRY["mini-resnet"].kwargs, "skip": False},
    )
)

# Beyond the paper. None of these sources uses dropout, so their models are built without it
# (training still takes its dropout from the recipe or --dropout, as for every model).
register(
    Architecture(
        name="slim-resnet18",
        group="seed003",
        published=Published(
            "seeds/003: about 91% after 60 epochs of SGD", "ResNet-18", test_acc=0.91
        ),
        description="seed 003's ResNet-18: stem 3->16 with padding 3, 4 stages x 2, 16-128 wide",
        model_class="ResNet",
        kwargs={
            "stem_width": 16,
            "stem_padding": 3,  # as the seed writes it: 32x32 becomes 36x36
            "widths": (16, 32, 64, 128),
            "first_stride": 1,
            "dropout": 0.0,
            **_STAGES,
        },
    )
)

# He et al. 2015, Sec. 4.2: 6n+2 layers, three stages of n basic blocks 16-32-64 wide,
# parameter-free option-A shortcuts; Table 6's CIFAR-10 test error (%) and the exact count
# of that structure (Table 6 rounds it: 0.27M ... 1.7M).
_HE_TABLE_6 = {20: (8.75, 269_722), 32: (7.51, 464_154), 44: (7.17, 658_586),
               56: (6.97, 853_018), 110: (6.43, 1_727_962)}  # fmt: skip
for _depth, (_error_pct, _params) in _HE_TABLE_6.items():
    _he_kwargs = {
        "stem_width": 16,
        "widths": (16, 32, 64),
        "blocks": ((_depth - 2) // 6,) * 3,
        "first_stride": 1,
        "shortcut": "A",
        "dropout": 0.0,
    }
    register(
        Architecture(
            name=f"resnet{_depth}",
            group="he2015",
            published=Published(
                "He et al. 2015, Table 6",
                f"ResNet-{_depth}",
                _params,
                test_acc=round(1 - _error_pct / 100, 4),
            ),
            description=f"He et al.'s CIFAR ResNet-{_depth}: 3 stages x {(_depth - 2) // 6}, "
            "16-64 wide, option-A shortcuts"
            + (" (Table 6's best of 5; mean 6.61% error)" if _depth == 110 else ""),
            model_class="ResNet",
            kwargs=_he_kwargs,
        )
    )
for _depth in _HE_TABLE_6:
    register(
        Architecture(
            name=f"plain{_depth}",
            group="he2015",
            description=f"resnet{_depth} without shortcuts (He et al.'s plain-{_depth}, "
            "Fig. 6: training curves only)",
            model_class="ResNet",
            kwargs={**_REGISTRY[f"resnet{_depth}"].kwargs, "skip": False},
        )
    )

# seeds/004: ResNet-34 against "a plain CNN of the same depth", its bottleneck "ResNet-50-like"
# conversion, and ResNeXt's grouped block; torchvision's layouts on the CIFAR stem (3x3,
# stride 1, no max-pool). The seed publishes no figures for them.
_R34 = {"stem_width": 64, "widths": (64, 128, 256, 512), "blocks": (3, 4, 6, 3),
        "first_stride": 1, "dropout": 0.0}  # fmt: skip
register(
    Architecture(
        name="resnet34",
        group="seed004",
        description="CIFAR ResNet-34: 4 stages x (3, 4, 6, 3) basic blocks, 64-512 wide",
        model_class="ResNet",
        kwargs=_R34,
    )
)
register(
    Architecture(
        name="resnet34-noskip",
        group="seed004",
        description="ResNet-34 with every shortcut removed (seed 004's plain CNN of that depth)",
        model_class="ResNet",
        kwargs={**_R34, "skip": False},
    )
)
register(
    Architecture(
        name="resnet50",
        group="seed004",
        description="CIFAR ResNet-50: ResNet-34's layout in bottleneck blocks (x4), 256-2048 out",
        model_class="ResNet",
        kwargs={**_R34, "block": "bottleneck"},
    )
)
register(
    Architecture(
        name="resnext50-32x4d",
        group="seed004",
        description="CIFAR ResNeXt-50 (32x4d): ResNet-50 with 32 groups of 4 in each 3x3",
        model_class="ResNet",
        kwargs={**_R34, "block": "bottleneck", "groups": 32, "width_per_group": 4},
    )
)
