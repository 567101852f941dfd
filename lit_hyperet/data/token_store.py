"""Encoded conversation texts kept in flat int32 buffers, so a dataset tokenises each sample once, at construction.

Rendering the chat template and tokenising cost more per sample than processing its image; the text of a sample
never changes between epochs, so :class:`~lit_hyperet.data.dataset.ConversationDataset` keeps what it encoded
while checking lengths and only processes the image per fetch. Flat buffers rather than per-sample lists: about 4
bytes per text token, and forked DataLoader workers share them copy-on-write without touching Python refcounts.
"""

from __future__ import annotations

from array import array
from typing import NamedTuple

import torch

from lit_hyperet.data.conversation import IGNORE_INDEX, EncodedSample


class StoredText(NamedTuple):
    """One sample's text as read back: ``input_ids`` and ``labels`` (long tensors) and its prompt lengths."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    prompt_length: int
    answer_prefix_length: int | None


def _as_tensor(values: array) -> torch.Tensor:
    dtype = torch.int32 if values.typecode == "i" else torch.int64
    return torch.frombuffer(values, dtype=dtype).clone() if len(values) else torch.zeros(0, dtype=dtype)


class TokenStore:
    """Append-then-freeze store of :class:`EncodedSample` texts (ids, labels, prompt lengths; no pixels).

    Each token is one int32 code: its id where it is learned, ``-(id + 1)`` where it is masked (labels are the id or
    ``-100``, nothing else). The run of image tokens (``image_token_id``) is stored as one code and expanded again on
    read, so a 576-token LLaVA-1.5 image costs one entry per sample, not 576.
    """

    def __init__(self, image_token_id: int | None) -> None:
        self.image_token_id = image_token_id
        self._codes, self._offsets = array("i"), array("q", [0])
        self._image_at, self._image_len = array("q"), array("q")
        self._prompt, self._prefix = array("q"), array("q")
        self._frozen: dict[str, torch.Tensor] | None = None

    def append(self, sample: EncodedSample) -> None:
        """Add one encoded sample (before :meth:`freeze`)."""
        if self._frozen is not None:
            raise RuntimeError("TokenStore.append() after freeze()")
        ids, labels = sample.input_ids, sample.labels
        codes = []
        for token, label in zip(ids, labels, strict=True):
            if label not in (token, IGNORE_INDEX):
                raise ValueError(f"label {label} is neither the token {token} nor {IGNORE_INDEX}")
            codes.append(token if label == token else -token - 1)
        at, n = -1, 0
        if self.image_token_id is not None and self.image_token_id in ids:
            at, n = ids.index(self.image_token_id), ids.count(self.image_token_id)
            if any(code != -self.image_token_id - 1 for code in codes[at : at + n]):
                raise ValueError("image tokens must form one contiguous, masked run")
            codes = codes[: at + 1] + codes[at + n :]
        self._codes.extend(codes)
        self._offsets.append(len(self._codes))
        self._image_at.append(at)
        self._image_len.append(n)
        self._prompt.append(sample.prompt_length)
        self._prefix.append(-1 if sample.answer_prefix_length is None else sample.answer_prefix_length)

    def freeze(self) -> None:
        """Move the buffers into tensors; no more appends."""
        if self._frozen is None:
            self._frozen = {
                "codes": _as_tensor(self._codes),
                "offsets": _as_tensor(self._offsets),
                "image_at": _as_tensor(self._image_at),
                "image_len": _as_tensor(self._image_len),
                "prompt": _as_tensor(self._prompt),
                "prefix": _as_tensor(self._prefix),
            }
            del self._codes, self._offsets, self._image_at, self._image_len, self._prompt, self._prefix

    @property
    def num_codes(self) -> int:
        """Stored int32 codes: one per text token plus one per image."""
        return len(self._frozen["codes"]) if self._frozen is not None else len(self._codes)

    def __len__(self) -> int:
        return len(self._frozen["prompt"]) if self._frozen is not None else len(self._prompt)

    def __getitem__(self, index: int) -> StoredText:
        if self._frozen is None:
            raise RuntimeError("TokenStore: call freeze() before reading")
        t = self._frozen
        codes = t["codes"][int(t["offsets"][index]) : int(t["offsets"][index + 1])].long()
        at = int(t["image_at"][index])
        if at >= 0:
            codes = torch.cat([codes[:at], codes[at : at + 1].expand(int(t["image_len"][index])), codes[at + 1 :]])
        learned = codes >= 0
        prefix = int(t["prefix"][index])
        return StoredText(
            input_ids=torch.where(learned, codes, -codes - 1),
            labels=torch.where(learned, codes, IGNORE_INDEX),
            prompt_length=int(t["prompt"][index]),
            answer_prefix_length=None if prefix < 0 else prefix,
        )
