"""Where the analyses get a PyTorch model and their test images.

A source is a run directory (its ``best.pt``), a checkpoint, or an architecture name; ``best``
is its trained weights, ``init`` the weights its run started from (rebuilt from the run's seed
and recipe) or an architecture's fresh ones. `rtk analyze gradients`, `lesion` and `residuals`
and the test-split reports read their sources here, so each reads a source the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from toolkit.config import config_from_settings
from toolkit.data import Dataset, Normalization, check_fits, load_dataset
from toolkit.data.dataset import Split
from toolkit.errors import RtkError, UnknownArchitectureError
from toolkit.models import (
    Classifier,
    architecture_names,
    get_architecture,
    initial_model,
)
from toolkit.training import RunDir, SeedGroup, load_checkpoint, model_from_checkpoint

At = Literal["init", "best"]


class SourceError(RtkError):
    """A run directory, checkpoint or model that cannot be evaluated."""


@dataclass(frozen=True)
class SourceModel:
    label: str  # the run folder's name, the checkpoint's folder/file, or the architecture
    at: At
    model: Classifier
    normalization: Normalization  # what its inputs are normalised with (its run's, recorded)


def recorded_image_size(specs: Iterable[str | Path]) -> int | None:
    """The side the first run, checkpoint or ONNX model among ``specs`` resized its dataset's
    images to (``rtk train --image-size``), None when it took their stored size: so that an
    analysis decodes the dataset as the model saw it without being told again."""
    for spec in specs:
        path = Path(spec)
        if path.suffix == ".onnx" and path.is_file():
            from exporters import metadata

            props = metadata.props(metadata.load_graph(path))
            try:
                value = json.loads(props.get(metadata.IMAGE_SIZE, "null"))
            except ValueError:
                value = None  # an edited file: the size checks after loading will say
        elif path.is_dir() and (path / RunDir.CONFIG).is_file():
            value = RunDir(path).read_config()["settings"].get("image_size")
        elif path.is_file():
            value = (read_checkpoint(path).get("config") or {}).get("image_size")
        else:
            continue  # an architecture's name: no run
        return value if type(value) is int else None
    return None


def load_data_for(
    specs: Iterable[str | Path], data: Path | None, *, announce: Callable[[str], None]
) -> Dataset:
    """The dataset at ``data`` as ``specs``' first run decoded it."""
    return load_dataset(data, image_size=recorded_image_size(specs), announce=announce)


def read_checkpoint(source: Path) -> dict[str, Any]:
    """The checkpoint of a run directory (its ``best.pt``) or a checkpoint file, checked."""
    return RunDir.open(source).load_best() if source.is_dir() else load_checkpoint(source)


def load_model(spec: str, dataset: Dataset, *, at: At, analysis: str, seed: int = 0) -> SourceModel:
    """The model of a run directory, a checkpoint or (at ``init`` only) an architecture name,
    at its trained (``best``) or initial (``init``) weights; ``analysis`` names the caller in
    the refusals. A checkpoint's classes must be the dataset's."""
    path = Path(spec)
    if path.suffix == ".onnx":
        raise SourceError(
            f"{spec} is an exported ONNX model, but the {analysis} analysis needs the PyTorch "
            "weights: give its run folder or checkpoint (.pt)"
        )
    if not path.exists():
        return _fresh(spec, dataset, at=at, seed=seed)
    payload = read_checkpoint(path)
    check_fits(payload["classes"], payload["input_size"], dataset, spec)
    normalization = Normalization.from_record(payload["normalization"])
    # A seed's run is named seed-N in every group: its group's name tells two apart.
    in_group = path.is_dir() and SeedGroup.is_group(path.resolve().parent)
    named_by_parent = in_group or not path.is_dir()
    label = f"{path.resolve().parent.name}/{path.name}" if named_by_parent else path.name
    if at == "best":
        return SourceModel(label, at, model_from_checkpoint(payload), normalization)
    config = payload.get("config")
    if not config:
        raise SourceError(
            f"{spec} records no training settings, so the weights it started from cannot be "
            "rebuilt; use --at best"
        )
    settings = config_from_settings(config, where=path)  # checked like any run's settings
    model = initial_model(  # the run's own initial weights
        payload["model_class"],
        dict(payload["model_kwargs"]),
        seed=settings.seed,
        init=settings.init,
        zero_init_residual=settings.zero_init_residual,
    )
    return SourceModel(label, at, model, normalization)


def _fresh(spec: str, dataset: Dataset, *, at: At, seed: int) -> SourceModel:
    try:
        arch = get_architecture(spec)
    except UnknownArchitectureError:
        if at == "best":
            raise SourceError(
                f"{spec} does not exist; name a run directory or a checkpoint"
            ) from None
        raise SourceError(
            f"{spec} is no run directory, checkpoint or architecture; the architectures are "
            f"{', '.join(architecture_names())}"
        ) from None
    if at != "init":
        raise SourceError(
            f"{spec} is an architecture, which has no trained weights: name a run directory or "
            "a checkpoint (an architecture's fresh weights are --at init)"
        )
    # Built as a run on this dataset would build it: its classes, its normalisation.
    kwargs = arch.kwargs_for(num_classes=len(dataset.classes))
    model = initial_model(arch.model_class, kwargs, seed=seed)
    return SourceModel(arch.name, at, model, dataset.normalization("auto", dataset.train))


def sample_test(dataset: Dataset, *, images: int | None, seed: int) -> Split:
    """The whole test split, or a seeded sample of ``images`` of it: the split is stored class
    by class, so its first images would be one or two classes only."""
    if images is not None and images < 1:
        raise SourceError(f"--images must be positive, got {images}")
    if not 0 <= seed < 2**64:  # torch's generators take no other seed
        raise SourceError(f"--seed must be in [0, 2**64), got {seed}")
    test = dataset.test
    if images is None or images >= len(test):
        return test
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    return test.subset(order[:images].sort().values)
