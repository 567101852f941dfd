"""Image–text contrastive learning in a chosen space: the learnable temperature, curvature and embedding scale, the
symmetric InfoNCE loss with label smoothing, the scores used for retrieval, and radius statistics.

Parameters (stored as logarithms; clamped in place before each use, and read through the clamp):

* temperature ``τ``: init 0.07, in ``[0.001, 0.5]`` (BLIP-2's clamp); logits are ``similarity / τ`` (for
  ``lorentz`` this is MERU's ``−distance × scale`` with ``scale = 1/τ``, ``τ ≥ 0.001`` being ``scale ≤ 1000``);
* curvature ``c``: fixed, or learnable within ``[c0/10, 10·c0]`` (MERU's range around the initial ``c0``);
* embedding scale ``α``: ``≤ 1``, init ``1/√D`` (MERU), multiplied into the embeddings before the exponential map;
  fixed or learnable. ``euclidean`` uses neither ``c`` nor ``α``: they stay in the graph with a zero weight, so
  every space has the same trainable tensors (checkpoints of one space load in another, and DDP sees every trainable
  parameter used).

Optional: MERU's entailment loss (:mod:`.entailment`) added with a weight, on each caption and the image query that
scores its pair (the drawn one under RQS, the best-matching one under ``max``, every query under ``mean``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lit_hyperet.alignment import entailment as ent, queries as q, spaces as sp
from lit_hyperet.geometry import at_least_fp32

Tensor = torch.Tensor

TEMPERATURE_RANGE = (0.001, 0.5)
CURVATURE_RANGE_FACTOR = 10.0
MAX_EMBEDDING_SCALE = 1.0


@at_least_fp32
def symmetric_infonce(
    logits: Tensor, label_smoothing: float = 0.1, positives: Tensor | None = None, t2i_logits: Tensor | None = None
) -> Tensor:
    """``(CE(image → text) + CE(text → image)) / 2`` over the square ``[B, B]`` logits of a batch of image–text pairs,
    or, with ``t2i_logits``, over this process's ``B`` pairs against the ``N`` pairs of every process: ``logits``
    ``[B, N]`` (its images against every text) and ``t2i_logits`` ``[B, N]`` (its texts against every image).

    Targets: pair ``(i, j)`` is positive when ``positives[i, j]`` (default, square logits only: ``i == j``); each row's
    target spreads uniformly over its positives (the same image twice in a batch: both captions match both copies),
    then label smoothing ``ε`` mixes in the uniform distribution: ``(1 − ε)·target + ε/N`` (torch's
    ``cross_entropy``). Over the processes' ``[B, N]`` slices the mean of this loss is the square loss of all ``N``.
    """
    square = logits.dim() == 2 and logits.shape[0] == logits.shape[1]
    if t2i_logits is None and not square:
        raise ValueError(f"symmetric InfoNCE needs square [B, B] logits, got {tuple(logits.shape)}")
    if t2i_logits is not None and (positives is None or not logits.shape == t2i_logits.shape == positives.shape):
        raise ValueError("[B, N] logits need t2i_logits and positives of the same shape")
    if positives is None:
        positives = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    targets = positives.to(logits.dtype) / positives.sum(1, keepdim=True)
    if t2i_logits is None:  # square: the texts' rows are the columns (pair i is image i with text i)
        t2i_logits, t2i_targets = logits.T, positives.T.to(logits.dtype) / positives.T.sum(1, keepdim=True)
    else:  # text i belongs to image i: its positives are its image's
        t2i_targets = targets
    i2t = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    t2i = F.cross_entropy(t2i_logits, t2i_targets, label_smoothing=label_smoothing)
    return (i2t + t2i) / 2


def same_image(image_ids: list) -> Tensor:
    """``[B, B]`` bool: pairs whose images carry the same id."""
    keys = image_keys(image_ids)
    return keys[:, None] == keys[None, :]


def image_keys(image_ids: list) -> Tensor:
    """``[B]`` int64: each image id as the first 8 bytes of its BLAKE2 hash (the same in every process, so processes
    can compare ids by exchanging tensors)."""
    digests = (hashlib.blake2b(str(key).encode(), digest_size=8).digest() for key in image_ids)
    return torch.tensor([int.from_bytes(d, "little", signed=True) for d in digests], dtype=torch.int64)


@dataclass
class AlignmentOutput:
    """``loss`` (scalar: contrastive + weighted entailment), ``logits`` ``[B, B]`` (similarity / temperature), the
    points in the space: ``image`` ``[B, Q, D]``, ``text`` ``[B, D]``, the ``contrastive`` term, the unweighted
    ``entailment`` term (``None`` when its weight is 0), ``contrasted``: the pairs each image and each text was
    contrasted with (``B``, or the ``N`` of every process with gathered negatives), and, with gathered negatives,
    ``gathered``: the logits ``[B, N]`` of this process's images against every text and of its texts against every
    image, and their positives ``[B, N]``."""

    loss: Tensor
    logits: Tensor
    image: Tensor
    text: Tensor
    contrastive: Tensor | None = None
    entailment: Tensor | None = None
    contrasted: int = 0
    gathered: tuple[Tensor, Tensor, Tensor] | None = None


class ContrastiveAlignment(nn.Module):
    """The contrastive head over image query embeddings ``[B, Q, D]`` and text embeddings ``[T, D]``.

    Args:
        dim: embedding size ``D``.
        space: ``euclidean``, ``poincare_cosine``, ``poincare_distance`` or ``lorentz`` (:mod:`.spaces`).
        curvature: initial (or fixed) ``c > 0``.
        learn_curvature: learn ``c`` within ``[c0/10, 10·c0]``.
        embedding_scale: initial (or fixed) ``α`` in ``(0, 1]``; ``None``: ``1/√D``.
        learn_embedding_scale: learn ``α`` (kept ``≤ 1``).
        temperature: initial ``τ`` (learnable, within :data:`TEMPERATURE_RANGE`).
        label_smoothing: ``ε`` of the InfoNCE targets.
        query_aggregation: ``max``, ``rqs`` or ``mean`` in training (:mod:`.queries`).
        eval_query_aggregation: ``max`` or ``mean`` in evaluation (and whenever the head is in eval mode).
        entailment_weight: weight of MERU's entailment loss (0: off; MERU: 0.2); hyperbolic spaces only.
        entailment_aperture: MERU's ``min_radius`` ``K`` of the cones' half aperture ``asin(2K / (√c‖t‖))``.
    """

    def __init__(
        self,
        dim: int,
        space: sp.Space = "poincare_cosine",
        curvature: float = 1.0,
        learn_curvature: bool = False,
        embedding_scale: float | None = None,
        learn_embedding_scale: bool = True,
        temperature: float = 0.07,
        label_smoothing: float = 0.1,
        query_aggregation: q.QueryAggregation = "max",
        eval_query_aggregation: str = "max",
        entailment_weight: float = 0.0,
        entailment_aperture: float = ent.MERU_APERTURE,
    ) -> None:
        super().__init__()
        sp.check_space(space)
        if entailment_weight < 0 or not entailment_aperture > 0:
            raise ValueError(
                f"entailment weight must be >= 0 and aperture > 0, got {entailment_weight}, {entailment_aperture}"
            )
        if entailment_weight > 0:
            ent.check_entailment_space(space)
        q.check_aggregation(query_aggregation)
        q.check_aggregation(eval_query_aggregation, q.EVAL_QUERY_AGGREGATIONS)
        scale = 1 / math.sqrt(dim) if embedding_scale is None else embedding_scale
        if not curvature > 0:
            raise ValueError(f"curvature must be > 0, got {curvature}")
        if not 0 < scale <= MAX_EMBEDDING_SCALE:
            raise ValueError(f"embedding_scale must be in (0, {MAX_EMBEDDING_SCALE}], got {scale}")
        low, high = TEMPERATURE_RANGE
        if not low <= temperature <= high:
            raise ValueError(f"temperature must be in [{low}, {high}], got {temperature}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.dim, self.space = dim, space
        self.entailment_weight, self.entailment_aperture = entailment_weight, entailment_aperture
        self.label_smoothing = label_smoothing
        self.query_aggregation, self.eval_query_aggregation = query_aggregation, eval_query_aggregation
        self.initial_curvature = float(curvature)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.log_curvature = nn.Parameter(torch.tensor(math.log(curvature)), requires_grad=learn_curvature)
        self.log_embedding_scale = nn.Parameter(torch.tensor(math.log(scale)), requires_grad=learn_embedding_scale)

    # ---------------------------------------------------------------------------------------------- parameters

    def _log_bounds(self) -> dict[str, tuple[float, float]]:
        c0 = self.initial_curvature
        return {
            "log_temperature": (math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])),
            "log_curvature": (math.log(c0 / CURVATURE_RANGE_FACTOR), math.log(c0 * CURVATURE_RANGE_FACTOR)),
            "log_embedding_scale": (-math.inf, math.log(MAX_EMBEDDING_SCALE)),
        }

    @torch.no_grad()
    def clamp_(self) -> None:
        """Bring the stored logarithms back into their ranges (after an optimiser step moved them out)."""
        for name, (low, high) in self._log_bounds().items():
            getattr(self, name).clamp_(low, high)

    def _value(self, name: str) -> Tensor:
        low, high = self._log_bounds()[name]
        return getattr(self, name).float().clamp(low, high).exp()

    @property
    def temperature(self) -> Tensor:
        return self._value("log_temperature")

    @property
    def curvature(self) -> Tensor:
        return self._value("log_curvature")

    @property
    def embedding_scale(self) -> Tensor:
        return self._value("log_embedding_scale")

    # ---------------------------------------------------------------------------------------------- maps

    def to_space(self, u: Tensor) -> Tensor:
        """Embeddings (any dtype) → float32 (or float64) points in the space."""
        return sp.to_space(self.space, _at_least_fp32(u), self.curvature, self.embedding_scale)

    def scores(
        self, image: Tensor, text: Tensor, aggregation: str | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Image–text similarity ``[B, T]`` of points ``image [B, Q, D]`` and ``text [T, D]`` (from :meth:`to_space`),
        without temperature; ``aggregation`` defaults to the training one in train mode, the evaluation one
        otherwise; ``generator`` draws RQS's queries (torch's global RNG when ``None``)."""
        how = aggregation or (self.query_aggregation if self.training else self.eval_query_aggregation)
        q.check_aggregation(how)
        if how == "rqs":
            # one query left: max is that query's similarity
            image, how = q.pick_random_queries(image, generator), "max"
        return q.aggregate_queries(sp.query_similarity(self.space, image, text, self.curvature), how)

    def eval_scores(self, image: Tensor, text: Tensor) -> Tensor:
        """:meth:`scores` with the evaluation aggregation, whatever the mode (``ImageTextRecall``'s scorer)."""
        return self.scores(image, text, self.eval_query_aggregation)

    # ---------------------------------------------------------------------------------------------- loss

    def forward(
        self,
        image_embeds: Tensor,
        text_embeds: Tensor,
        image_ids: list | None = None,
        generator: torch.Generator | None = None,
        gather: Callable[[Tensor], Tensor] | None = None,
    ) -> AlignmentOutput:
        """Symmetric InfoNCE of ``B`` image–text pairs: ``image_embeds [B, Q, D]``, ``text_embeds [B, D]`` (pair
        ``i`` is image ``i`` with its caption ``i``; ``image_ids`` make repeated images positives of each other;
        ``generator`` draws RQS's queries). ``gather`` (``[B, …]`` → the ``[N, …]`` of every process, in rank order)
        makes every process's pairs negatives of this one's, as BLIP-2 gathers its features over the GPUs; the
        returned ``logits`` stay this process's ``[B, B]``."""
        if self.training:
            self.clamp_()
        image, text = self.to_space(image_embeds), self.to_space(text_embeds)
        how = self.query_aggregation if self.training else self.eval_query_aggregation
        scored = q.pick_random_queries(image, generator) if how == "rqs" else image  # the queries the loss sees
        how = "max" if how == "rqs" else how  # one query left under RQS: max is that query's similarity
        similarity = sp.query_similarity(self.space, scored, text, self.curvature)
        logits = q.aggregate_queries(similarity, how) / self.temperature
        contrasted, gathered = logits.shape[1], None
        if gather is None:
            positives = same_image(image_ids).to(logits.device) if image_ids is not None else None
            contrastive = loss = symmetric_infonce(logits, self.label_smoothing, positives)
        else:
            if image_ids is None:
                raise ValueError("negatives gathered over processes need the image ids (to find the positives)")
            keys = image_keys(image_ids).to(logits.device)
            all_scored, all_text, all_keys = gather(scored), gather(text), gather(keys)
            i2t = q.aggregate_queries(sp.query_similarity(self.space, scored, all_text, self.curvature), how)
            t2i = q.aggregate_queries(sp.query_similarity(self.space, all_scored, text, self.curvature), how).T
            positives, contrasted = keys[:, None] == all_keys[None, :], len(all_keys)
            gathered = (i2t / self.temperature, t2i / self.temperature, positives)
            contrastive = loss = symmetric_infonce(gathered[0], self.label_smoothing, positives, gathered[1])
        entailment = None
        if self.entailment_weight > 0:
            entailment = self.entailment(scored, text, similarity, how)
            loss = loss + self.entailment_weight * entailment
        if self.space == "euclidean":  # c and α unused: a zero weight keeps them in the graph (see module doc)
            loss = loss + 0.0 * (self.log_curvature + self.log_embedding_scale)
        return AlignmentOutput(loss, logits, image, text, contrastive, entailment, contrasted, gathered)

    def entailment(self, image: Tensor, text: Tensor, similarity: Tensor, how: str) -> Tensor:
        """MERU's entailment loss of the ``B`` pairs (image ``i``, caption ``i``) from points ``image [B, Q', D]`` and
        ``text [B, D]`` and their per-query ``similarity [B, Q', B]``: on the best-matching query under ``max`` (and
        RQS's single drawn query), on every query under ``mean``."""
        pairs = torch.arange(image.shape[0], device=image.device)
        if how == "mean":
            texts = text[:, None].expand_as(image)
            return ent.entailment_loss(self.space, texts, image, self.curvature, self.entailment_aperture)
        best = similarity[pairs, :, pairs].argmax(dim=-1)  # [B]: the query scoring each positive pair
        return ent.entailment_loss(self.space, text, image[pairs, best], self.curvature, self.entailment_aperture)

    # ---------------------------------------------------------------------------------------------- radius

    @torch.no_grad()
    def radius_stats(self, image_embeds: Tensor, text_embeds: Tensor) -> dict[str, Tensor]:
        """Per-embedding hyperbolic radii (every image query counts as one embedding) and the saturated flags:
        ``image`` ``[B·Q]``, ``text`` ``[T]``, ``saturated`` ``[B·Q + T]`` (float 0/1). For ``euclidean`` these are
        the radii its embeddings would have in the Poincaré ball (:func:`.spaces.hyperbolic_points`)."""
        c, scale = self.curvature, self.embedding_scale
        points = [
            sp.hyperbolic_points(self.space, _at_least_fp32(u).reshape(-1, u.shape[-1]), c, scale)
            for u in (image_embeds, text_embeds)
        ]
        radii = [sp.radius(self.space, p, c) for p in points]
        flags = torch.cat([sp.saturated(self.space, p, c) for p in points]).float()
        return {"image": radii[0], "text": radii[1], "saturated": flags}

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, space={self.space}, query_aggregation={self.query_aggregation}, "
            f"eval_query_aggregation={self.eval_query_aggregation}, label_smoothing={self.label_smoothing}, "
            f"entailment_weight={self.entailment_weight}"
        )


def _at_least_fp32(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()
