"""Your own architectures: a model class of your module, registered with ``@register_model``,
trains, exports, benches and reports like a built-in one, without editing rtk.

rtk finds your modules in two ways, both read once, the first time the registry is used:
- ``RTK_MODELS``: a comma-separated list of module names (importable from ``PYTHONPATH``) or
  ``.py`` files;
- the ``rtk.models`` entry point group of an installed package (in its pyproject.toml:
  ``[project.entry-points."rtk.models"]`` then ``mine = "mypackage.models"``), as pytest finds
  its plugins.

A checkpoint names its model class as ``module:QualName``, so it is rebuilt wherever that module
loads again; where it does not, one line says which module to make importable.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from toolkit.errors import RtkError, UnknownArchitectureError
from toolkit.models.base import Classifier
from toolkit.models.registry import MODEL_CLASSES, USER, Architecture, register

ENV = "RTK_MODELS"
ENTRY_POINTS = "rtk.models"

C = TypeVar("C", bound=type[Classifier])

_loaded = False


class UserModelError(RtkError):
    """A user's model module cannot be loaded, or registers something rtk cannot train."""


def register_model(name: str, *, description: str = "", **kwargs: Any) -> Callable[[C], C]:
    """Register the decorated ``Classifier`` subclass as architecture ``name`` (lower case,
    hyphens), built with ``kwargs``; several names may register one class with other kwargs."""

    def decorate(cls: C) -> C:
        if not (isinstance(cls, type) and issubclass(cls, Classifier)):
            raise UserModelError(
                f"@register_model({name!r}) decorates {cls!r}, which is no subclass of "
                "toolkit.models.Classifier (build the trunk, then call self._finish(...))"
            )
        key = f"{cls.__module__}:{cls.__qualname__}"
        MODEL_CLASSES[key] = cls
        canonical = name.strip().lower().replace("_", "-")
        summary = description or (cls.__doc__ or cls.__name__).strip().splitlines()[0]
        try:
            register(Architecture(canonical, USER, summary, key, dict(kwargs)))
        except ValueError as exc:  # a name rtk (or another module) already has
            raise UserModelError(f"{key}: {exc}; register it under another name") from exc
        return cls

    return decorate


def load_user_models() -> None:
    """Import every module named by ``RTK_MODELS`` and the ``rtk.models`` entry points, once;
    a module that fails to import is one line naming it and why."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # a failing module is reported once, not again by every lookup after it
    sources: list[tuple[str, Callable[[], object]]] = [
        (f"{ep.name} ({ep.value}, entry point {ENTRY_POINTS})", ep.load)
        for ep in entry_points(group=ENTRY_POINTS)
    ]
    for item in filter(None, (s.strip() for s in os.environ.get(ENV, "").split(","))):
        sources.append((f"{item} (from {ENV})", lambda item=item: _import(item)))  # type: ignore[misc]
    for label, load in sources:
        try:
            load()
        except UserModelError:
            raise
        except Exception as exc:  # SyntaxError, ImportError, anything its import raises
            raise UserModelError(
                f"cannot load the models of {label}: {type(exc).__name__}: {exc}"
            ) from exc


def _import(item: str) -> object:
    """A module by name, or a ``.py`` file imported under its file's stem."""
    if not item.endswith(".py"):
        return importlib.import_module(item)
    path = Path(item)
    if not path.is_file():
        raise FileNotFoundError(f"no such file {path}")
    name = path.stem
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: the classes it defines name this module
    spec.loader.exec_module(module)
    return module


def import_model_class(key: str) -> type[Classifier]:
    """The class a checkpoint names as ``module:QualName``, loading the user's modules first."""
    load_user_models()
    if key in MODEL_CLASSES:
        return MODEL_CLASSES[key]
    module_name, _, qualname = key.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise UnknownArchitectureError(
            f"the model class {key} comes from module {module_name!r}, which does not load "
            f"here ({type(exc).__name__}: {exc}); name its file or module in {ENV} (or put "
            "it on PYTHONPATH)"
        ) from exc
    if not (isinstance(found, type) and issubclass(found, Classifier)):
        raise UnknownArchitectureError(f"{key} is no rtk model class (toolkit.models.Classifier)")
    return found
