"""Conversation formats as Jinja chat templates (for tokenizers and processors): LLaVA's ``vicuna_v1`` and the plain
concatenation MemVP uses."""

from __future__ import annotations

import json

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

_TEMPLATE = r"""
{%- macro render(content) -%}
{%- if content is string -%}{{- content -}}
{%- else -%}{%- for part in content -%}
{%- if part['type'] == 'image' -%}{{- @IMAGE@ + '\n' -}}
{%- elif part['type'] == 'text' -%}{{- part['text'] -}}
{%- else -%}{{- raise_exception('unsupported content part type: ' ~ part['type']) -}}
{%- endif -%}{%- endfor -%}{%- endif -%}
{%- endmacro -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{{- render(messages[0]['content']) + ' ' -}}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{{- @SYSTEM@ + ' ' -}}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- if message['role'] == 'user' -%}
{{- 'USER: ' + render(message['content']) + ' ' -}}
{%- elif message['role'] == 'assistant' -%}
{{- 'ASSISTANT: ' -}}{%- generation -%}{{- render(message['content']) + '</s>' -}}{%- endgeneration -%}
{%- else -%}
{{- raise_exception('vicuna_v1: expected a leading system message, then user/assistant; got ' ~ message['role']) -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}
"""


def vicuna_v1_chat_template(image_token: str = "<image>", system: str = VICUNA_V1_SYSTEM) -> str:
    """Jinja template rendering ``{system} USER: {u1} ASSISTANT: {a1}</s>USER: {u2} ASSISTANT: {a2}</s>``.

    A leading ``system`` message replaces ``system``. ``content`` may be a string or a list of ``{"type": "image"}`` /
    ``{"type": "text", "text": ...}`` parts; an image part renders as ``{image_token}\\n``. Assistant replies and their
    ``</s>`` sit in ``{% generation %}`` blocks (``return_assistant_tokens_mask=True``); ``add_generation_prompt=True``
    ends the prompt with ``ASSISTANT:`` (no trailing space). The template adds no BOS: the tokenizer's post-processor
    does, when the processor/tokenizer is called with ``add_special_tokens=True``.
    """
    # JSON string literals are valid Jinja string literals, so any text is quoted safely.
    return _TEMPLATE.strip().replace("@IMAGE@", json.dumps(image_token)).replace("@SYSTEM@", json.dumps(system))


_PLAIN_TEMPLATE = r"""
{%- for message in messages -%}
{%- if message['role'] == 'user' -%}
{{- message['content'] -}}
{%- elif message['role'] == 'assistant' -%}
{%- generation -%}{{- message['content'] + eos_token -}}{%- endgeneration -%}
{%- else -%}
{{- raise_exception('plain template: expected user/assistant messages; got ' ~ message['role']) -}}
{%- endif -%}
{%- endfor -%}
"""


def plain_chat_template() -> str:
    """No chat format (MemVP's): ``{user}{reply}{eos}`` per turn, the prompt text carrying its own markers, e.g.
    ``Question: …\nOptions: (A) …\nResponse:`` + ``The answer is B.`` + ``</s>``.

    The template adds no BOS: the tokenizer's post-processor does (MemVP encodes with ``bos=True``); the generation
    prompt adds nothing.
    """
    return _PLAIN_TEMPLATE.strip()
