"""Plain-type specs (``{"class_path": ..., "init_args": {...}}``) for objects passed to the LightningModule.

Checkpoints must load with ``torch.load(weights_only=True)``, so saved hyper-parameters may hold only plain types.
LightningCLI already hands the module its parsed config in that form; these helpers give objects built in Python the
same form and turn specs back into objects (the same ``class_path`` / ``init_args`` convention as jsonargparse).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from typing import Any

PLAIN = (str, int, float, bool, type(None))


def class_path(cls: type) -> str:
    """``module.QualName`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class(path: str) -> Any:
    """Import ``package.module.Name``."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {path!r}: {err}") from err


def is_plain(value: Any) -> bool:
    """True for nested dicts/lists/tuples of str, int, float, bool and None."""
    if isinstance(value, PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


def to_spec(obj: Any) -> Any:
    """A plain representation of ``obj``: plain values as they are, dataclasses as dicts, classes and
    ``functools.partial`` of classes as ``{"class_path", "init_args"}``, other objects through the attributes named
    like their ``__init__`` parameters. Raises ``TypeError`` for what cannot be represented."""
    if is_plain(obj):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_spec(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_spec(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_spec(v) for k, v in obj.items()}
    if isinstance(obj, type):
        return {"class_path": class_path(obj)}
    if isinstance(obj, functools.partial) and isinstance(obj.func, type) and not obj.args:
        return {"class_path": class_path(obj.func), "init_args": to_spec(dict(obj.keywords))}
    params = [p for p in inspect.signature(type(obj).__init__).parameters.values() if p.name != "self"]
    if params and all(hasattr(obj, p.name) for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)):
        init_args = {p.name: to_spec(getattr(obj, p.name)) for p in params if hasattr(obj, p.name)}
        return {"class_path": class_path(type(obj)), "init_args": init_args}
    raise TypeError(f"cannot store {obj!r} as a plain hyper-parameter; pass a class_path/init_args dict instead")


def is_spec(value: Any) -> bool:
    """True for a ``{"class_path": ..., "init_args": ...}`` dict."""
    return isinstance(value, dict) and "class_path" in value


def instantiate(spec: dict[str, Any], *args: Any) -> Any:
    """Build ``class_path(*args, **init_args)``."""
    return import_class(spec["class_path"])(*args, **spec.get("init_args", {}))


def callable_from_spec(spec: dict[str, Any]) -> Any:
    """A callable that builds ``class_path`` with ``init_args`` bound, e.g. an optimizer taking param groups."""
    return functools.partial(import_class(spec["class_path"]), **spec.get("init_args", {}))
