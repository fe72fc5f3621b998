"""Self-describing checkpoints: any tool can rebuild the model from the file alone.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so it loads with
``torch.load(path, weights_only=True)``; it is always written atomically.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from toolkit import __version__
from toolkit.config import mistyped
from toolkit.data.transforms import PAPER_NORMALIZATION, Normalization
from toolkit.errors import RtkError, UnknownArchitectureError
from toolkit.fileio import atomic_path
from toolkit.model_input import MAX_SIDE, MIN_STD, input_size_ok, normalization_ok
from toolkit.models import Classifier, build_model
from toolkit.training.records import EpochRecord

FORMAT = "rtk-checkpoint"
VERSION = 1
MAX_CLASSES = 100_000  # more outputs than any dataset rtk trains on: an edited file


class CheckpointError(RtkError):
    """A checkpoint that is missing, truncated, or not rtk's."""


CIFAR_INPUT = (3, 32, 32)  # channels, height, width


def describe_model(
    *,
    arch: str,
    model_class: str,
    model_kwargs: dict[str, Any],
    classes: list[str],
    normalization: Normalization = PAPER_NORMALIZATION,
    input_size: Sequence[int] = CIFAR_INPUT,
) -> dict[str, Any]:
    """What a reader needs to rebuild and feed the model, stored in every checkpoint."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "rtk_version": __version__,
        "arch": arch,
        "model_class": model_class,
        "model_kwargs": model_kwargs,
        "classes": list(classes),
        "normalization": normalization.record(),
        "input_size": list(input_size),
    }


def initial_checkpoint(arch_name: str, classes: list[str], *, seed: int = 0) -> dict[str, Any]:
    """A checkpoint of a freshly initialised model: enough to export, bench or test the
    pipeline, where the weights do not matter."""
    from toolkit.models import get_architecture, initial_model

    arch = get_architecture(arch_name)
    kwargs = arch.kwargs_for(num_classes=len(classes))
    model = initial_model(arch.model_class, kwargs, seed=seed)
    payload = describe_model(
        arch=arch.name, model_class=arch.model_class, model_kwargs=kwargs, classes=classes
    )
    payload.update(epoch=0, state_dict=model.state_dict(), metrics={})
    return payload


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except (OSError, RuntimeError) as exc:
        # torch.save reports a full disk as a RuntimeError in its C++ words ("[enforce fail at
        # inline_container.cc] . unexpected pos ..."): say what it means instead.
        why = exc.strerror if isinstance(exc, OSError) else None
        raise CheckpointError(
            f"cannot write checkpoint {path} ({why or 'the disk is full or refused the write'}); "
            "the previous one is intact: free disk space and resume"
        ) from exc


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check an rtk checkpoint; raise ``CheckpointError`` with the fix otherwise."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _SAFE_LOADER_REFUSED in str(exc):
            raise _unsafe(path, exc) from exc
        raise _corrupt(path, exc) from exc
    except Exception as exc:  # on arbitrary bytes torch's unpickler fails in any way (KeyError...)
        raise _corrupt(path, exc) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rtk checkpoint (no rtk format marker)")
    version = payload.get("version", 0)
    if type(version) is not int:  # compared below: a "2" there was an internal error
        raise CheckpointError(
            f"checkpoint {path} has version {version!r}, which is no format number; use a "
            "checkpoint rtk wrote"
        )
    if version > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer rtk (format {payload['version']}); upgrade rtk"
        )
    _check_model(path, payload)
    return payload


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def _check_model(path: Path, payload: dict[str, Any]) -> None:
    """The checkpoint's model must be a registered architecture as the registry builds it
    (only the dropout and the class count may differ) and its weights must fit that model, key
    for key and shape for shape: checked before a model is built, so absurd arguments never
    allocate."""
    from toolkit.models import architecture_names, get_architecture

    try:
        arch = get_architecture(str(payload.get("arch")))
    except UnknownArchitectureError as exc:
        model_class = str(payload.get("model_class"))
        if ":" in model_class:  # a user's model (toolkit.models.plugins): its module is missing
            module = model_class.partition(":")[0]
            raise CheckpointError(
                f"{path} holds {payload.get('arch')!r}, a model of your module {module!r} "
                f"({model_class}), which is not loaded: name its file or module in RTK_MODELS"
            ) from exc
        raise CheckpointError(
            f"{path} is foreign: its architecture {payload.get('arch')!r} is none of rtk's "
            f"({', '.join(architecture_names())})"
        ) from exc
    kwargs = payload.get("model_kwargs")
    if payload.get("model_class") != arch.model_class or not isinstance(kwargs, dict):
        raise CheckpointError(f"{path} does not describe rtk's {arch.name}; use one rtk wrote")
    # The dropout is a training setting (the recipe's) and the class count the dataset's,
    # whatever the registry builds by default.
    free = ("dropout", "num_classes")
    structural = {k: _listed(v) for k, v in kwargs.items() if k not in free}
    registered = {k: _listed(v) for k, v in arch.kwargs.items() if k not in free}
    differing = sorted(
        structural.keys() ^ registered.keys()
        | {k for k in structural.keys() & registered.keys() if structural[k] != registered[k]}
    )
    dropout = kwargs.get("dropout", 0.0)
    if not isinstance(dropout, float | int) or not 0 <= dropout < 1:
        differing.append("dropout")
    num_classes = kwargs.get("num_classes", arch.num_classes)
    if type(num_classes) is not int or not 2 <= num_classes <= MAX_CLASSES:
        differing.append("num_classes")
    if differing:
        raise CheckpointError(
            f"{path} builds {arch.name} with arguments rtk's registry does not "
            f"({', '.join(differing)}); use a checkpoint rtk wrote"
        )
    with torch.device("meta"):  # shapes only: no memory for the weights
        expected = {k: tuple(v.shape) for k, v in arch.build(**kwargs).state_dict().items()}
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no weights rtk can read; use a checkpoint rtk wrote")
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        found = [
            f"{len(missing)} missing (first {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (first {unexpected[0]})" if unexpected else "",
            f"{len(wrong)} of the wrong shape (first {wrong[0]}: {list(state[wrong[0]].shape)}, "
            f"expected {list(expected[wrong[0]])})"
            if wrong
            else "",
        ]
        raise CheckpointError(
            f"{path} holds weights that do not fit {arch.name}: "
            f"{', '.join(f for f in found if f)}; use a checkpoint of this architecture"
        )
    classes = payload.get("classes")
    if not isinstance(classes, list) or len(classes) != num_classes:
        raise CheckpointError(
            f"{path} names {len(classes) if isinstance(classes, list) else 'no'} classes for "
            f"{num_classes} outputs; use a checkpoint rtk wrote"
        )
    _check_fields(path, payload)


@dataclass(frozen=True)
class _Fields:
    """The fields beyond the model that readers use, and their types: the schema ``mistyped``
    holds a checkpoint (a file anyone can edit) to, as it holds rtk's JSON files."""

    epoch: int | None = None
    best_epoch: int | None = None
    metrics: dict | None = None  # an EpochRecord's fields, each checked against that record
    config: dict | None = None
    kept: str | None = None


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(_Fields))
_METRIC_NAMES = tuple(f.name for f in dataclasses.fields(EpochRecord))


