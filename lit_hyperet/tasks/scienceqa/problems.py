"""Reading ScienceQA: the raw layout (problems.json + pid_splits.json + images/) and the HF parquet layout.

Raw layout (lupantech/ScienceQA)::

    DIR/problems.json          {pid: problem}  (pids are strings)
    DIR/pid_splits.json        {"train": [pid, ...], "val": ..., "test": ..., "trainval", "minitrain", ...}
    DIR/captions.json          optional, {"captions": {pid: caption}} (also looked for in DIR/..)
    DIR/images/{split}/{pid}/image.png

Parquet layout (``derek-thomas/ScienceQA``): ``DIR/data/{train,validation,test}-*.parquet`` with the problem fields,
no pid and no split column and an image struct ``{bytes, path}``. Rows follow the ``pid_splits`` order, so pids are
recovered as ``pid_splits[split][row]`` when a pid_splits.json is found, else they are synthetic (``"test-17"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_hyperet.data.errors import DataError, read_json, where
from lit_hyperet.data.images import ImageRef
from lit_hyperet.tasks.scienceqa.rules import OPTION_LETTERS

BASE_SPLITS = ("train", "val", "test")
ALL_SPLITS = ("train", "val", "test", "trainval", "minitrain", "minival", "minitest")
PARQUET_SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
_GRADE = re.compile(r"grade(\d+)")

# field -> required?  (the 14 keys of problems.json; "split" is absent in parquet rows)
_STR_FIELDS = {
    "question": True,
    "hint": True,
    "task": False,
    "grade": True,
    "subject": True,
    "topic": True,
    "category": False,
    "skill": False,
    "lecture": True,
    "solution": True,
}


@dataclass
class ScienceQAProblem:
    """One ScienceQA problem with every field of problems.json plus its pid, caption and image location.

    ``image`` is the raw field (``"image.png"`` or ``None``); ``image_ref`` says where the pixels are (a file in the
    raw layout, bytes in the parquet layout). ``answer`` is a 0-based index into ``choices``.
    """

    pid: str
    question: str
    choices: list[str]
    answer: int
    hint: str
    image: str | None
    task: str
    grade: str
    subject: str
    topic: str
    category: str
    skill: str
    lecture: str
    solution: str
    split: str
    caption: str = ""
    image_ref: ImageRef | None = field(default=None, repr=False)

    @property
    def has_image(self) -> bool:
        """The official IMG flag: the problem has an image."""
        return bool(self.image)

    @property
    def has_text(self) -> bool:
        """The official TXT flag: the problem has a text context (non-empty hint), image or not."""
        return bool(self.hint)

    @property
    def grade_number(self) -> int:
        """``"grade7"`` -> 7."""
        return int(_GRADE.fullmatch(self.grade).group(1))

    @property
    def answer_letter(self) -> str:
        """The gold option letter (``"A"`` … ``"E"``)."""
        return OPTION_LETTERS[self.answer]

    def load_image(self):
        """The image as an RGB ``PIL.Image`` (``DataError`` naming file, pid and field when missing/unreadable)."""
        if self.image_ref is None:
            raise DataError(f"pid {self.pid}: field 'image': the problem has no image")
        return self.image_ref.open()

    def meta(self) -> dict[str, Any]:
        """Plain-typed per-sample facts ``ScienceQAAccuracy`` needs (answer, choice count, score categories)."""
        return {
            "pid": self.pid,
            "answer": self.answer,
            "num_choices": len(self.choices),
            "subject": self.subject,
            "grade": self.grade,
            "topic": self.topic,
            "has_text": self.has_text,
            "has_image": self.has_image,
        }


def parse_problem(pid: str, raw: Any, source: str | Path, split: str | None = None) -> ScienceQAProblem:
    """Validate one problems.json entry (types, answer range, at most 5 choices) and build the dataclass.

    ``split`` overrides the entry's ``split`` field (parquet rows have none). Errors name ``source``, pid and field.
    """
    rec = f"pid {pid}"
    if not isinstance(raw, dict):
        raise DataError(f"{where(source, rec)}: expected a JSON object, got {type(raw).__name__}")

    def text(name: str, required: bool) -> str:
        if name not in raw:
            if required:
                raise DataError(f"{where(source, rec, name)}: missing")
            return ""
        value = raw[name]
        if not isinstance(value, str):
            raise DataError(f"{where(source, rec, name)}: expected a string, got {value!r}")
        return value

    values = {name: text(name, required) for name, required in _STR_FIELDS.items()}
    choices = raw.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where(source, rec, 'choices')}: expected a list of strings, got {choices!r}")
    if len(choices) > len(OPTION_LETTERS):
        raise DataError(
            f"{where(source, rec, 'choices')}: {len(choices)} choices but only {len(OPTION_LETTERS)} option letters "
            f"({', '.join(OPTION_LETTERS)})"
        )
    if len(choices) < 2:
        raise DataError(f"{where(source, rec, 'choices')}: need at least 2 choices, got {len(choices)}")
    answer = raw.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise DataError(f"{where(source, rec, 'answer')}: expected an integer index, got {answer!r}")
    if not 0 <= answer < len(choices):
        raise DataError(f"{where(source, rec, 'answer')}: index {answer} out of range for {len(choices)} choices")
    if "image" not in raw:
        raise DataError(f"{where(source, rec, 'image')}: missing")
    image = raw["image"]
    if image is not None and not isinstance(image, str):
        raise DataError(f"{where(source, rec, 'image')}: expected a file name or null, got {image!r}")
    match = _GRADE.fullmatch(values["grade"])
    if match is None or not 1 <= int(match.group(1)) <= 12:
        raise DataError(f"{where(source, rec, 'grade')}: expected 'grade1' … 'grade12', got {values['grade']!r}")
    if split is None:
        split = text("split", True)
    return ScienceQAProblem(pid=pid, choices=list(choices), answer=answer, image=image or None, split=split, **values)


def read_problems(path: str | Path, require_split: bool = True) -> dict[str, ScienceQAProblem]:
    """Read and validate a problems.json (``{pid: problem}``). Opens no image.

    ``require_split=False`` accepts entries without a ``split`` field (their ``split`` is ``""``), for callers that
    take split membership from a pid_splits.json.
    """
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object {{pid: problem}}, got {type(data).__name__}")
    problems = {}
    for pid, raw in data.items():
        missing_split = not require_split and isinstance(raw, dict) and "split" not in raw
        problems[str(pid)] = parse_problem(str(pid), raw, path, split="" if missing_split else None)
    return problems


def read_pid_splits(path: str | Path) -> dict[str, list[str]]:
    """Read pid_splits.json (``{split: [pid, ...]}``); pids are returned as strings."""
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DataError(f"{path}: expected a JSON object {{split: [pid, ...]}}")
    return {str(name): [str(pid) for pid in pids] for name, pids in data.items()}


def read_captions(path: str | Path) -> dict[str, str]:
    """Read captions.json (``{"captions": {pid: caption}, ...}``)."""
    data = read_json(path)
    captions = data.get("captions") if isinstance(data, dict) else None
    if not isinstance(captions, dict):
        raise DataError(f"{where(path, field='captions')}: expected an object {{pid: caption}}")
    for pid, caption in captions.items():
        if not isinstance(caption, str):
            raise DataError(f"{where(path, f'pid {pid}', 'captions')}: expected a string, got {caption!r}")
    return {str(pid): caption for pid, caption in captions.items()}


def split_pids(splits: dict[str, list[str]], split: str, source: str | Path) -> list[str]:
    """The pids of ``split``; an unknown split name raises ``DataError`` listing the available ones."""
    if split not in splits:
        raise DataError(f"{source}: no split {split!r}; available: {', '.join(splits)}")
    return splits[split]


def _find_optional(data_dir: Path, name: str, explicit: str | Path | None) -> Path | None:
    if explicit is not None:
        return Path(explicit)
    for candidate in (data_dir / name, data_dir.parent / name):
        if candidate.is_file():
            return candidate
    return None


def load_scienceqa_raw(
    data_dir: str | Path,
    split: str,
    problems_path: str | Path | None = None,
    splits_path: str | Path | None = None,
    captions_path: str | Path | None = None,
) -> list[ScienceQAProblem]:
    """Problems of ``split`` in pid_splits order, from the raw layout, with image file references and captions.

    Without a pid_splits.json, ``train``/``val``/``test`` are selected by each problem's ``split`` field (in
    problems.json order). A pid listed in pid_splits but absent from problems.json raises ``DataError``.
    """
    data_dir = Path(data_dir)
    problems_path = Path(problems_path) if problems_path is not None else data_dir / "problems.json"
    problems = read_problems(problems_path)
    splits_file = _find_optional(data_dir, "pid_splits.json", splits_path)
    if splits_file is not None:
        pids = split_pids(read_pid_splits(splits_file), split, splits_file)
        for pid in pids:
            if pid not in problems:
                raise DataError(f"{splits_file}: split {split!r}: pid {pid} is not in {problems_path}")
    elif split in BASE_SPLITS:
        pids = [pid for pid, p in problems.items() if p.split == split]
    else:
        raise DataError(f"{data_dir}: split {split!r} needs a pid_splits.json (none found)")
    captions_file = _find_optional(data_dir, "captions.json", captions_path)
    captions = read_captions(captions_file) if captions_file is not None else {}
    selected = []
    for pid in pids:
        problem = problems[pid]
        problem.caption = captions.get(pid, "")
        if problem.image:
            path = data_dir / "images" / problem.split / pid / problem.image
            problem.image_ref = ImageRef(path=path, source=str(problems_path), record=f"pid {pid}")
        selected.append(problem)
    return selected


def parquet_files(data_dir: str | Path, base_split: str) -> list[Path]:
    """Parquet shards of a base split (``train``/``val``/``test``) under ``DIR/data/`` or ``DIR/``."""
    data_dir = Path(data_dir)
    name = PARQUET_SPLIT_NAMES[base_split]
    for folder in (data_dir / "data", data_dir):
        files = sorted(folder.glob(f"{name}-*.parquet"))
        if files:
            return files
    raise DataError(f"{data_dir}: no {name}-*.parquet file under {data_dir / 'data'} or {data_dir}")


def _read_parquet_split(
    data_dir: Path, base_split: str, pids: list[str] | None, splits_file: Path | None
) -> dict[str, ScienceQAProblem]:
    import pyarrow.parquet as pq  # lazy: only the parquet layout needs pyarrow

    problems: dict[str, ScienceQAProblem] = {}
    row = 0
    for path in parquet_files(data_dir, base_split):
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
            raise DataError(f"{path}: cannot read parquet: {exc}") from None
        for raw in rows:
            if pids is not None and row >= len(pids):
                raise DataError(f"{path}: more rows than the {len(pids)} pids of split {base_split!r} in {splits_file}")
            pid = pids[row] if pids is not None else f"{base_split}-{row}"
            image_struct = raw.pop("image", None)
            image_bytes = image_struct.get("bytes") if isinstance(image_struct, dict) else image_struct
            if image_bytes is not None and not isinstance(image_bytes, bytes):
                raise DataError(f"{where(path, f'pid {pid}', 'image')}: expected a {{bytes, path}} struct")
            if image_bytes is None and isinstance(image_struct, dict) and image_struct.get("path"):
                # a path-only struct would otherwise turn an image problem into a text-only one (IMG/NO scores)
                raise DataError(
                    f"{where(path, f'pid {pid}', 'image')}: the image is stored as a path ({image_struct['path']!r}) "
                    "without bytes; use a parquet with embedded image bytes (as derek-thomas/ScienceQA has)"
                )
            raw["image"] = "image.png" if image_bytes else None
            problem = parse_problem(pid, raw, path, split=base_split)
            if image_bytes:
                problem.image_ref = ImageRef(data=image_bytes, source=str(path), record=f"pid {pid}")
            problems[pid] = problem
            row += 1
    if pids is not None and row != len(pids):
        raise DataError(
            f"{data_dir}: split {base_split!r} has {row} parquet rows but {len(pids)} pids in {splits_file}"
        )
    return problems


def load_scienceqa_parquet(
    data_dir: str | Path,
    split: str,
    splits_path: str | Path | None = None,
    captions_path: str | Path | None = None,
) -> list[ScienceQAProblem]:
    """Problems of ``split`` from the HF parquet layout, images as in-memory bytes.

    ``split`` may be ``train``/``val``/``validation``/``test``, or — with a pid_splits.json — any of its splits
    (``trainval``, ``minival`` …), selected from the base splits by pid.
    """
    data_dir = Path(data_dir)
    split = "val" if split == "validation" else split
    splits_file = _find_optional(data_dir, "pid_splits.json", splits_path)
    splits = read_pid_splits(splits_file) if splits_file is not None else None
    if splits is None:
        if split not in BASE_SPLITS:
            raise DataError(f"{data_dir}: split {split!r} needs a pid_splits.json (none found)")
        selected = list(_read_parquet_split(data_dir, split, None, None).values())
    else:
        wanted = split_pids(splits, split, splits_file)
        wanted_set = set(wanted)
        problems: dict[str, ScienceQAProblem] = {}
        for base in BASE_SPLITS:
            if base in splits and wanted_set.intersection(splits[base]):
                problems.update(_read_parquet_split(data_dir, base, splits[base], splits_file))
        for pid in wanted:
            if pid not in problems:
                raise DataError(f"{splits_file}: split {split!r}: pid {pid} is not in the parquet files of {data_dir}")
        selected = [problems[pid] for pid in wanted]
    captions_file = _find_optional(data_dir, "captions.json", captions_path)
    if captions_file is not None:
        captions = read_captions(captions_file)
        for problem in selected:
            problem.caption = captions.get(problem.pid, "")
    return selected


def load_scienceqa(
    data_dir: str | Path,
    split: str,
    layout: str = "raw",
    splits_path: str | Path | None = None,
    captions_path: str | Path | None = None,
) -> list[ScienceQAProblem]:
    """Load ``split`` from either layout (``"raw"`` or ``"parquet"``)."""
    if layout == "raw":
        return load_scienceqa_raw(data_dir, split, splits_path=splits_path, captions_path=captions_path)
    if layout == "parquet":
        return load_scienceqa_parquet(data_dir, split, splits_path=splits_path, captions_path=captions_path)
    raise ValueError(f"unknown ScienceQA layout {layout!r}; expected 'raw' or 'parquet'")
