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


def format_cells(
    frame: pd.DataFrame, formats: Mapping[Hashable, CellFormat] | None = None, na_rep: str = ""
) -> pd.DataFrame:
    """``frame``'s cells as strings: a cell is written with its column's entry in ``formats`` (a format spec or a
    function), strings stay as they are, anything else goes through ``str``; missing values (``None``, NaN, ``pd.NA``)
    are written as ``na_rep``."""
    formats = formats or {}
    columns = [[_writer(formats.get(c), na_rep)(v) for v in frame.iloc[:, i]] for i, c in enumerate(frame.columns)]
    return pd.DataFrame(dict(enumerate(columns)), index=frame.index, dtype=object).set_axis(frame.columns, axis=1)


def markdown_table(frame: pd.DataFrame, formats: Mapping[Hashable, CellFormat] | None = None, na_rep: str = "") -> str:
    """``frame`` as a Markdown table: a header row from its columns, a ``|---|`` rule, then one line per row in the
    frame's order (the index is left out), cells written by :func:`format_cells`. Pipes in cells and headers are
    escaped (``\\|``). No trailing newline."""
    columns = list(frame.columns)
    lines = [_line(str(column) for column in columns), "|" + "|".join("---" for _ in columns) + "|"]
    lines += [_line(row) for row in format_cells(frame, formats, na_rep).itertuples(index=False, name=None)]
    return "\n".join(lines)


def _writer(spec: CellFormat | None, na_rep: str) -> Callable[[Any], str]:
    def write(value: Any) -> str:
        if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
            return na_rep
        if spec is None or isinstance(value, str):
            return str(value)
        return spec(value) if callable(spec) else format(value, spec)

    return write


def _line(cells: Any) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
