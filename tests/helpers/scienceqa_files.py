"""Hand-written ScienceQA files for the data tests: the exact problems.json schema, raw and parquet layouts."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

FIELDS = ("question", "choices", "answer", "hint", "image", "task", "grade", "subject", "topic", "category", "skill",
          "lecture", "solution", "split")  # fmt: skip
IMAGE_COLOURS = {"1": (200, 0, 0), "4": (0, 200, 0), "5": (0, 0, 200)}


def raw_problem(split: str, **overrides: Any) -> dict[str, Any]:
    """A problems.json entry with the 14 official keys in the official order."""
    problem = {
        "question": "Which of these is a mammal?",
        "choices": ["shark", "whale", "trout"],
        "answer": 1,
        "hint": "",
        "image": None,
        "task": "closed choice",
        "grade": "grade4",
        "subject": "natural science",
        "topic": "biology",
        "category": "Classification",
        "skill": "Identify mammals",
        "lecture": "Mammals have hair.\nThey feed their young milk.",
        "solution": "A whale is a mammal.",
        "split": split,
    }
    problem.update(overrides)
    assert tuple(problem) == FIELDS
    return problem


def sample_problems() -> dict[str, dict[str, Any]]:
    """Six problems: images for pids 1, 4, 5; hints for 2 and 5; all three subjects; 'true-or false' task."""
    return {
        "1": raw_problem("train", image="image.png", question="What colour is the square?",
                         choices=["red", "green", "blue"], answer=0, subject="natural science", topic="physics"),
        "2": raw_problem("val", hint="Ann has a dog.", question="What does Ann have?", choices=["a dog", "a cat"],
                         answer=0, subject="language science", topic="reading-comprehension", grade="grade1"),
        "3": raw_problem("train", task="true-or false", choices=["true", "false"], answer=1, grade="grade9"),
        "4": raw_problem("test", image="image.png", question="Which colour is shown?",
                         choices=["red", "green", "blue", "yellow"], answer=1, subject="social science",
                         topic="geography", grade="grade7", lecture="", solution=""),
        "5": raw_problem("test", image="image.png", hint="Look at the map.", question="Which colour is shown?",
                         choices=["red", "green", "blue", "yellow", "purple"], answer=2, grade="grade12"),
        "6": raw_problem("test", question="Which word is a verb?", choices=["run", "red"], answer=0,
                         subject="language science", topic="verbs", grade="grade3"),
    }  # fmt: skip


def sample_splits() -> dict[str, list[str]]:
    """pid_splits.json for :func:`sample_problems`; the test split is deliberately not in pid order."""
    return {
        "train": ["1", "3"],
        "val": ["2"],
        "test": ["5", "4", "6"],
        "trainval": ["1", "3", "2"],
        "minitrain": ["3"],
        "minival": ["2"],
        "minitest": ["6", "4"],
    }


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_raw(
    root: Path,
    problems: dict[str, dict[str, Any]] | None = None,
    splits: dict[str, list[str]] | None = None,
    captions: dict[str, str] | None = None,
) -> Path:
    """problems.json, pid_splits.json (unless ``splits`` is ``{}``), captions.json, images/{split}/{pid}/image.png."""
    problems = sample_problems() if problems is None else problems
    splits = sample_splits() if splits is None else splits
    root.mkdir(parents=True, exist_ok=True)
    (root / "problems.json").write_text(json.dumps(problems, indent=1))
    if splits:
        (root / "pid_splits.json").write_text(json.dumps(splits))
    if captions is not None:
        (root / "captions.json").write_text(json.dumps({"model": "hand-written", "captions": captions}))
    for pid, problem in problems.items():
        if isinstance(problem["image"], str):
            folder = root / "images" / problem["split"] / pid
            folder.mkdir(parents=True, exist_ok=True)
            (folder / problem["image"]).write_bytes(png_bytes(IMAGE_COLOURS.get(pid, (9, 9, 9))))
    return root


PARQUET_NAMES = {"train": "train-00000-of-00001-1028f23e353fbe3e.parquet",
                 "val": "validation-00000-of-00001-6c7328ff6c84284c.parquet",
                 "test": "test-00000-of-00001-f0e719df791966ff.parquet"}  # fmt: skip


def write_parquet(root: Path, problems: dict[str, dict[str, Any]] | None = None, splits=None) -> Path:
    """The derek-thomas/ScienceQA layout: data/{train,validation,test}-*.parquet, rows in pid_splits order, no pid
    and no split column, ``image`` a ``struct<bytes, path>`` (null without image), ``answer`` int8."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    problems = sample_problems() if problems is None else problems
    splits = sample_splits() if splits is None else splits
    schema = pa.schema(
        [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("question", pa.string()),
         ("choices", pa.list_(pa.string())), ("answer", pa.int8())]
        + [(name, pa.string()) for name in ("hint", "task", "grade", "subject", "topic", "category", "skill",
                                            "lecture", "solution")]
    )  # fmt: skip
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, name in PARQUET_NAMES.items():
        rows = []
        for pid in splits[split]:
            raw = dict(problems[pid])
            raw.pop("split")
            image = raw.pop("image")
            raw["image"] = {"bytes": png_bytes(IMAGE_COLOURS.get(pid, (9, 9, 9))), "path": None} if image else None
            rows.append(raw)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "data" / name)
    return root
