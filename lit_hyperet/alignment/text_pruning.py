"""Random Text Pruning (RTP): less specific captions in training, made from the caption strings before tokenisation.

Each caption of a training batch is pruned with probability ``prob``, independently (one uniform draw per caption);
a pruned caption is cut into words at whitespace (``str.split()``), and:

* ``prefix``: keeps the first ``k`` words, ``k`` uniform in ``1 … n − 1`` for a caption of ``n ≥ 2`` words (always
  strictly shorter, never empty);
* ``drop_words``: drops each word independently with probability 1/2, keeping the order; when every word was dropped,
  one word drawn uniformly from the caption is kept.

The kept words are joined with single spaces. Captions of fewer than two words are left as they are (``prefix``
cannot shorten them; ``drop_words`` must keep their one word). Random draws come from torch's global RNG (seeded by
``seed_everything``) unless a ``generator`` is given. Evaluation never prunes: the LightningModule calls this only in
training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

RtpMode = Literal["prefix", "drop_words"]
RTP_MODES: tuple[str, ...] = ("prefix", "drop_words")
DROP_WORD_PROB = 0.5


def check_rtp(prob: float, mode: str) -> None:
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"rtp_prob must be in [0, 1], got {prob}")
    if mode not in RTP_MODES:
        raise ValueError(f"rtp_mode {mode!r} is not one of {', '.join(RTP_MODES)}")


def prune_caption(caption: str, mode: RtpMode, generator: torch.Generator | None = None) -> str:
    """One pruned caption (see the module docstring); fewer than two words come back unchanged."""
    check_rtp(0.0, mode)
    words = caption.split()
    n = len(words)
    if n < 2:
        return caption
    if mode == "prefix":
        k = int(torch.randint(1, n, (), generator=generator))
        return " ".join(words[:k])
    keep = torch.rand(n, generator=generator) >= DROP_WORD_PROB
    if not keep.any():
        keep[int(torch.randint(n, (), generator=generator))] = True
    return " ".join(word for word, kept in zip(words, keep.tolist(), strict=True) if kept)


def prune_captions(
    captions: Sequence[str], prob: float, mode: RtpMode = "prefix", generator: torch.Generator | None = None
) -> list[str]:
    """Each caption pruned with probability ``prob`` (one draw per caption); ``prob`` 0 returns them unchanged without
    drawing."""
    check_rtp(prob, mode)
    if prob == 0.0 or not captions:
        return list(captions)
    draws = torch.rand(len(captions), generator=generator).tolist()
    return [prune_caption(c, mode, generator) if d < prob else c for c, d in zip(captions, draws, strict=True)]
