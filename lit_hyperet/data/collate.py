"""Dynamic padding of :class:`~lit_hyperet.data.dataset.ConversationDataset` items into the batch contract.

Training batches (right padding): ``input_ids`` [B,T] long, ``attention_mask`` [B,T] long, ``labels`` [B,T] long
(``-100`` on padding and masked positions), ``pixel_values`` float [N_img,3,H,W] (the images of the batch's image
samples in sample order; the key is absent when no sample has an image), ``image_mask`` [B] bool (which samples
have an image: row ``i`` of ``pixel_values`` belongs to the ``i``-th ``True``), ``ids`` list[str].

Generation batches (left padding, for ``generate``): ``input_ids``, ``attention_mask``, ``pixel_values`` as above,
``image_mask``, ``ids``, ``meta`` list[dict], ``references`` list[str].
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch.nn.utils.rnn import pad_sequence

from lit_hyperet.data.conversation import IGNORE_INDEX


def pad_token_id(processor: Any) -> int:
    """The tokenizer's pad id, else its unk id (LLaVA's choice for Llama), else its eos id."""
    tokenizer = getattr(processor, "tokenizer", processor)
    for name in ("pad_token_id", "unk_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ValueError("the tokenizer has no pad, unk or eos token to pad batches with")


class Collator:
    """``collate_fn`` for one mode: ``"train"`` pads right with labels, ``"generate"`` pads left with meta.

    A plain class (not a closure) so DataLoader workers can pickle it.
    """

    def __init__(self, pad_id: int, mode: Literal["train", "generate"] = "train") -> None:
        if mode not in ("train", "generate"):
            raise ValueError(f"mode must be 'train' or 'generate', got {mode!r}")
        self.pad_id, self.mode = pad_id, mode

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        side = "right" if self.mode == "train" else "left"
        ids = [item["input_ids"] for item in items]
        batch: dict[str, Any] = {
            "input_ids": pad_sequence(ids, batch_first=True, padding_value=self.pad_id, padding_side=side),
            "attention_mask": pad_sequence(
                [torch.ones_like(x) for x in ids], batch_first=True, padding_value=0, padding_side=side
            ),
        }
        if self.mode == "train":
            batch["labels"] = pad_sequence(
                [item["labels"] for item in items], batch_first=True, padding_value=IGNORE_INDEX, padding_side=side
            )
        images = [item["pixel_values"] for item in items if item.get("pixel_values") is not None]
        if images:
            batch["pixel_values"] = torch.cat(images, dim=0)
        batch["image_mask"] = torch.tensor([item.get("pixel_values") is not None for item in items], dtype=torch.bool)
        batch["ids"] = [item["id"] for item in items]
        if self.mode == "generate":
            batch["meta"] = [item["meta"] for item in items]
            batch["references"] = [item["reference"] for item in items]
        return batch
