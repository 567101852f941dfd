"""The radius of an image–text alignment model's embeddings (``HyperbolicAlignmentModule``): per image and per
caption, with retrieval hits, from one walk over the datamodule's val or test images.

**Quantities.** Every embedding ``u`` (an image query or a caption's ``[CLS]`` projection) is mapped into the model's
own space with its own curvature ``c`` and embedding scale ``α`` (:func:`lit_hyperet.alignment.hyperbolic_points`):

* ``rad`` — the hyperbolic distance of the point to the origin: ``2·artanh(√c‖x‖)/√c`` for a Poincaré-ball point
  ``x = proj(exp0_c(α u))``, ``acosh(√c x_t)/√c`` for MERU's hyperboloid point ``x = exp0_c(α u)``; for
  ``euclidean`` the ball radius its embedding would have (its loss never sees it);
* ``ball_norm`` — ``‖x_ball‖ = tanh(√c·rad/2)/√c``, the Euclidean norm of the Poincaré-ball point at that distance
  (the ball point itself in the Poincaré spaces, its isometric image for Lorentz);
* ``norm_radius`` — ``tanh(√c·rad/2) = √c·‖x_ball‖`` in ``[0, 1)``: 0 the origin, 1 the ball's boundary.

An image's values are those of its ``Q`` query embeddings (its per-image statistics are over the queries); a caption
has one embedding. Embeddings at the float32 limit of the space (:func:`lit_hyperet.alignment.saturated`) are
counted.

**Retrieval hits.** The image↔text ranks of ``ImageTextRecall`` (the module's own evaluation similarity and query
aggregation, LAVIS protocol, ties against the query) over the analysed images and all their captions: an image is a
hit when one of its captions ranks within the top ``K``, a caption when its image does.

**Specificity.** A caption's level from the annotations (``sentences[k].specificity``, the caption demo's 0–3), or
its word count for caption sets without levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_hyperet.radius.runs import ImageRecord, RunResult
from lit_hyperet.user_errors import ConfigError

FORMULAS: dict[str, str] = {
    "rad": "hyperbolic distance to the origin of the embedding's point in the model's space: 2*artanh(sqrt(c)*||x||)"
    "/sqrt(c) for x = proj(exp0_c(alpha*u)) in the Poincare ball, acosh(sqrt(c)*x_t)/sqrt(c) for x = exp0_c(alpha*u) "
    "on the hyperboloid; euclidean: the ball radius its embedding would have",
    "ball_norm": "tanh(sqrt(c)*rad/2)/sqrt(c): Euclidean norm of the Poincare-ball point at that distance (saturates "
    "at 1/sqrt(c))",
    "norm_radius": "tanh(sqrt(c)*rad/2) = sqrt(c)*ball_norm in [0, 1) (ball_norm divided by the ball radius 1/sqrt(c))",
}
NORMALISATION = (
    "norm_radius = tanh(sqrt(c) * rad / 2): the Poincare-ball norm of the point divided by the ball's radius 1/sqrt(c) "
    "(the same number for the isometric hyperboloid point), so 0 is the origin and 1 the boundary; c is the model's "
    "curvature"
)
SPECIFICITY_SOURCES: tuple[str, ...] = ("auto", "level", "words")
IMAGE, TEXT = "image", "text"


@dataclass
class AlignmentRun:
    """One analysed alignment run: image and caption records (``values[image|text][quantity]``, ``correct`` = a
    retrieval hit at ``recall_k``), image paths for the grid, recall over the analysed set, and counts."""

    name: str
    configs: list[str]
    ckpt: str | None
    split: str
    model: dict[str, Any] = field(default_factory=dict)
    images: list[ImageRecord] = field(default_factory=list)
    captions: list[ImageRecord] = field(default_factory=list)
    image_paths: dict[str, Path] = field(default_factory=dict)
    recall: dict[str, float] = field(default_factory=dict)
    recall_k: int = 1
    specificity: str = "level"
    saturated: dict[str, int] = field(default_factory=dict)

    def as_results(self) -> tuple[RunResult, RunResult]:
        """Images and captions as the radius analysis' :class:`RunResult` (named ``<run> images`` / ``<run>
        captions``), for its tables and reliability bins."""
        return tuple(  # type: ignore[return-value]
            RunResult(f"{self.name} {kind}", self.configs, self.ckpt, self.split, self.model, records, len(records))
            for kind, records in (("images", self.images), ("captions", self.captions))
        )


def quantities(rad: torch.Tensor, c: float) -> dict[str, np.ndarray]:
    """``rad``, ``ball_norm`` and ``norm_radius`` (float64 arrays) of radii ``rad`` at curvature ``c``."""
    rad = rad.detach().double().cpu()
    norm = torch.tanh(math.sqrt(c) * rad / 2)
    return {"rad": rad.numpy(), "ball_norm": (norm / math.sqrt(c)).numpy(), "norm_radius": norm.numpy()}


def model_info(module: Any) -> dict[str, Any]:
    """The space and its parameters as the analysed module holds them (for the summary)."""
    head = module.head
    return {
        "family": "alignment",
        "space": head.space,
        "curvature": float(head.curvature.detach()),
        "embedding_scale": float(head.embedding_scale.detach()),
        "eval_query_aggregation": head.eval_query_aggregation,
        "queries": int(module.blip2.config.num_query_tokens),
        "source": module.source.describe(),
    }


def _levels(batch: dict[str, Any], index: int, captions: list[str], how: str, where: str) -> list[int]:
    given = (batch.get("specificity") or [None] * len(batch["captions"]))[index]
    if given is not None and how != "words":
        return list(given)
    if how == "level":
        raise ConfigError(
            f"{where}: image {batch['image_ids'][index]!r} has no caption specificity levels (annotations "
            "sentences[k].specificity); use --specificity words (the caption's word count) or auto"
        )
    return [len(caption.split()) for caption in captions]


@torch.no_grad()
def collect_alignment(
    module: Any,
    loader: Any,
    run: AlignmentRun,
    max_images: int | None = None,
    device: torch.device | str = "cpu",
) -> AlignmentRun:
    """Fill ``run`` from the evaluation ``loader`` (every caption of each image, in file order; at most
    ``max_images`` images)."""
    from lit_hyperet.tasks.captions.retrieval import ImageTextRecall

    head, c = module.head, float(module.head.curvature)
    metric = ImageTextRecall(scorer=head.eval_scores, ks=sorted({1, 5, 10, run.recall_k}))
    records = getattr(loader.dataset, "records", None)
    seen = 0
    where = f"run {run.name!r}"
    kinds = ("images", "captions")
    for batch in loader:
        if max_images is not None and seen >= max_images:
            break
        count = len(batch["image_ids"]) if max_images is None else min(len(batch["image_ids"]), max_images - seen)
        captions = [list(cs) for cs in batch["captions"][:count]]
        flat = [caption for image_captions in captions for caption in image_captions]
        text_image = torch.tensor([i for i, cs in enumerate(captions) for _ in cs], dtype=torch.long)
        if run.specificity == "auto":  # levels when the annotations have them, for the whole run
            run.specificity = "words" if (batch.get("specificity") or [None])[0] is None else "level"
        image = module.image_embeddings(batch["pixel_values"][:count].to(device))
        text = module.text_embeddings(flat)
        metric.update(head.to_space(image), head.to_space(text), text_image.to(image.device))
        stats = head.radius_stats(image, text)
        queries = image.shape[1]
        image_rad = stats["image"].view(count, queries)
        flags = stats["saturated"]
        for kind, part in zip(kinds, (flags[: count * queries], flags[count * queries :]), strict=True):
            run.saturated[kind] = run.saturated.get(kind, 0) + int(part.sum())
        offset = 0
        for i, image_id in enumerate(batch["image_ids"][:count]):
            image_id = str(image_id)
            run.images.append(ImageRecord(image_id, {}, {IMAGE: quantities(image_rad[i], c)}))
            if records is not None:
                run.image_paths[image_id] = records[seen + i].image_path
            for k, (caption, level) in enumerate(
                zip(captions[i], _levels(batch, i, captions[i], run.specificity, where), strict=True)
            ):
                values = quantities(stats["text"][offset + k : offset + k + 1], c)
                categories = {"image_id": image_id, "caption_index": k, "caption": caption, "specificity": level}
                run.captions.append(ImageRecord(f"{image_id}#{k}", categories, {TEXT: values}))
            offset += len(captions[i])
        seen += count
    if not run.images:
        raise ConfigError(f"{where}: no image in the {run.split} data")
    run.recall = {key.replace("@", ""): float(value) for key, value in metric.compute().items()}
    i2t, t2i = metric.ranks()
    for record, rank in zip(run.images, i2t.tolist(), strict=True):
        record.correct = rank <= run.recall_k
    for record, rank in zip(run.captions, t2i.tolist(), strict=True):
        record.correct = rank <= run.recall_k
    return run
