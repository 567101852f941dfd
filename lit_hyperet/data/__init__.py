"""Data: ScienceQA (raw and parquet), LLaVA instruction JSON, prompt formats, chat templating and label masks,
collate, and the synthetic demo dataset. Imports neither ``lit_hyperet.model`` nor ``lit_hyperet.hyperet``.

Public: ``ScienceQADataModule``, ``LlavaInstructDataModule`` (YAML ``class_path`` names), ``make_demo_data``.
Exports are loaded lazily so ``python -m lit_hyperet make-demo-data`` does not import Lightning.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "ScienceQADataModule": "lit_hyperet.data.scienceqa_datamodule",
    "LlavaInstructDataModule": "lit_hyperet.data.llava_datamodule",
    "ConversationDataModule": "lit_hyperet.data.base",
    "ScienceQAProblem": "lit_hyperet.data.scienceqa",
    "load_scienceqa": "lit_hyperet.data.scienceqa",
    "render_prompt": "lit_hyperet.data.prompts",
    "Conversation": "lit_hyperet.data.conversation",
    "ConversationEncoder": "lit_hyperet.data.conversation",
    "ConversationDataset": "lit_hyperet.data.dataset",
    "Collator": "lit_hyperet.data.collate",
    "DataError": "lit_hyperet.data.errors",
    "read_llava_json": "lit_hyperet.data.llava",
    "make_demo_data": "lit_hyperet.data.demo",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lit_hyperet.data' has no attribute {name!r}")