def _check_fields(path: Path, payload: dict[str, Any]) -> None:
    if not all(isinstance(c, str) for c in payload["classes"]):
        raise CheckpointError(f"{path} has class names that are not text; use one rtk wrote")
    bad = mistyped(payload, _Fields, _FIELD_NAMES)
    if not bad and isinstance(payload.get("metrics"), dict):
        bad = [f"metrics {b}" for b in mistyped(payload["metrics"], EpochRecord, _METRIC_NAMES)]
    # What the model is fed with goes on into every export's metadata and every reader's
    # inputs: held to the rule rtk predict holds flags and ONNX metadata to.
    norm = payload.get("normalization")
    if not isinstance(norm, dict) or not normalization_ok(norm.get("mean"), norm.get("std")):
        bad.append(
            f"normalization {norm!r} (want a mean and a std of 3 finite numbers each, std at "
            f"least {MIN_STD})"
        )
    if not input_size_ok(payload.get("input_size")):
        bad.append(
            f"input_size {payload.get('input_size')!r} (want [channels, height, width], each "
            f"a whole number in [1, {MAX_SIDE}])"
        )
    if bad:
        raise CheckpointError(f"checkpoint {path} has {', '.join(bad)}; use one rtk wrote")


# How torch's safe loader begins its refusal; the rest of its message advises
# ``weights_only=False``, which would run the file's code, so rtk never passes it on.
_SAFE_LOADER_REFUSED = "Weights only load failed"
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _unsafe(path: Path, exc: Exception) -> CheckpointError:
    found = _REFUSED_GLOBAL.search(str(exc))
    what = f"a {found.group(1)} object" if found else "objects other than plain tensors"
    return CheckpointError(
        f"checkpoint {path} is unsafe or foreign: it holds {what}, which rtk's safe loader "
        "refuses to run; use a checkpoint written by rtk"
    )


def _corrupt(path: Path, exc: Exception) -> CheckpointError:
    # The first sentence: torch goes on to guess at causes for a paragraph.
    detail = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
    first = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return CheckpointError(
        f"checkpoint {path} is truncated or corrupt ({first}); use another checkpoint"
    )


def model_from_checkpoint(payload: dict[str, Any]) -> Classifier:
    model = build_model(payload["model_class"], dict(payload["model_kwargs"]))
    model.load_state_dict(payload["state_dict"])
    return model
