"""One analysed run, from its spec to its records: ``name = config(s) [+ checkpoint]`` → model and data → one
:class:`ImageRecord` per image (per-token radii, categories, optionally answer correctness).

Models and data are instantiated by the project's LightningCLI (``cli_main(..., run=False)``) so the processor link
and config-driven data generation work exactly as for ``fit``; the trainer gets ``logger=false`` so no MLflow run
is started for it. A checkpoint contributes only its trainable tensors (HyperET, projector, LoRA), loaded onto the
model the config builds; a mismatch is an error naming the checkpoint. :func:`collect` then walks the ``val`` or
``test`` generation dataloader: text-only samples are skipped and counted, and each image sample's categories get
ScienceQA's ``grade_band`` (:func:`lit_hyperet.tasks.scienceqa.rules.grade_band`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from lit_hyperet.checkpoints import CheckpointError, load_trainable
from lit_hyperet.encoders import prefix_tokens
from lit_hyperet.models.loading import set_image_size as set_processor_image_size
from lit_hyperet.radius.tokens import (
    TokenSelection,
    interpolates,
    resolved_layer,
    token_features,
    token_quantities,
    vision_view,
)
from lit_hyperet.tasks.scienceqa.rules import grade_band
from lit_hyperet.user_errors import ConfigError

SPLITS: tuple[str, ...] = ("val", "test")

# ------------------------------------------------------------------------------------------------ run specs


@dataclass
class RunSpec:
    """One analysed run: a name, one or more LightningCLI config files (merged in order) and an optional checkpoint."""

    name: str
    configs: list[str]
    ckpt: str | None = None
    overrides: list[str] = field(default_factory=list)
    #: Input resolution (square, pixels) the images are processed at instead of the processor's own.
    image_size: int | None = None


def parse_run(text: str) -> RunSpec:
    """``NAME=CONFIG[,CONFIG2...][:CKPT]`` → :class:`RunSpec` (the last ``:`` separates the checkpoint)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ConfigError(f"--run {text!r}: expected NAME=CONFIG[,CONFIG...][:CKPT]")
    configs, _, ckpt = rest.rpartition(":") if ":" in rest else (rest, "", "")
    return RunSpec(name, [c for c in configs.split(",") if c], ckpt or None)


def load_runs_file(path: str | Path) -> list[RunSpec]:
    """Runs from YAML ``runs: [{name, config (str or list), ckpt, overrides (list), image_size}]`` (the last three
    optional); relative paths are taken from the current directory, like ``--config``."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ConfigError(f"{path}: expected a mapping with a 'runs' list")
    specs = []
    for i, entry in enumerate(data["runs"]):
        if not isinstance(entry, dict) or "name" not in entry or "config" not in entry:
            raise ConfigError(f"{path}: runs[{i}] needs 'name' and 'config', got {entry!r}")
        configs = entry["config"] if isinstance(entry["config"], list) else [entry["config"]]
        specs.append(
            RunSpec(
                str(entry["name"]),
                [str(c) for c in configs],
                entry.get("ckpt"),
                [str(o) for o in entry.get("overrides", [])],
                int(entry["image_size"]) if entry.get("image_size") is not None else None,
            )
        )
    return specs


def at_image_sizes(specs: list[RunSpec], sizes: list[int]) -> list[RunSpec]:
    """Each run once per input resolution, named ``NAME@SIZEpx``."""
    if any(size < 1 for size in sizes):
        raise ConfigError(f"--image-sizes must be positive pixel counts, got {sizes}")
    return [replace(s, name=f"{s.name}@{size}px", image_size=size) for s in specs for size in sizes]


#: Towers that take any input resolution without ``interpolate_pos_encoding`` (DINOv2 interpolates its position
#: embeddings itself, DINOv3 uses rotary position embeddings).
ANY_RESOLUTION = ("dinov2", "dinov2_with_registers", "dinov3_vit")


def set_image_size(module: Any, image_processor: Any, size: int) -> None:
    """Process images at ``size``×``size``: every size and crop entry of the image processor becomes ``size``. The
    tower must accept other resolutions: ``interpolate_pos_encoding`` in its forward, or one of :data:`ANY_RESOLUTION`
    (a fixed-size tower such as SAM's is a ``ConfigError``)."""
    tower = vision_view(module.llava).tower
    model_type = tower.config.model_type
    if model_type not in ANY_RESOLUTION and not interpolates(tower):
        raise ConfigError(f"a {model_type} tower has fixed position embeddings: it cannot be run at {size}px")
    set_processor_image_size(image_processor, size)


def check_specs(specs: list[RunSpec]) -> None:
    """Unique names, existing config and checkpoint files; a ``ConfigError`` / ``CheckpointError`` naming the run."""
    if not specs:
        raise ConfigError("no run given: use --config, --run NAME=CONFIG[:CKPT] or --runs FILE.yaml")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"run names must be unique, got {names}")
    for s in specs:
        for path in s.configs:
            if not Path(path).is_file():
                raise ConfigError(f"run {s.name!r}: {path} does not exist")
        if s.ckpt and not Path(s.ckpt).is_file():
            raise CheckpointError(f"{s.ckpt}: no such checkpoint file (run {s.name!r})")


