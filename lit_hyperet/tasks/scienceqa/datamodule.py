"""``ScienceQADataModule``: ScienceQA (raw or parquet layout) as LLaVA-style conversations, scored officially."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from lit_hyperet.data.base import ConversationDataModule
from lit_hyperet.data.conversation import Conversation
from lit_hyperet.data.errors import DataError
from lit_hyperet.tasks.scienceqa.metric import ScienceQAAccuracy
from lit_hyperet.tasks.scienceqa.problems import ScienceQAProblem, load_scienceqa
from lit_hyperet.tasks.scienceqa.prompts import (
    ANSWER_FIRST_OUTPUTS,
    ANSWER_PREFIX,
    PROMPT_STYLES,
    SINGLE_PRED_PROMPT,
    parse_format,
    render_memvp_prompt,
    render_prompt,
)
from lit_hyperet.user_errors import ConfigError

log = logging.getLogger(__name__)


def scienceqa_conversation(
    problem: ScienceQAProblem,
    prompt_format: str = "QCM-A",
    use_caption: bool = False,
    reference_quirks: bool = False,
    single_pred_prompt: bool = False,
    answer_prefix: str = "",
    source: str = "",
    prompt_style: str = "llava",
) -> Conversation:
    """One problem as a single-turn conversation (user: the IN text, assistant: the OUT text) with metric meta.

    ``prompt_style``: ``llava`` (LLaVA's converted JSON) or ``memvp`` (MemVP's examples: ``Question: `` kept, the
    prompt ends with ``Response:``; ``reference_quirks`` does not apply, MemVP keeps the reference's AL / AE).
    The image (if any) is referenced, not opened; an encoder with an image token puts ``<image>\\n`` first in the user
    turn.
    ``answer_prefix`` goes into the meta so the metric can complete ``" B."`` to ``"The answer is B."``.
    """
    if prompt_style == "memvp":
        user, reply = render_memvp_prompt(problem, prompt_format, use_caption)
    else:
        user, reply = render_prompt(problem, prompt_format, use_caption, reference_quirks)
    if single_pred_prompt:
        user += SINGLE_PRED_PROMPT
    meta = {**problem.meta(), "answer_prefix": answer_prefix}
    return Conversation(
        id=problem.pid,
        messages=[{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
        image=problem.image_ref,
        meta=meta,
        source=source,
    )


class ScienceQADataModule(ConversationDataModule):
    """ScienceQA for LLaVA-style training (right-padded, masked labels) and evaluation (left-padded prompts).

    Args:
        data_dir: raw layout (problems.json, pid_splits.json, images/) or parquet layout (``data/*.parquet``).
        layout: ``"raw"`` or ``"parquet"``.
        train_split / val_split / test_split / predict_split: pid_splits names (``None`` = no such stage).
        prompt_format: ``"<IN>-<OUT>"`` (see :mod:`lit_hyperet.tasks.scienceqa.prompts`); ``reference_quirks``
            reproduces the reference code's swapped AL/AE.
        use_caption: append captions.json captions to the context (text-only baselines; MemVP's training: off).
        eval_use_caption: the same for val / test / predict (``None``: as ``use_caption``; MemVP's evaluation: on).
        prompt_style: ``"llava"`` (LLaVA's converted ScienceQA JSON, for chat templates) or ``"memvp"`` (MemVP's
            ``Question: …\\nResponse:`` prompts, for its plain template; ``reference_quirks`` does not apply).
        single_pred_prompt: append LLaVA-1.5's "Answer with the option's letter …" line to the question.
        eval_protocol: ``"answer_prefix"`` (prompt ends with ``ASSISTANT: The answer is``, one new token is read as
            the letter; needs an OUT format starting with the answer) or ``"generate"`` (free generation, parsed with
            the official rules).
        make_demo_if_missing: create the synthetic demo dataset when ``data_dir`` is the demo's own
            (``outputs/demo_data``, :data:`~lit_hyperet.tasks.scienceqa.demo.DEMO_DATA_DIR`) and has no problems.json.
            Any other missing dataset is an error naming the path: synthetic data never stands in for real data.
        splits_path / captions_path: explicit pid_splits.json / captions.json (default: found next to the data).
        **kwargs: the arguments shared by all datamodules (``processor``, ``template``, ``batch_size``,
            ``eval_batch_size``, ``max_length``, ``max_samples``, …), see
            :class:`~lit_hyperet.data.base.ConversationDataModule`.
    """

    answer_prefix = ANSWER_PREFIX

    def __init__(
        self,
        data_dir: str,
        layout: Literal["raw", "parquet"] = "raw",
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
        predict_split: str | None = "test",
        prompt_format: str = "QCM-A",
        use_caption: bool = False,
        eval_use_caption: bool | None = None,
        prompt_style: Literal["llava", "memvp"] = "llava",
        reference_quirks: bool = False,
        single_pred_prompt: bool = False,
        eval_protocol: Literal["generate", "answer_prefix"] = "answer_prefix",
        splits_path: str | None = None,
        captions_path: str | None = None,
        make_demo_if_missing: bool = False,
        demo_num_problems: int = 600,
        demo_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _, out_fmt = parse_format(prompt_format)
        if layout not in ("raw", "parquet"):
            raise ConfigError(f"data.layout must be 'raw' or 'parquet', got {layout!r}")
        if prompt_style not in PROMPT_STYLES:
            raise ConfigError(f"data.prompt_style must be one of {', '.join(PROMPT_STYLES)}, got {prompt_style!r}")
        if eval_protocol not in ("generate", "answer_prefix"):
            raise ConfigError(f"data.eval_protocol must be 'generate' or 'answer_prefix', got {eval_protocol!r}")
        if eval_protocol == "answer_prefix" and out_fmt not in ANSWER_FIRST_OUTPUTS:
            raise ConfigError(
                f"data.eval_protocol='answer_prefix' needs an output format that starts with the answer "
                f"({', '.join(ANSWER_FIRST_OUTPUTS)}); {prompt_format!r} does not: use eval_protocol='generate'"
            )
        self.data_dir, self.layout = Path(data_dir), layout
        self.splits = {"train": train_split, "val": val_split, "test": test_split, "predict": predict_split}
        self.prompt_format, self.use_caption, self.reference_quirks = prompt_format, use_caption, reference_quirks
        self.single_pred_prompt = single_pred_prompt
        self.eval_use_caption = use_caption if eval_use_caption is None else eval_use_caption
        self.prompt_style = prompt_style
        self.eval_protocol = eval_protocol
        self.eval_max_new_tokens = 1 if eval_protocol == "answer_prefix" else None
        self.splits_path, self.captions_path = splits_path, captions_path
        self.make_demo_if_missing, self.demo_num_problems, self.demo_seed = (
            make_demo_if_missing,
            demo_num_problems,
            demo_seed,
        )

    def prepare_data(self) -> None:
        """Write the demo dataset to the demo's own ``data_dir`` when asked and missing; refuse a missing dataset
        anywhere else with the path and what belongs there."""
        if self.layout == "parquet" or (self.data_dir / "problems.json").exists():
            return  # the readers name any file that is missing from here on
        from lit_hyperet.tasks.scienceqa.demo import DEMO_DATA_DIR, make_demo_data

        if self.make_demo_if_missing and self.data_dir.resolve() == Path(DEMO_DATA_DIR).resolve():
            log.warning("%s has no problems.json: writing the synthetic demo dataset there", self.data_dir)
            make_demo_data(self.data_dir, num_problems=self.demo_num_problems, seed=self.demo_seed)
            return
        raise DataError(
            f"data_dir {self.data_dir}: no problems.json (expected ScienceQA's raw layout: problems.json, "
            f"pid_splits.json, images/); synthetic data: python -m lit_hyperet make-demo-data --out {self.data_dir}"
        )

    def setup(self, stage: str | None = None) -> None:
        """Load the splits of ``stage`` (creating the demo data first if asked and missing)."""
        self.prepare_data()
        super().setup(stage)

    def load_problems(self, role: str) -> list[ScienceQAProblem] | None:
        """The problems of a role's split, in pid_splits order (``None`` when the role has no split)."""
        split = self.splits[role]
        if split is None:
            return None
        return load_scienceqa(self.data_dir, split, self.layout, self.splits_path, self.captions_path)

    def load_conversations(self, role: str) -> list[Conversation] | None:
        """The role's problems rendered with the prompt format."""
        problems = self.load_problems(role)
        if problems is None:
            return None
        prefix = self.answer_prefix if self.eval_protocol == "answer_prefix" and role != "train" else ""
        source = str(self.data_dir / "problems.json") if self.layout == "raw" else str(self.data_dir)
        caption = self.use_caption if role == "train" else self.eval_use_caption
        return [
            scienceqa_conversation(
                p,
                self.prompt_format,
                caption,
                self.reference_quirks,
                self.single_pred_prompt,
                prefix,
                source,
                self.prompt_style,
            )
            for p in problems
        ]

    def build_metric(self) -> ScienceQAAccuracy:
        """A fresh :class:`~lit_hyperet.tasks.scienceqa.metric.ScienceQAAccuracy`."""
        return ScienceQAAccuracy()
