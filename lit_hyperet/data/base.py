"""Shared LightningDataModule plumbing: processor hand-over, datasets per stage, DataLoaders with the batch contract."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
from torch.utils.data import DataLoader
from torchmetrics import Metric

from lit_hyperet.data.collate import Collator, pad_token_id
from lit_hyperet.data.conversation import Conversation, ConversationEncoder
from lit_hyperet.data.dataset import ConversationDataset
from lit_hyperet.data.resumable import ResumableDataLoader
from lit_hyperet.user_errors import ConfigError

ROLES = ("train", "val", "test", "predict")
STAGE_ROLES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


class ConversationDataModule(L.LightningDataModule):
    """Base of the project's DataModules. Subclasses implement :meth:`load_conversations` and :meth:`build_metric`.

    The processor (a ``LlavaProcessor``) comes from the model: LightningCLI links it in at instantiation, or call
    :meth:`set_processor`. ``setup()`` without one raises ``RuntimeError``.

    The arguments below are shared by every subclass, which declares only its own and passes these on as keywords
    (LightningCLI still lists them as the subclass's ``init_args``).

    Args:
        processor: tokenizer + image processor (``LlavaProcessor``); the CLI links in the model's.
        template: ``"auto"`` (the processor's chat template, else vicuna_v1) or ``"vicuna_v1"``.
        system_prompt: system message for the chat template (``None``: the template's own).
        batch_size: training batch size.
        eval_batch_size: batch size of the val/test/predict (generation) batches.
        num_workers: DataLoader worker processes (0: load in the main process).
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: keep the DataLoader workers between epochs (only with ``num_workers > 0``).
        max_length: token limit per sample (``None``: no limit). Nothing is truncated: longer samples raise or are
            skipped, see ``on_overflow``.
        on_overflow: ``"error"`` (raise on a sample longer than ``max_length``) or ``"skip"`` (leave it out and count
            it, see :attr:`num_skipped`).
        max_samples: the first N samples per role (``{"train": 64, "val": 32}``; roles train/val/test/predict) or
            for every role (an int); ``None``: all.
    """

    #: Max new tokens the module should generate for this data (``None``: the module's own setting).
    eval_max_new_tokens: int | None = None
    #: Protocol of the generation batches: ``"generate"`` or ``"answer_prefix"``.
    eval_protocol: str = "generate"
    #: Text the reference answers start with, ending the prompts of the ``"answer_prefix"`` protocol.
    answer_prefix: str = ""

    def __init__(
        self,
        processor: Any = None,
        template: Literal["auto", "vicuna_v1"] = "auto",
        system_prompt: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        max_length: int | None = 512,
        on_overflow: Literal["error", "skip"] = "error",
        max_samples: dict[str, int] | int | None = None,
    ) -> None:
        super().__init__()
        if on_overflow not in ("error", "skip"):
            raise ConfigError(f"data.on_overflow must be 'error' or 'skip', got {on_overflow!r}")
        if isinstance(max_samples, dict) and set(max_samples) - set(ROLES):
            raise ConfigError(f"data.max_samples keys must be among {', '.join(ROLES)}, got {', '.join(max_samples)}")
        self.processor = processor
        self.template, self.system_prompt = template, system_prompt
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory, self.persistent_workers = num_workers, pin_memory, persistent_workers
        self.max_length, self.on_overflow, self.max_samples = max_length, on_overflow, max_samples
        self.datasets: dict[str, ConversationDataset] = {}
        self._absent: set[str] = set()  # roles without data (e.g. no val split)

    # ------------------------------------------------------------------------------------------------ to override
    def load_conversations(self, role: str) -> list[Conversation] | None:
        """Conversations for ``role`` (train/val/test/predict), or ``None`` when that role has no data."""
        raise NotImplementedError

    def build_metric(self) -> Metric:
        """A fresh metric for one evaluation stage."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------------ setup
    def set_processor(self, processor: Any) -> None:
        """Use ``processor`` (tokenizer + image processor) for all datasets built from now on."""
        self.processor = processor
        self.datasets.clear()
        self._absent.clear()

    def _limit(self, role: str, items: list[Conversation]) -> list[Conversation]:
        limit = self.max_samples.get(role) if isinstance(self.max_samples, dict) else self.max_samples
        return items if limit is None else items[:limit]

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of ``stage`` (``fit``/``validate``/``test``/``predict``; ``None``: all)."""
        if self.processor is None:
            raise RuntimeError(
                f"{type(self).__name__}.setup(): no processor. The CLI links the model's processor in; otherwise call "
                "set_processor(AutoProcessor.from_pretrained(model_dir)) first"
            )
        roles = ROLES if stage is None else STAGE_ROLES.get(stage, ())
        encoder = ConversationEncoder(
            self.processor, template=self.template, system_prompt=self.system_prompt, answer_prefix=self.answer_prefix
        )
        for role in roles:
            if role in self.datasets:
                continue
            conversations = self.load_conversations(role)
            if conversations is None:
                self._absent.add(role)
                continue
            self.datasets[role] = ConversationDataset(
                self._limit(role, conversations),
                encoder,
                mode="train" if role == "train" else "generate",
                protocol=self.eval_protocol,
                max_length=self.max_length,
                on_overflow=self.on_overflow,
                name=f"{type(self).__name__} {role}",
            )

    @property
    def num_skipped(self) -> dict[str, int]:
        """Samples skipped for exceeding ``max_length``, per role (train/val/test/predict) set up so far."""
        return {role: ds.num_skipped for role, ds in self.datasets.items()}

    # ------------------------------------------------------------------------------------------------ dataloaders
    def _loader(self, role: str) -> DataLoader | list:
        if role in self._absent:
            return []
        if role not in self.datasets:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for the {role} dataloader")
        train = role == "train"
        loader_class = ResumableDataLoader if train else DataLoader  # training resumes inside an epoch
        return loader_class(
            self.datasets[role],
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=Collator(pad_token_id(self.processor), "train" if train else "generate"),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, right-padded training batches with labels."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        """Left-padded generation batches with ``meta`` and ``references`` (``[]`` when there is no val data)."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list:
        """Like :meth:`val_dataloader`, for the test split."""
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        """Like :meth:`val_dataloader`, for the predict split."""
        return self._loader("predict")
