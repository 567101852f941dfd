"""A map-style dataset of conversations for training (ids + labels) or generation (prompts + meta + reference)."""

from __future__ import annotations

import logging
from typing import Any, Literal

from torch.utils.data import Dataset

from lit_hyperet.data.conversation import Conversation, ConversationEncoder, EncodedSample
from lit_hyperet.data.errors import DataError
from lit_hyperet.data.token_store import StoredText, TokenStore

log = logging.getLogger(__name__)
Mode = Literal["train", "generate"]
Protocol = Literal["generate", "answer_prefix"]
Overflow = Literal["error", "skip"]


class ConversationDataset(Dataset):
    """Conversations with their texts encoded up front and their images processed lazily, in ``__getitem__`` (the
    DataLoader workers).

    ``mode="train"`` items: ``id``, ``input_ids``, ``labels``, ``pixel_values`` (``[1,3,H,W]`` or ``None``).
    ``mode="generate"`` items: ``id``, ``input_ids`` (the prompt; with ``protocol="answer_prefix"`` it ends with
    ``" The answer is"``), ``pixel_values``, ``meta``, ``reference`` (gold reply text).

    At construction every sample's text is encoded once without opening images (missing image files are reported
    here), kept in a :class:`~lit_hyperet.data.token_store.TokenStore` and measured against ``max_length``
    (training: the whole conversation; generation: the prompt). Nothing is truncated: ``on_overflow="error"`` raises
    ``DataError`` naming file and id, ``"skip"`` drops the sample, counts it in :attr:`num_skipped` /
    :attr:`skipped_ids` and logs a warning with the count. ``max_length=None`` checks nothing. A fetch reads the
    stored text and runs only the image processor.
    """

    def __init__(
        self,
        conversations: list[Conversation],
        encoder: ConversationEncoder,
        mode: Mode = "train",
        protocol: Protocol = "generate",
        max_length: int | None = None,
        on_overflow: Overflow = "error",
        name: str = "dataset",
    ) -> None:
        if mode not in ("train", "generate"):
            raise ValueError(f"mode must be 'train' or 'generate', got {mode!r}")
        if protocol not in ("generate", "answer_prefix"):
            raise ValueError(f"protocol must be 'generate' or 'answer_prefix', got {protocol!r}")
        if on_overflow not in ("error", "skip"):
            raise ValueError(f"on_overflow must be 'error' or 'skip', got {on_overflow!r}")
        self.encoder, self.mode, self.protocol, self.name = encoder, mode, protocol, name
        self.max_length, self.on_overflow = max_length, on_overflow
        self.skipped_ids: list[str] = []
        self.texts = TokenStore(getattr(encoder.processor, "image_token_id", None))
        self.conversations = [c for c in conversations if self._keep(c)]
        self.texts.freeze()
        if self.skipped_ids:
            log.warning(
                "%s: skipped %d of %d samples longer than max_length=%d tokens (on_overflow='skip'); first ids: %s",
                name,
                len(self.skipped_ids),
                len(conversations),
                max_length,
                ", ".join(self.skipped_ids[:5]),
            )

    @property
    def num_skipped(self) -> int:
        """Samples dropped because they exceed ``max_length``."""
        return len(self.skipped_ids)

    def _length(self, conv: Conversation, enc: EncodedSample | StoredText) -> int:
        if self.mode == "train":
            return len(enc.input_ids)
        return self._prompt_length(conv, enc)

    def _prompt_length(self, conv: Conversation, enc: EncodedSample | StoredText) -> int:
        if self.protocol == "generate":
            return enc.prompt_length
        if enc.answer_prefix_length is None:
            raise DataError(
                f"{conv.where('conversations')}: the answer-prefix protocol needs a reply starting with "
                f"{self.encoder.answer_prefix!r}, got {conv.reference[:60]!r}"
            )
        return enc.answer_prefix_length

    def _keep(self, conv: Conversation) -> bool:
        if conv.image is not None:
            conv.image.check_exists()
        enc = self.encoder.encode_text(conv)
        length = self._length(conv, enc)
        if self.max_length is None or length <= self.max_length:
            self.texts.append(enc)
            return True
        if self.on_overflow == "error":
            raise DataError(
                f"{conv.where()}: {length} tokens exceed max_length={self.max_length} ({self.mode}); nothing is "
                "truncated: raise max_length or set on_overflow='skip'"
            )
        self.skipped_ids.append(conv.id)
        return False

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> dict[str, Any]:
        conv = self.conversations[index]
        text = self.texts[index]
        pixel_values = self.encoder.process_image(conv) if conv.image is not None else None
        item: dict[str, Any] = {"id": conv.id, "pixel_values": pixel_values}
        if self.mode == "train":
            item["input_ids"], item["labels"] = text.input_ids, text.labels
        else:
            item["input_ids"] = text.input_ids[: self._prompt_length(conv, text)]
            item["meta"] = dict(conv.meta)
            item["reference"] = conv.reference
        return item
