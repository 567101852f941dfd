"""Markdown tables from DataFrames."""

from __future__ import annotations

import pandas as pd

from lit_hyperet.tables import format_cells, markdown_table


def test_header_rule_and_rows_in_frame_order() -> None:
    frame = pd.DataFrame([["b", "2"], ["a", "1"]], columns=["name", "value"], index=[7, 3])
    assert markdown_table(frame) == "| name | value |\n|---|---|\n| b | 2 |\n| a | 1 |"


def test_formats_missing_values_and_pipes() -> None:
    frame = pd.DataFrame({"n": [1234, None], "x": [0.5, 2.0], "s": ["a|b", None]}, dtype=object)
    text = markdown_table(frame, formats={"n": ",", "x": lambda v: f"{100 * v:.1f}%"}, na_rep="—")
    assert text.splitlines()[2:] == ["| 1,234 | 50.0% | a\\|b |", "| — | 200.0% | — |"]


def test_no_rows() -> None:
    assert markdown_table(pd.DataFrame(columns=["a", "b"])) == "| a | b |\n|---|---|"


def test_format_cells_keeps_strings_and_duplicate_columns() -> None:
    frame = pd.DataFrame([[3, "3", None], [0.25, "n/a", 1]], columns=["v", "v", "w"], dtype=object)
    cells = format_cells(frame, formats={"v": ".2f", "w": lambda v: f"#{v}"}, na_rep="-")
    assert cells.columns.tolist() == ["v", "v", "w"]
    assert cells.values.tolist() == [["3.00", "3", "-"], ["0.25", "n/a", "#1"]]
