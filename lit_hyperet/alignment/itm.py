"""Image–text matching (ITM) with hard negatives mined from the contrastive similarities.

BLIP-2's stage 1 adds a binary matching loss: the model's ITM head scores a pair as match / no match, on each positive
pair of the batch, one negative text per image and one negative image per text. The negatives are mined from the
ITC logits of the batch, without gradient: **the hardest** non-matching pair (the highest logit among the pairs
whose images differ), or, as LAVIS does (``blip2_qformer.py``), one **sampled** in proportion to the softmax of the
logits over the non-matching pairs. A row without any non-matching pair (every image of the batch the same)
contributes no negative. The loss is the cross-entropy over the ``B`` positives (label 1) and the mined negatives
(label 0), as in BLIP-2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
ITM_NEGATIVES = ("hardest", "sampled")


@dataclass
class HardNegatives:
    """Mined pairs: ``text_for_image[i]``: the text paired with image ``i`` as its negative; ``image_for_text[j]``:
    the image paired with text ``j``; ``image_rows`` / ``text_rows``: the images / texts that got one (rows without
    a non-matching pair are left out)."""

    text_for_image: Tensor
    image_rows: Tensor
    image_for_text: Tensor
    text_rows: Tensor


def _directions(similarity: Tensor, positives: Tensor, t2i: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Image rows and text rows with their positives: ``similarity [B, N]`` (this process's images against every
    text) and ``t2i [B, N]`` (its texts against every image, sharing the images' positives), or, for a square batch
    (``t2i`` ``None``), the columns of ``similarity``."""
    positives = positives.to(similarity.device)
    if t2i is None:
        return similarity, positives, similarity.T, positives.T
    return similarity, positives, t2i, positives


def _masked(similarity: Tensor, positives: Tensor) -> Tensor:
    return similarity.detach().float().masked_fill(positives, float("-inf"))


def _rows(positives: Tensor) -> Tensor:
    """The rows with at least one non-matching pair."""
    return (~positives.all(dim=1)).nonzero().flatten()


@torch.no_grad()
def sampled_negatives(
    similarity: Tensor, positives: Tensor, generator: torch.Generator, t2i: Tensor | None = None
) -> HardNegatives:
    """LAVIS' rule: each image's negative text drawn with probability ``softmax(similarity)`` over its non-matching
    texts, and each text's negative image likewise (logits; ``generator``: a CPU generator; ``t2i``: see
    :func:`hardest_negatives`)."""
    i2t, image_positives, t2i, text_positives = _directions(similarity, positives, t2i)
    image_rows, text_rows = _rows(image_positives), _rows(text_positives)

    def draw(logits: Tensor, rows: Tensor, rows_positives: Tensor) -> Tensor:
        weights = _masked(logits[rows], rows_positives[rows]).cpu().softmax(dim=1)
        drawn = torch.multinomial(weights, 1, generator=generator).flatten() if len(rows) else weights[:, 0].long()
        return drawn.to(similarity.device)

    return HardNegatives(
        text_for_image=draw(i2t, image_rows, image_positives),
        image_rows=image_rows,
        image_for_text=draw(t2i, text_rows, text_positives),
        text_rows=text_rows,
    )


@torch.no_grad()
def hardest_negatives(similarity: Tensor, positives: Tensor, t2i: Tensor | None = None) -> HardNegatives:
    """The hardest non-matching text of each image and image of each text, from ``similarity [B, B]`` (image ``i``,
    text ``j``) and ``positives [B, B]`` (bool: pairs of the same image); with ``t2i``, from this process's pairs
    against the ``N`` of every process: ``similarity [B, N]`` (its images against every text), ``t2i [B, N]`` (its
    texts against every image) and ``positives [B, N]``, the mined indices then counting in ``N``."""
    i2t, image_positives, t2i, text_positives = _directions(similarity, positives, t2i)
    image_rows, text_rows = _rows(image_positives), _rows(text_positives)
    return HardNegatives(
        text_for_image=_masked(i2t, image_positives).argmax(dim=1)[image_rows],
        image_rows=image_rows,
        image_for_text=_masked(t2i, text_positives).argmax(dim=1)[text_rows],
        text_rows=text_rows,
    )


def itm_loss(logits: Tensor, positive_count: int) -> Tensor:
    """Cross-entropy of ITM ``logits [N, 2]`` (no match, match) whose first ``positive_count`` rows are matching
    pairs and the rest mined negatives."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:positive_count] = 1
    return F.cross_entropy(logits.float(), labels)
