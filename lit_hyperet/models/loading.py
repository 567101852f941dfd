"""Shared model plumbing for every model family: dtypes, local Hugging Face dirs, complete loads, the source API."""

from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import PreTrainedModel, ProcessorMixin

from lit_hyperet.user_errors import ConfigError

if TYPE_CHECKING:
    from lit_hyperet.hyperet_config import HyperETConfig

NamedParams = list[tuple[str, nn.Parameter]]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """``"float32" | "bfloat16" | "float16"`` -> the torch dtype."""
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def require_config(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{what} {str(path)!r} has no config.json (expected a local Hugging Face model dir)")
    return path


def load_complete(cls: Any, path: str | Path, what: str, **kwargs: Any) -> PreTrainedModel:
    """``cls.from_pretrained(path)``, refusing checkpoints that leave weights missing or with mismatched shapes."""
    model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    bad = sorted(info["missing_keys"]) + sorted(str(k[0]) for k in info["mismatched_keys"])
    if bad:
        raise ConfigError(f"{what} {str(path)!r} lacks or mismatches {len(bad)} weights of {cls.__name__}: {bad[:10]}")
    return model


def generate_once(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """``path``, first written by ``write(dir)`` unless it holds a ``config.json``: into a temporary sibling dir renamed
    into place, so no process (rank) ever sees a half-written model; when another process wrote it first, its copy
    is kept."""
    path = Path(path)
    if not (path / "config.json").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        write(tmp)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, path)  # replaces an empty dir; fails if another process wrote the model first
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (path / "config.json").is_file():
                raise
    return path


class ModelSource(ABC):
    """Base of the model sources (``class_path`` names in YAML): loads a plain model and its processor."""

    @abstractmethod
    def load_processor(self) -> ProcessorMixin:
        """The processor (image processor + tokenizer + chat template) matching :meth:`load_model`."""

    @abstractmethod
    def load_model(self) -> PreTrainedModel:
        """The plain model; every parameter keeps ``requires_grad=True``."""

    @abstractmethod
    def describe(self) -> dict[str, str]:
        """Plain strings describing the source (for hyper-parameter logging)."""


class LanguageModelSource(ModelSource):
    """A source of the multimodal language models ``HyperETLitModule`` trains (the LLaVA and MemVP families): it
    builds its frozen model with the family's trainable parts and names their parameter groups."""

    #: The batch entries the built model's ``forward`` and ``generate`` read.
    input_names: tuple[str, ...] = ("input_ids", "attention_mask", "pixel_values")

    @abstractmethod
    def build(
        self,
        hyperet: HyperETConfig | None = None,
        train_projector: bool = True,
        lora: Any = None,
        gradient_checkpointing: bool = False,
    ) -> nn.Module:
        """The loaded model, frozen except HyperET (on the vision tower), the projector (if ``train_projector``) and
        the family's own trainable parts (``lora``: LoRA settings, for families that train LoRA)."""

    @abstractmethod
    def trainable_groups(self, model: nn.Module) -> dict[str, NamedParams]:
        """Trainable parameters of a :meth:`build` model by group name -> ``[(qualified name, parameter)]``."""


def parameter_counts(model: nn.Module, groups: Mapping[str, list[tuple[str, nn.Parameter]]]) -> dict[str, int]:
    """``total`` and ``trainable`` parameter counts of ``model`` plus the count of each trainable group."""
    counts = {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    counts.update({group: sum(p.numel() for _, p in params) for group, params in groups.items()})
    return counts


def set_image_size(image_processor: Any, size: int) -> None:
    """Make a Hugging Face image processor resize (and crop) to ``size`` × ``size``: every size and crop entry it has
    (``shortest_edge``, ``longest_edge``, ``height``, ``width``; a dict or transformers' ``SizeDict``) becomes
    ``size``."""
    keys = ("shortest_edge", "longest_edge", "height", "width")
    for name in ("size", "crop_size"):
        current = getattr(image_processor, name, None)
        if is_dataclass(current):  # transformers' SizeDict
            set_keys = {k: size for k in keys if getattr(current, k, None) is not None}
            setattr(image_processor, name, replace(current, **set_keys))
        elif isinstance(current, dict):
            setattr(
                image_processor, name, {k: (size if k in keys and v is not None else v) for k, v in current.items()}
            )