# ------------------------------------------------------------------------------------------------ model and data


def build(spec: RunSpec, extra_overrides: list[str] = ()) -> tuple[Any, Any]:
    """``(module, datamodule)`` from the run's configs through LightningCLI, the model built and checkpoint loaded."""
    from lit_hyperet.cli import configured

    cli = configured(list(spec.configs), [*extra_overrides, *spec.overrides])
    module, datamodule = cli.model, cli.datamodule
    module.configure_model()
    if spec.ckpt:
        load_trainable(module, spec.ckpt)
    module.eval()
    return module, datamodule


def dataloader(datamodule: Any, split: str, max_samples: int | None, where: str) -> tuple[Any, str]:
    """The ``val`` or ``test`` generation dataloader and the dataset split name behind it."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if max_samples is not None and hasattr(datamodule, "max_samples"):  # encode only what will be read
        current = datamodule.max_samples
        limit = current.get(split) if isinstance(current, dict) else current
        limited = max_samples if limit is None else min(limit, max_samples)
        datamodule.max_samples = {**(current if isinstance(current, dict) else {}), split: limited}
    datamodule.prepare_data()
    datamodule.setup("validate" if split == "val" else "test")
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    if isinstance(loader, (list, tuple)):
        if not loader:
            raise ConfigError(f"{where}: the datamodule has no {split} data")
        loader = loader[0]
    splits = getattr(datamodule, "splits", None)  # ScienceQADataModule: role -> pid_splits name
    name = splits.get(split) if isinstance(splits, dict) and splits.get(split) else split
    return loader, str(name)


def model_info(module: Any, selection: TokenSelection) -> dict[str, Any]:
    """Tower, layer, token selection and HyperET settings of a built module (for the JSON summary)."""
    view = vision_view(module.llava)
    vision = view.tower.config
    try:
        prefix: int | None = prefix_tokens(vision)
    except ValueError:  # unknown tower: tokens.py infers it from the sequence length
        prefix = None
    hyperet = getattr(module, "hyperet_config", None)
    source = getattr(module, "source", None)
    return {
        "vision_tower": vision.model_type,
        "vision_layers": int(vision.num_hidden_layers),
        "layer": resolved_layer(module.llava, selection),
        "config_vision_feature_layer": view.feature_layer,
        "vision_feature_select_strategy": view.select_strategy,
        "prefix_tokens": prefix,
        "cls_included": bool(selection.include_cls and (prefix is None or prefix >= 1)),
        "tokens": "patch + CLS" if selection.include_cls and (prefix is None or prefix >= 1) else "patch",
        "hyperet": asdict(hyperet) if is_dataclass(hyperet) else None,
        "source": source.describe() if hasattr(source, "describe") else None,
    }


# ------------------------------------------------------------------------------------------------ records

#: Per-sample meta fields copied into the records (when the datamodule's meta has them), in CSV column order.
CATEGORY_FIELDS: tuple[str, ...] = (
    "split",
    "subject",
    "topic",
    "category",
    "skill",
    "grade",
    "grade_band",
    "has_text",
    "answer",
)


def categories(meta: dict[str, Any]) -> dict[str, Any]:
    """The category fields of one sample's meta, with ``grade_band`` derived from ``grade``."""
    found = {k: meta[k] for k in CATEGORY_FIELDS if k in meta and isinstance(meta[k], (str, int, float, bool))}
    if "grade" in meta and "grade_band" not in found:
        band = grade_band(meta["grade"])
        if band is not None:
            found["grade_band"] = band
    return found


@dataclass
class ImageRecord:
    """One image: its id, categories and per-token values ``values[source][quantity]`` (float64 arrays)."""

    id: str
    categories: dict[str, Any]
    values: dict[str, dict[str, np.ndarray]]
    correct: bool | None = None
    prediction: str | None = None


@dataclass
class RunResult:
    """Everything measured for one ``name = config [+ ckpt]``."""

    name: str
    configs: list[str]
    ckpt: str | None
    split: str
    model: dict[str, Any] = field(default_factory=dict)
    records: list[ImageRecord] = field(default_factory=list)
    samples_seen: int = 0
    skipped_text_only: int = 0
    skipped_ids: list[str] = field(default_factory=list)
    saturated: dict[str, int] = field(default_factory=dict)
    text_only_correct: list[bool] = field(default_factory=list)

    def sources(self) -> list[str]:
        """Sources present in the records (``vision``, optionally ``projector``)."""
        return list(self.records[0].values) if self.records else []


