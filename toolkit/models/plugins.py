"""Your own architectures: a model class of your module, registered with ``@register_model``,
trains, exports, benches and reports like a built-in one, without editing rtk.

rtk finds your modules in two ways, both read once, the first time the registry is used:
- ``RTK_MODELS``: a comma-separated list of module names (importable from ``PYTHONPATH``) or
  ``.py`` files;
- the ``rtk.models`` entry point group of an installed package (in its pyproject.toml:
  ``[project.entry-points."rtk.models"]`` then ``mine = "mypackage.models"``), as pytest finds
  its plugins.

A checkpoint names its model class as ``module:QualName``; it is rebuilt wherever that module is
loaded again the same way (``RTK_MODELS`` or the entry point), and where it is not, one line says
which module to load.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from toolkit.errors import RtkError
from toolkit.models.base import Classifier
from toolkit.models.registry import MODEL_CLASSES, USER, Architecture, canonical_name, register

ENV = "RTK_MODELS"
ENTRY_POINTS = "rtk.models"

C = TypeVar("C", bound=type[Classifier])

_loaded = False
_failed: UserModelError | None = None  # the load's error, raised again by every later lookup
_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")


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
        canonical = canonical_name(name)
        _check_contract(key, cls, canonical, kwargs)
        MODEL_CLASSES[key] = cls
        summary = description or next(iter((cls.__doc__ or "").split("\n")), "").strip()
        try:
            register(Architecture(canonical, USER, summary or cls.__name__, key, dict(kwargs)))
        except ValueError as exc:  # a name rtk (or another module) already has
            raise UserModelError(f"{key}: {exc}; register it under another name") from exc
        return cls

    return decorate


def _check_contract(key: str, cls: type, name: str, kwargs: dict[str, Any]) -> None:
    """What rtk relies on, refused at registration rather than hours into a run: the class
    takes ``num_classes`` and ``dropout`` (the dataset's classes, the recipe's dropout), and
    its arguments are plain JSON values (a checkpoint stores them, and loads only such)."""
    if not _NAME.fullmatch(name):
        raise UserModelError(
            f"{key}: the name {name!r} must be lower-case letters, digits, '.' and '-'"
        )
    missing = [p for p in ("num_classes", "dropout") if p not in inspect.signature(cls).parameters]
    if missing:
        raise UserModelError(
            f"{key} takes no {' or '.join(missing)}: rtk builds every model with the dataset's "
            "classes and the recipe's dropout (pass them on to self._finish)"
        )
    try:
        plain = json.loads(json.dumps(kwargs)) == kwargs
    except (TypeError, ValueError):
        plain = False
    if not plain:
        raise UserModelError(
            f"{key}: @register_model arguments must be numbers, text, lists or dicts of them "
            f"(a checkpoint stores them), got {kwargs!r}"
        )


def load_user_models() -> None:
    """Import every module named by ``RTK_MODELS`` and the ``rtk.models`` entry points, once;
    a module that fails to import is one line naming it and why, and every later lookup in
    the same process raises it again (never a quiet registry without the user's models)."""
    global _loaded, _failed
    if _failed is not None:
        raise _failed
    if _loaded:
        return
    _loaded = True  # before importing: a module that looks an architecture up loads no loop
    sources: list[tuple[str, Callable[[], object]]] = [
        (f"{ep.name} ({ep.value}, entry point {ENTRY_POINTS})", ep.load)
        for ep in entry_points(group=ENTRY_POINTS)
    ]
    for item in filter(None, (s.strip() for s in os.environ.get(ENV, "").split(","))):
        sources.append((f"{item} (from {ENV})", lambda item=item: _import(item)))  # type: ignore[misc]
    for label, load in sources:
        try:
            load()
        except UserModelError as exc:
            _failed = exc
            raise
        except Exception as exc:  # SyntaxError, ImportError, anything its import raises
            _failed = UserModelError(
                f"cannot load the models of {label}: {type(exc).__name__}: {exc}"
            )
            raise _failed from exc


def _import(item: str) -> object:
    """A module by name, or a ``.py`` file imported under its file's stem."""
    if not item.endswith(".py"):
        return importlib.import_module(item)
    path = Path(item)
    if not path.is_file():
        raise FileNotFoundError(f"no such file {path}")
    name = path.stem
    if name in sys.modules:
        if getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
            return sys.modules[name]
        raise UserModelError(
            f"{path}: a module named {name!r} is already loaded (from "
            f"{getattr(sys.modules[name], '__file__', None) or 'Python itself'}); rename your file"
        )
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: the classes it defines name this module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
