"""Tables for reports: a pandas DataFrame as a GitHub-flavoured Markdown table.

pandas' own ``DataFrame.to_markdown`` needs the optional ``tabulate`` package, which is not a dependency of this
project, so :func:`markdown_table` writes the (simple, unaligned) Markdown itself.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import pandas as pd

#: How a column's cells are written: a format spec for :func:`format` (``".2f"``, ``","``, ``"+,"``) or a function
#: ``value -> str``.
CellFormat = str | Callable[[Any], str]


def markdown_table(frame: pd.DataFrame, formats: Mapping[Hashable, CellFormat] | None = None, na_rep: str = "") -> str:
    """``frame`` as a Markdown table: a header row from its columns, a ``|---|`` rule, then one line per row in the
    frame's order (the index is left out). A cell is written with its column's entry in ``formats`` (a format spec or
    a function) and otherwise with ``str``, so cells that are already strings stay as they are; missing values
    (``None``, NaN, ``pd.NA``) are written as ``na_rep``. Pipes in cells and headers are escaped (``\\|``). No trailing
    newline."""
    formats = formats or {}
    columns = list(frame.columns)
    writers = [_writer(formats.get(column), na_rep) for column in columns]
    lines = [_line(str(column) for column in columns), "|" + "|".join("---" for _ in columns) + "|"]
    for values in frame.itertuples(index=False, name=None):
        lines.append(_line(write(value) for write, value in zip(writers, values, strict=True)))
    return "\n".join(lines)


def _writer(spec: CellFormat | None, na_rep: str) -> Callable[[Any], str]:
    def write(value: Any) -> str:
        if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
            return na_rep
        if spec is None:
            return str(value)
        return spec(value) if callable(spec) else format(value, spec)

    return write


def _line(cells: Any) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
