"""``LlavaInstructDataModule``: LLaVA instruction / pre-training JSON files, evaluated by exact match."""

from __future__ import annotations

from typing import Any, Literal

from lit_hyperet.data.base import ConversationDataModule
from lit_hyperet.data.conversation import Conversation
from lit_hyperet.metrics import ExactMatch
from lit_hyperet.tasks.instruct.llava_json import read_llava_json


class LlavaInstructDataModule(ConversationDataModule):
    """LLaVA JSON lists (instruct 150K, mix 665K incl. text-only records, 558K captions, converted ScienceQA).

    Args:
        train_path / val_path / test_path / predict_path: LLaVA JSON files (``None`` = no such stage).
        image_folder: root the records' ``image`` paths are relative to (e.g. ``playground/data`` for
            ``coco/train2017/…``).
        template: ``"auto"`` (the processor's chat template, else vicuna_v1), ``"vicuna_v1"``, or ``"plain"`` (LLaVA
            pre-training: ``<image>`` + caption + newline; only caption and newline are learned).
        eval_max_new_tokens: generation budget for val/test/predict (``None``: the module's own setting).
        max_length: token limit per sample, as in :class:`~lit_hyperet.data.base.ConversationDataModule` (longer
            default here: instruction conversations are long).
        **kwargs: the other arguments shared by all datamodules (``processor``, ``batch_size``, ``eval_batch_size``,
            ``on_overflow``, ``max_samples``, …), see :class:`~lit_hyperet.data.base.ConversationDataModule`.

    Evaluation generates the last gpt turn of each record (earlier turns are in the prompt) and scores it with
    :class:`~lit_hyperet.metrics.ExactMatch`; ``meta`` per sample: ``id``, ``reference``, ``has_image``.
    """

    def __init__(
        self,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        predict_path: str | None = None,
        image_folder: str | None = None,
        template: Literal["auto", "vicuna_v1", "plain"] = "auto",
        max_length: int | None = 2048,
        eval_max_new_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        if template not in ("auto", "vicuna_v1", "plain"):
            raise ValueError(f"template must be 'auto', 'vicuna_v1' or 'plain', got {template!r}")
        super().__init__(template="auto" if template == "plain" else template, max_length=max_length, **kwargs)
        self.paths = {"train": train_path, "val": val_path, "test": test_path, "predict": predict_path}
        self.image_folder = image_folder
        self.conversation_template = "plain" if template == "plain" else "chat"
        self.eval_max_new_tokens = eval_max_new_tokens

    def load_conversations(self, role: str) -> list[Conversation] | None:
        """The records of the role's file (``None`` when no file is configured for it)."""
        path = self.paths[role]
        if path is None:
            return None
        return read_llava_json(path, self.image_folder, template=self.conversation_template)

    def build_metric(self) -> ExactMatch:
        """A fresh :class:`~lit_hyperet.metrics.ExactMatch`."""
        return ExactMatch()
