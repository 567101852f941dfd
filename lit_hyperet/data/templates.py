"""Rendering a conversation to text: the processor's/tokenizer's chat template, else LLaVA's vicuna_v1."""

from __future__ import annotations

from typing import Any

from lit_hyperet.chat_templates import vicuna_v1_chat_template

TEMPLATES = ("auto", "vicuna_v1")


class ChatRenderer:
    """Callable ``(messages, add_generation_prompt) -> str`` for one processor (picklable for DataLoader workers).

    ``template="auto"`` uses the processor's chat template, else the tokenizer's, else LLaVA's vicuna_v1
    (:func:`~lit_hyperet.chat_templates.vicuna_v1_chat_template`); ``"vicuna_v1"`` always uses vicuna_v1.
    ``system_prompt`` (optional) is sent as a leading system turn.
    """

    def __init__(self, processor: Any, template: str = "auto", system_prompt: str | None = None) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"unknown chat template {template!r}; expected one of {', '.join(TEMPLATES)}")
        self.tokenizer = getattr(processor, "tokenizer", processor)
        jinja = None
        if template == "auto":
            jinja = getattr(processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        self.name = "chat_template" if isinstance(jinja, str) else "vicuna_v1"
        self.jinja: str = jinja if isinstance(jinja, str) else vicuna_v1_chat_template()
        self.system_prompt = system_prompt

    def __call__(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        if self.system_prompt is not None:
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.jinja, tokenize=False, add_generation_prompt=add_generation_prompt
        )
