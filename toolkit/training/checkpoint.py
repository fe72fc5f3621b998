"""Self-describing checkpoints: any tool can rebuild the model from the file alone.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so it loads with
``torch.load(path, weights_only=True)``; it is always written atomically.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from toolkit import __version__
from toolkit.data.transforms import MEAN, STD
from toolkit.errors import RtkError
from toolkit.fileio import atomic_path
from toolkit.models import Classifier, build_model

FORMAT = "rtk-checkpoint"
VERSION = 1


class CheckpointError(RtkError):
    """A checkpoint that is missing, truncated, or not rtk's."""


def describe_model(
    *, arch: str, model_class: str, model_kwargs: dict[str, Any], classes: list[str]
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
        "normalization": {"mean": list(MEAN), "std": list(STD), "scale": "[0, 1] -> [-1, 1]"},
        "input_size": [3, 32, 32],
    }


def initial_checkpoint(arch_name: str, classes: list[str], *, seed: int = 0) -> dict[str, Any]:
    """A checkpoint of a freshly initialised model: enough to export, bench or test the
    pipeline, where the weights do not matter."""
    from toolkit.models import get_architecture

    torch.manual_seed(seed)
    arch = get_architecture(arch_name)
    payload = describe_model(
        arch=arch.name,
        model_class=arch.model_class,
        model_kwargs=dict(arch.kwargs),
        classes=classes,
    )
    payload.update(epoch=0, state_dict=arch.build().state_dict(), metrics={})
    return payload


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
        raise CheckpointError(
            f"cannot write checkpoint {path} ({exc}); the previous one is intact: "
            "free disk space and resume"
        ) from exc


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check an rtk checkpoint; raise ``CheckpointError`` with the fix otherwise."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({first}); use another checkpoint"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rtk checkpoint (no rtk format marker)")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer rtk (format {payload['version']}); upgrade rtk"
        )
    return payload


def model_from_checkpoint(payload: dict[str, Any]) -> Classifier:
    model = build_model(payload["model_class"], dict(payload["model_kwargs"]))
    model.load_state_dict(payload["state_dict"])
    return model
