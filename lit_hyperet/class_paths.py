"""Plain-type specs (``{"class_path": ..., "init_args": {...}}``) for objects passed to the LightningModule.

Checkpoints must load with ``torch.load(weights_only=True)``, so saved hyper-parameters may hold only plain types.
LightningCLI already hands the module its parsed config in that form; these helpers give objects built in Python the
same form and turn specs back into objects (the same ``class_path`` / ``init_args`` convention as jsonargparse).

Specs come from checkpoints that researchers share, so turning one into an object must never run foreign code: a
``class_path`` is resolved only inside :data:`ALLOWED_MODULES` (checked before anything is imported) and only to a
class, never to a function.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from typing import Any

from lit_hyperet.user_errors import UserError

PLAIN = (str, int, float, bool, type(None))


def class_path(cls: type) -> str:
    """``module.QualName`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


#: Packages a spec's ``class_path`` may name: this package, and torch's optimisers and schedulers.
ALLOWED_MODULES = ("lit_hyperet", "torch.optim")


class SpecError(UserError):
    """A spec names something that may not be built from data (outside :data:`ALLOWED_MODULES`, or not a class)."""


def _allowed(module: str) -> bool:
    return any(module == root or module.startswith(root + ".") for root in ALLOWED_MODULES)


def import_class(path: str) -> type:
    """The class ``package.module.Name``, where ``package.module`` lies in :data:`ALLOWED_MODULES`.

    The module name is checked before it is imported; a name that is not a class (a function, a module) is refused.
    """
    if not isinstance(path, str):
        raise SpecError(f"class_path must be a string, got {path!r}")
    module, _, name = path.rpartition(".")
    if not module or not _allowed(module):
        raise SpecError(
            f"class_path {path!r} is outside the allowed packages ({', '.join(ALLOWED_MODULES)}); "
            "classes are never imported from elsewhere when building from stored data"
        )
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise SpecError(f"cannot import {path!r}: {err}") from err
    if not isinstance(obj, type):
        raise SpecError(f"class_path {path!r} is not a class")
    return obj


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


def _checked(spec: dict[str, Any], base: type | None) -> tuple[type, dict[str, Any]]:
    cls = import_class(spec["class_path"])
    if base is not None and not issubclass(cls, base):
        raise SpecError(f"class_path {spec['class_path']!r} is not a {base.__name__}")
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, dict) or not is_plain(init_args):
        raise SpecError(f"init_args of {spec['class_path']!r} must be plain data, got {init_args!r}")
    return cls, init_args


def instantiate(spec: dict[str, Any], *args: Any, base: type | None = None) -> Any:
    """Build ``class_path(*args, **init_args)`` (an allowed class, a subclass of ``base`` when given)."""
    cls, init_args = _checked(spec, base)
    return cls(*args, **init_args)


def callable_from_spec(spec: dict[str, Any], base: type | None = None) -> Any:
    """A callable that builds ``class_path`` with ``init_args`` bound, e.g. an optimizer taking param groups."""
    cls, init_args = _checked(spec, base)
    return functools.partial(cls, **init_args)
