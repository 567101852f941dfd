"""Walking a generation dataloader: token radii per image, text-only skips, and (optionally) answer correctness."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from lit_hyperet.radius.compute import token_quantities
from lit_hyperet.radius.features import TokenSelection, token_features
from lit_hyperet.radius.records import ImageRecord, RunResult, categories

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
