"""Reading training checkpoints: tensors and plain data only, one-line errors naming the file, and modules rebuilt
from stored hyper-parameters without running anything the checkpoint names.

Lightning's ``load_from_checkpoint`` builds the module either with the ``_instantiator`` LightningCLI stores (which
hands every stored ``class_path`` to jsonargparse, importing whatever module it names) or by calling the class with
the stored hyper-parameters; :func:`module_from_checkpoint` does the latter only, after checking the stored entries,
and every ``class_path`` inside is resolved against :data:`lit_hyperet.class_paths.ALLOWED_MODULES`.
"""

from __future__ import annotations

import inspect
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from lit_hyperet.class_paths import SpecError, class_path, import_class, is_plain
from lit_hyperet.user_errors import UserError

T = TypeVar("T")
#: Entries LightningCLI adds to the hyper-parameters of the modules it builds.
CLI_ENTRIES = ("_instantiator", "_class_path")


class CheckpointError(UserError):
    """A checkpoint that cannot be used: the message names the file and what is wrong with it."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_plain(path: str | Path, mmap: bool = False, allowed: tuple[type, ...] = ()) -> Any:
    """What ``torch.load(path, weights_only=True)`` reads on the CPU: tensors and plain data, plus instances of the
    ``allowed`` classes (e.g. ``argparse.Namespace``); nothing else is unpickled.

    A missing file, a directory (a sharded checkpoint), a truncated or foreign file, or a pickle holding any other
    object is a :class:`CheckpointError` naming the file (and the refused class).
    """
    import torch  # here, so that the error type above imports without torch (command-line start-up)

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory, not a checkpoint file (use the .ckpt file that fit writes)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated, or not written by torch.save)")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        named = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f": it names {named.group(1)}" if named else ""
        raise CheckpointError(f"{path}: holds objects other than tensors and plain data; refused{what}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated, or not written by torch.save): {_first_line(err)}"
        ) from None


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint dict from a ``.ckpt`` file, loaded with ``torch.load(weights_only=True)`` on the CPU
    (:func:`load_plain`); a dict without ``state_dict`` is a :class:`CheckpointError` too."""
    checkpoint = load_plain(path, mmap=mmap)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a training checkpoint (no 'state_dict' entry)")
    return checkpoint


def stored_hparams(checkpoint: dict[str, Any], module_class: type, path: str | Path) -> dict[str, Any]:
    """The checkpoint's hyper-parameters as ``module_class`` arguments, checked to be plain data of that class.

    A checkpoint of another module class (LightningCLI's ``_class_path``), or one with entries that are not arguments
    of ``module_class`` (another model family), is a :class:`CheckpointError`.
    """
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    stored_class = hparams.get("_class_path")
    if stored_class is not None and _canonical("_class_path", stored_class) != class_path(module_class):
        raise CheckpointError(f"{path}: a checkpoint of {stored_class}, not of {class_path(module_class)}")
    for entry in CLI_ENTRIES:
        hparams.pop(entry, None)
    arguments = set(inspect.signature(module_class.__init__).parameters) - {"self"}
    unknown = sorted(set(hparams) - arguments)
    if unknown:
        raise CheckpointError(
            f"{path}: hyper-parameters {unknown} are not arguments of {module_class.__name__} "
            "(a checkpoint of another model family?)"
        )
    for name, value in hparams.items():
        if not is_plain(value):
            raise CheckpointError(f"{path}: hyper-parameter {name!r} is not plain data: {value!r}")
    return hparams


_ABSENT = "<absent>"


def flatten(value: Any, sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of ``sep``-joined keys; tuples as lists, paths as strings."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, sep, f"{prefix}{sep}{key}" if prefix else str(key)))
        return out
    if isinstance(value, tuple):
        value = list(value)
    return {prefix: str(value) if isinstance(value, Path) else value}


def _canonical(key: str, value: Any) -> Any:
    """Class paths by the class they name (``lit_hyperet.models.llava.TinyLlava`` =
    ``lit_hyperet.models.llava.sources.TinyLlava``), resolved only inside the allowed packages; anything else as it
    is."""
    if key.rsplit(".", 1)[-1] in ("class_path", "_class_path") and isinstance(value, str):
        try:
            return class_path(import_class(value))
        except SpecError:
            return value
    return value


def compare_hparams(
    stored: dict[str, Any], configured: dict[str, Any], module_class: type
) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """``(layout, other)`` differences ``(dotted key, stored, configured)`` between a checkpoint's hyper-parameters
    and the configured ones. Layout keys are ``module_class.LAYOUT_HPARAMS`` (a key missing on one side differs);
    other keys are compared where both sides have them (a checkpoint stores only what its module was given)."""
    layout_keys = set(getattr(module_class, "LAYOUT_HPARAMS", ()))
    a, b = ({k: _canonical(k, v) for k, v in flatten(d).items()} for d in (stored, configured))
    layout, other = [], []
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if left == right:
            continue
        if key in layout_keys:
            layout.append((key, left, right))
        elif _ABSENT not in (left, right):
            other.append((key, left, right))
    return layout, other


def load_trainable(module: Any, path: str | Path, checkpoint: dict[str, Any] | None = None) -> None:
    """Load a checkpoint's tensors onto ``module`` (its stored hyper-parameters are not used); tensors that are not the
    module's trainable set (``check_state_keys``) or do not fit its shapes are a :class:`CheckpointError` naming the
    file. ``checkpoint``: the file's content when the caller has read it already."""
    state = (checkpoint if checkpoint is not None else read_checkpoint(path))["state_dict"]
    if hasattr(module, "check_state_keys"):
        module.check_state_keys(state, source=str(path))
    try:
        module.load_state_dict(state)
    except RuntimeError as err:  # shapes that do not fit the configured model
        raise CheckpointError(f"{path}: {err}") from None


def module_from_checkpoint(
    module_class: type[T], path: str | Path, map_location: Any = None, overrides: dict[str, Any] | None = None
) -> T:
    """``module_class(**stored hyper-parameters, **overrides)`` with the checkpoint's trainable tensors loaded.

    Stored model sources, optimisers and schedulers are ``class_path`` specs resolved only inside this package and
    ``torch.optim``; a spec naming anything else, or a state dict that is not the module's trainable set, is a
    :class:`CheckpointError` naming the file and the entry.
    """
    checkpoint = read_checkpoint(path)
    hparams = {**stored_hparams(checkpoint, module_class, path), **(overrides or {})}
    try:
        module = module_class(**hparams)
    except (SpecError, TypeError, ValueError) as err:  # stored entries the module refuses
        raise CheckpointError(f"{path}: {err}") from None
    load_trainable(module, path, checkpoint)
    if map_location is not None:
        module.to(map_location)
    return module
