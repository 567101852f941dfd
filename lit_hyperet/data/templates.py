"""Rendering a conversation to text: the processor's/tokenizer's chat template, else LLaVA's vicuna_v1 in Python."""

from __future__ import annotations

from typing import Any

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TEMPLATES = ("auto", "vicuna_v1")


def render_vicuna_v1(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """LLaVA's ``conv_vicuna_v1`` (SeparatorStyle.TWO): ``{system} USER: {u} ASSISTANT: {a}</s>USER: …``.

    Written out because a tokenizer without a chat template has nothing to render it with. A leading ``system``
    message replaces the default system prompt; ``add_generation_prompt`` ends the text with ``ASSISTANT:``.
    """
    system = VICUNA_V1_SYSTEM
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    parts = [system + " "]
    for message in messages:
        if message["role"] == "user":
            parts.append(f"USER: {message['content']} ")
        elif message["role"] == "assistant":
            parts.append(f"ASSISTANT: {message['content']}</s>")
        else:
            raise ValueError(f"vicuna_v1 supports user/assistant turns after an optional system message, got {message}")
    if add_generation_prompt:
        parts.append("ASSISTANT:")
    return "".join(parts)


class ChatRenderer:
    """Callable ``(messages, add_generation_prompt) -> str`` for one processor (picklable for DataLoader workers).

    ``template="auto"`` uses the processor's chat template, else the tokenizer's, else :func:`render_vicuna_v1`;
    ``"vicuna_v1"`` always uses the Python vicuna_v1. ``system_prompt`` (optional) is sent as a leading system turn.
    """

    def __init__(self, processor: Any, template: str = "auto", system_prompt: str | None = None) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"unknown chat template {template!r}; expected one of {', '.join(TEMPLATES)}")
        self.tokenizer = getattr(processor, "tokenizer", processor)
        jinja = None
        if template == "auto":
            jinja = getattr(processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        self.jinja: str | None = jinja if isinstance(jinja, str) else None
        self.system_prompt = system_prompt
        self.name = "chat_template" if self.jinja else "vicuna_v1"

    def __call__(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        if self.system_prompt is not None:
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        if self.jinja is None:
            return render_vicuna_v1(messages, add_generation_prompt)
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.jinja, tokenize=False, add_generation_prompt=add_generation_prompt
        )
