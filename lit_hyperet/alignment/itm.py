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


@torch.no_grad()
def sampled_negatives(similarity: Tensor, positives: Tensor, generator: torch.Generator) -> HardNegatives:
    """LAVIS' rule: each image's negative text drawn with probability ``softmax(similarity)`` over its non-matching
    texts, and each text's negative image likewise (``similarity [B, B]``: logits; ``generator``: a CPU generator)."""
    masked = similarity.detach().float().cpu().masked_fill(positives.cpu(), float("-inf"))
    image_rows = (~positives.all(dim=1)).nonzero().flatten()
    text_rows = (~positives.all(dim=0)).nonzero().flatten()

    def draw(rows: Tensor) -> Tensor:
        return torch.multinomial(rows.softmax(dim=1), 1, generator=generator).flatten() if len(rows) else rows[:, 0]

    device = similarity.device
    return HardNegatives(
        text_for_image=draw(masked[image_rows.cpu()]).long().to(device),
        image_rows=image_rows,
        image_for_text=draw(masked.T[text_rows.cpu()]).long().to(device),
        text_rows=text_rows,
    )


@torch.no_grad()
def hardest_negatives(similarity: Tensor, positives: Tensor) -> HardNegatives:
    """The hardest non-matching text of each image and image of each text, from ``similarity [B, B]`` (image ``i``,
    text ``j``) and ``positives [B, B]`` (bool: pairs of the same image)."""
    masked = similarity.detach().float().masked_fill(positives.to(similarity.device), float("-inf"))
    has_image_negative = ~positives.all(dim=1)
    has_text_negative = ~positives.all(dim=0)
    image_rows = has_image_negative.nonzero().flatten()
    text_rows = has_text_negative.nonzero().flatten()
    return HardNegatives(
        text_for_image=masked.argmax(dim=1)[image_rows],
        image_rows=image_rows,
        image_for_text=masked.argmax(dim=0)[text_rows],
        text_rows=text_rows,
    )


def itm_loss(logits: Tensor, positive_count: int) -> Tensor:
    """Cross-entropy of ITM ``logits [N, 2]`` (no match, match) whose first ``positive_count`` rows are matching
    pairs and the rest mined negatives."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:positive_count] = 1
    return F.cross_entropy(logits.float(), labels)
