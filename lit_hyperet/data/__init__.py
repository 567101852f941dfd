"""Data plumbing shared by every task: conversations to tokens with label masks, chat templates, image references,
the encoded-token store, datasets, collate, resumable loaders and data errors. Never imports a model family or a task.

Public: ``ScienceQADataModule``, ``LlavaInstructDataModule`` and ``CaptionDataModule``, the ``class_path`` names of
the YAML configs, live in :mod:`lit_hyperet.tasks` and are reachable here under those documented names. Exports are
loaded lazily, so importing this package does not import Lightning.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "ScienceQADataModule": "lit_hyperet.tasks.scienceqa.datamodule",
    "LlavaInstructDataModule": "lit_hyperet.tasks.instruct.datamodule",
    "CaptionDataModule": "lit_hyperet.tasks.captions.datamodule",
    "ConversationDataModule": "lit_hyperet.data.base",
    "Conversation": "lit_hyperet.data.conversation",
    "ConversationEncoder": "lit_hyperet.data.conversation",
    "ConversationDataset": "lit_hyperet.data.dataset",
    "Collator": "lit_hyperet.data.collate",
    "DataError": "lit_hyperet.data.errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lit_hyperet.data' has no attribute {name!r}")
