"""Conversations to token ids with exact label masks, and the matching generation prompts.

A :class:`Conversation` is alternating user/assistant messages (no image token in the text) plus an optional image.
:class:`ConversationEncoder` renders it with the chat template (see :mod:`lit_hyperet.data.templates`), puts the
processor's image token first in the first user turn (``"<image>\\n" + text``, as LLaVA does) and expands it to as
many tokens as the ``LlavaProcessor`` does (the vision tower's feature count, measured once through the processor);
images go through the processor's image processor on their own (:meth:`ConversationEncoder.process_image`), so
the text can be encoded once and reused.

Masks are exact because the text is cut into pieces by rendering growing prefixes of the conversation: for turn k the
prompt ``render(messages[:2k+1], add_generation_prompt=True)`` must be a prefix of ``render(messages[:2k+2])`` and the
difference is the assistant piece (reply plus end-of-turn, e.g. ``" The answer is B.</s>"`` for vicuna_v1). The whole
text is tokenised once (natural tokenisation, offsets on) and a token is learned iff it starts inside an assistant
piece; everything else (system, user turns, image tokens, BOS) is ``-100``. The generation prompt is the run of tokens
before the last assistant piece (it ends with ``ASSISTANT:``), so it is a prefix of the training ids by construction;
the answer-prefix prompt extends it to the end of ``"The answer is"`` and refuses tokenisers that merge across it.

A processor without an image token (``image_token`` ``None``, MemVP's) keeps images beside the text: nothing is
inserted, the image is still processed, and the batch's ``image_mask`` says which samples have one.

LLaVA's pre-training ``plain`` format renders ``<image>`` + caption + ``"\\n"`` and learns only caption and newline.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from PIL import Image

from lit_hyperet.data.errors import DataError, where
from lit_hyperet.data.images import ImageRef
from lit_hyperet.data.templates import ChatRenderer

IGNORE_INDEX = -100
Template = Literal["chat", "plain"]


@dataclass
class Conversation:
    """A sample before tokenisation.

    ``messages``: ``[{"role": "user"|"assistant", "content": str}, ...]`` alternating, starting with a user turn and
    ending with an assistant turn. ``template``: ``"chat"`` (chat template) or ``"plain"`` (LLaVA pre-training: the
    user text is ignored, the single reply is the caption). ``meta``: plain-typed facts for the metric. ``source``:
    the data file, for error messages.
    """

    id: str
    messages: list[dict[str, str]]
    image: ImageRef | None = None
    template: Template = "chat"
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def reference(self) -> str:
        """The gold text of the last assistant turn (what generation is compared with)."""
        return self.messages[-1]["content"]

    def where(self, field_name: str | None = None) -> str:
        """``"file: id X: field 'f'"`` for error messages."""
        return where(self.source or "<memory>", f"id {self.id}", field_name)


@dataclass
class EncodedSample:
    """Token ids of the full conversation, their labels and where the generation prompts end.

    ``input_ids[:prompt_length]`` is the generation prompt of the last assistant turn (ends with the template's
    generation prompt, e.g. ``ASSISTANT:``); ``input_ids[:answer_prefix_length]`` additionally holds
    ``" The answer is"`` (``None`` when the last reply does not start with it). ``pixel_values``: ``[1, 3, H, W]``.
    """

    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    answer_prefix_length: int | None
    pixel_values: torch.Tensor | None = None


class ConversationEncoder:
    """Tokenises :class:`Conversation` objects with one processor (a ``LlavaProcessor`` or a bare tokenizer).

    ``template``: ``"auto"`` (the processor's/tokenizer's chat template, else vicuna_v1) or ``"vicuna_v1"``.
    """

    def __init__(
        self,
        processor: Any,
        template: str = "auto",
        system_prompt: str | None = None,
        answer_prefix: str = "",
    ) -> None:
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError("ConversationEncoder needs a fast (tokenizers-backed) tokenizer: masks use token offsets")
        self.renderer = ChatRenderer(processor, template, system_prompt)
        self.answer_prefix = answer_prefix
        self.image_token: str | None = getattr(processor, "image_token", None)
        self._num_image_tokens: int | None = None
        self._image_size: tuple[int, int] | None = None  # pixel_values H, W of the measurement

    # ----------------------------------------------------------------------------------------------------- pieces
    @property
    def num_image_tokens(self) -> int:
        """Tokens one image expands to, measured once by running the processor on a blank image."""
        self._measure_image()
        return self._num_image_tokens

    def _measure_image(self) -> None:
        if self._image_size is not None:
            return
        if self.image_token is None:  # images beside the text: only the processed size is fixed
            self._require_images("<encoder>")
            out = self.processor.image_processor(images=[Image.new("RGB", (64, 64))], return_tensors="pt")
            self._num_image_tokens, self._image_size = 0, tuple(out["pixel_values"].shape[-2:])
            return
        self._require_images("<encoder>")
        out = self.processor(
            images=[Image.new("RGB", (64, 64))], text=[self.image_token], add_special_tokens=False, return_tensors="pt"
        )
        self._num_image_tokens = int((out["input_ids"][0] == self.processor.image_token_id).sum())
        self._image_size = tuple(out["pixel_values"].shape[-2:])

    def _require_images(self, record: str) -> None:
        if not hasattr(self.processor, "image_processor"):
            raise DataError(f"{record}: sample has an image but the processor has no image processor")

    def pieces(self, conv: Conversation) -> list[tuple[str, bool]]:
        """The rendered text cut into ``(text, learned)`` pieces (image token not yet expanded)."""
        _check_messages(conv)
        if conv.template == "plain":
            if conv.image is None:
                raise DataError(f"{conv.where('image')}: the plain (pre-training) template needs an image")
            self._require_images(conv.where())
            if self.image_token is None:
                raise DataError(
                    f"{conv.where()}: the plain (pre-training) template needs a processor with an image token"
                )
            return [(self.image_token, False), (conv.reference + "\n", True)]
        if conv.template != "chat":
            raise DataError(f"{conv.where('template')}: unknown template {conv.template!r} (expected chat or plain)")
        messages = [dict(m) for m in conv.messages]
        if self.image_token is not None:
            for i, message in enumerate(messages):
                if self.image_token in message["content"]:
                    raise DataError(
                        f"{conv.where('conversations')}: turn {i} contains {self.image_token!r}; readers must remove it"
                    )
        if conv.image is not None:
            self._require_images(conv.where())
            if self.image_token is not None:
                messages[0]["content"] = f"{self.image_token}\n{messages[0]['content']}"
        pieces: list[tuple[str, bool]] = []
        done = ""
        for k in range(0, len(messages), 2):
            prompt = self.renderer(messages[: k + 1], add_generation_prompt=True)
            full = self.renderer(messages[: k + 2], add_generation_prompt=False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise DataError(
                    f"{conv.where()}: the chat template is not prefix-stable (rendering turn {k // 2} changes earlier "
                    "text), so label masks cannot be derived; use template='vicuna_v1'"
                )
            pieces += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
            done = full
        return pieces

    # --------------------------------------------------------------------------------------------------- encoding
    def encode(self, conv: Conversation, load_image: bool = True) -> EncodedSample:
        """Token ids, labels and prompt lengths; with ``load_image`` also the processed image (``pixel_values``).

        ``load_image=False`` opens no file. :meth:`encode_text` and :meth:`process_image` are the two halves.
        """
        sample = self.encode_text(conv)
        if conv.image is not None and load_image:
            sample.pixel_values = self.process_image(conv)
        return sample

    def process_image(self, conv: Conversation) -> torch.Tensor:
        """The sample's image through the processor's image processor: ``[1, 3, H, W]`` float.

        ``LlavaProcessor`` expands ``<image>`` to a count that depends only on H and W, so an image processed to the
        size measured by :attr:`num_image_tokens` gets exactly that many tokens; any other size is an error.
        """
        if conv.image is None:
            raise DataError(f"{conv.where('image')}: the sample has no image")
        self._require_images(conv.where())
        self._measure_image()
        pixel_values = self.processor.image_processor(images=[conv.image.open()], return_tensors="pt")["pixel_values"]
        if tuple(pixel_values.shape[-2:]) != self._image_size:
            raise DataError(
                f"{conv.where('image')}: the image processor gave a {tuple(pixel_values.shape[-2:])} image, not the "
                f"{self._image_size} that {self.num_image_tokens} image tokens were measured on; image-size-dependent "
                "token counts are not supported"
            )
        return pixel_values[:1].float()

    def encode_text(self, conv: Conversation) -> EncodedSample:
        """Token ids, labels and prompt lengths without opening the image (``pixel_values`` is ``None``).

        The image token is expanded to :attr:`num_image_tokens` copies, as the processor does, before tokenising.
        """
        pieces = self.pieces(conv)
        text = "".join(p for p, _ in pieces)
        bos = self.tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))
        inline = conv.image is not None and self.image_token is not None
        n_img = self.num_image_tokens if inline else 1
        # piece boundaries in the coordinates of the expanded text (what the tokenizer sees)
        starts, pos = [], 0
        for piece, _ in pieces:
            starts.append(pos)
            extra = piece.count(self.image_token) * (n_img - 1) * len(self.image_token) if n_img > 1 else 0
            pos += len(piece) + extra
        expanded = text.replace(self.image_token, self.image_token * n_img) if inline else text
        out = self.tokenizer(expanded, add_special_tokens=add_special, return_offsets_mapping=True)
        ids, offsets = list(out["input_ids"]), out["offset_mapping"]
        if inline:
            found = sum(1 for i in ids if i == self.processor.image_token_id)
            if found != n_img:
                raise DataError(
                    f"{conv.where('image')}: the text holds {found} image tokens after tokenisation, expected {n_img}"
                )
        token_pieces = [bisect.bisect_right(starts, start) - 1 for start, _ in offsets]
        for (start, stop), p in zip(offsets, token_pieces, strict=True):
            if p + 1 < len(starts) and start < starts[p + 1] < stop:
                raise DataError(
                    f"{conv.where()}: a token spans the boundary between piece {p} and {p + 1} of the rendered text "
                    f"({expanded[start:stop]!r}), so the label mask would not be exact"
                )
        labels = [tok if pieces[p][1] else IGNORE_INDEX for tok, p in zip(ids, token_pieces, strict=True)]
        last = len(pieces) - 1
        prompt_length = token_pieces.index(last) if last in token_pieces else len(ids)
        return EncodedSample(
            input_ids=ids,
            labels=labels,
            prompt_length=prompt_length,
            answer_prefix_length=self._answer_prefix_length(
                conv, pieces[last][0], starts[last], offsets, prompt_length
            ),
        )

    def _answer_prefix_length(
        self, conv: Conversation, reply: str, reply_start: int, offsets: list, prompt_length: int
    ) -> int | None:
        stripped = reply.lstrip()
        if not self.answer_prefix or not stripped.startswith(self.answer_prefix):
            return None
        end = reply_start + (len(reply) - len(stripped)) + len(self.answer_prefix)
        for i in range(prompt_length, len(offsets)):
            start, stop = offsets[i]
            if start >= end:
                return i
            if stop > end:
                raise DataError(
                    f"{conv.where()}: the tokenizer merges {self.answer_prefix!r} with the following text, so the "
                    "answer-prefix prompt is not a token prefix of the training sequence; use eval_protocol='generate'"
                )
        return len(offsets)


def _check_messages(conv: Conversation) -> None:
    messages = conv.messages
    if not messages or len(messages) % 2:
        raise DataError(f"{conv.where('conversations')}: expected user/assistant pairs, got {len(messages)} turns")
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if message.get("role") != expected or not isinstance(message.get("content"), str):
            raise DataError(
                f"{conv.where('conversations')}: turn {i} should be a {expected} message with string content, got "
                f"{message!r}"
            )
