"""The HyperET and LoRA options at the end of ``fit --help`` (and validate/test/predict).

jsonargparse lists a ``class_path`` model's own options only under ``--model.help CLASS``, and not at all the fields
of the dataclasses inside it (``--model.init_args.hyperet.help`` is refused), so the two option groups researchers
change most would not appear anywhere in ``--help``; this module writes them out from the dataclasses themselves.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import textwrap
import typing
from typing import Any

from docstring_parser import parse as parse_docstring
from jsonargparse import DefaultHelpFormatter

#: (title, option prefix, dataclass import path) of the groups listed after the options.
GROUPS = (
    ("HyperET", "--model.init_args.hyperet", "lit_hyperet.hyperet_config:HyperETConfig"),
    ("LoRA", "--model.init_args.lora", "lit_hyperet.models.llava.build:LoraSettings"),
)


class EpilogHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's formatter, keeping the epilog's line breaks (the option lists below)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def _type_text(annotation: Any) -> str:
    choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()
    if choices:
        return " | ".join(map(str, choices))
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


@functools.cache
def options_text(width: int = 100) -> str:
    """One block per group: ``PREFIX.NAME  TYPE (default D)`` and the field's docstring line, wrapped."""
    import importlib

    blocks = []
    for title, prefix, target in GROUPS:
        module, name = target.split(":")
        cls = getattr(importlib.import_module(module), name)
        docs = {p.arg_name: " ".join((p.description or "").split()) for p in parse_docstring(cls.__doc__ or "").params}
        hints = typing.get_type_hints(cls)
        lines = [f"{title} options ({prefix}.NAME VALUE, or under that key in a config file):"]
        for field in dataclasses.fields(cls):
            default = _default(field)
            shown = "…" if isinstance(default, str) and len(default) > 40 else default
            lines.append(f"  {prefix}.{field.name}  {_type_text(hints[field.name])} (default {shown})")
            if docs.get(field.name):
                lines += textwrap.wrap(docs[field.name], width, initial_indent=" " * 6, subsequent_indent=" " * 6)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def add_options_epilog(parser: argparse.ArgumentParser) -> None:
    """Show :func:`options_text` at the end of ``parser``'s ``--help`` (a parser made with
    :class:`EpilogHelpFormatter` keeps its layout)."""
    parser.epilog = options_text()