# ------------------------------------------------------------------------------------------------ collection

#: ``generate(batch) -> list[str]``: greedy texts for every sample of a batch (the module's ``generate_texts``).
Generate = Callable[[dict[str, Any]], list[str]]
_IMAGE_KEYS = ("pixel_values", "image_sizes")


def image_flags(batch: dict[str, Any]) -> list[bool]:
    """Which samples of a generation batch carry an image (``meta[i]["has_image"]``, else inferred from counts)."""
    ids = batch["ids"]
    metas = batch.get("meta") or [{} for _ in ids]
    pixels = batch.get("pixel_values")
    n_img = 0 if pixels is None else int(pixels.shape[0])
    if all("has_image" in m for m in metas):
        flags = [bool(m["has_image"]) for m in metas]
    elif n_img in (0, len(ids)):
        flags = [n_img > 0] * len(ids)
    else:
        raise ValueError(f"batch with ids {ids}: {n_img} images for {len(ids)} samples and no meta 'has_image'")
    if sum(flags) != n_img:
        raise ValueError(
            f"batch with ids {ids}: meta marks {sum(flags)} image samples but pixel_values holds {n_img} images"
        )
    return flags


def take_first(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` samples of a generation batch (images sliced to those samples' images)."""
    size = len(batch["ids"])
    n_img = sum(image_flags(batch)[:n])
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key in _IMAGE_KEYS and value is not None:
            out[key] = value[:n_img]
        elif isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
            out[key] = value[:n]
        elif isinstance(value, list) and len(value) == size:
            out[key] = value[:n]
        else:
            out[key] = value
    return out


def is_correct(text: str, meta: dict[str, Any]) -> bool | None:
    """Whether a generated text answers the sample: ScienceQA choice extraction when meta has ``answer`` and
    ``num_choices`` (:func:`lit_hyperet.tasks.scienceqa.rules.extract_answer`), exact match against ``reference``
    otherwise."""
    from lit_hyperet.metrics import normalize_text
    from lit_hyperet.tasks.scienceqa.rules import extract_answer

    if "answer" in meta and "num_choices" in meta:
        index = extract_answer(text, int(meta["num_choices"]), meta.get("answer_prefix", ""))
        return index is not None and int(index) == int(meta["answer"])
    if "reference" in meta:
        return normalize_text(text) == normalize_text(str(meta["reference"]))
    return None


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def collect(
    llava: nn.Module,
    batches: Iterable[dict[str, Any]],
    result: RunResult,
    selection: TokenSelection,
    c: float = 0.01,
    max_samples: int | None = None,
    generate: Generate | None = None,
    device: torch.device | str = "cpu",
) -> RunResult:
    """Fill ``result`` with one :class:`ImageRecord` per image sample of ``batches`` (at most ``max_samples``
    samples visited, text-only ones included); text-only samples are counted in ``skipped_text_only``. With
    ``generate``, every visited sample is answered greedily and marked right or wrong."""
    device = torch.device(device)
    for batch in batches:
        if max_samples is not None and result.samples_seen >= max_samples:
            break
        if max_samples is not None and result.samples_seen + len(batch["ids"]) > max_samples:
            batch = take_first(batch, max_samples - result.samples_seen)
        flags = image_flags(batch)
        metas = batch.get("meta") or [{} for _ in batch["ids"]]
        outcomes: list[tuple[bool | None, str | None]] = [(None, None)] * len(flags)
        if generate is not None:
            texts = generate(_to(batch, device))
            outcomes = [(is_correct(t, m), t) for t, m in zip(texts, metas, strict=True)]
        per_image: list[dict[str, dict[str, Any]]] = []
        if any(flags):
            for source, feats in token_features(llava, batch["pixel_values"], selection).items():
                values, saturated = token_quantities(feats, c)
                result.saturated[source] = result.saturated.get(source, 0) + saturated
                for i in range(feats.shape[0]):
                    if len(per_image) <= i:
                        per_image.append({})
                    per_image[i][source] = {q: v[i].cpu().numpy() for q, v in values.items()}
        image_index = 0
        for sample_id, meta, flag, (correct, text) in zip(batch["ids"], metas, flags, outcomes, strict=True):
            result.samples_seen += 1
            if not flag:
                result.skipped_text_only += 1
                result.skipped_ids.append(str(sample_id))
                if correct is not None:
                    result.text_only_correct.append(bool(correct))
                continue
            record = ImageRecord(str(sample_id), categories(meta), per_image[image_index], correct, text)
            result.records.append(record)
            image_index += 1
    return result
