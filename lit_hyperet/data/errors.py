"""One error type for bad input data, and JSON readers whose errors name the file and the position."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lit_hyperet.user_errors import UserError


class DataError(UserError):
    """Bad input data. The message names the file, the record (pid or id) and the field where known."""


def where(path: str | Path, record: str | None = None, field: str | None = None) -> str:
    """``"file: pid 7: field 'answer'"``-style location prefix for error messages."""
    parts = [str(path)]
    if record is not None:
        parts.append(record)
    if field is not None:
        parts.append(f"field {field!r}")
    return ": ".join(parts)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; malformed JSON raises ``DataError`` with the line and column of the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def read_jsonl(path: str | Path) -> list[Any]:
    """Parse a JSON-lines file (blank lines allowed); a bad line raises ``DataError`` naming its line number."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: malformed JSON at line {lineno} column {exc.colno}: {exc.msg}") from None
    return records
