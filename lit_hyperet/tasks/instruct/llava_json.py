"""Reading LLaVA instruction data: a JSON list of ``{"id", "image"?, "conversations": [{"from", "value"}, ...]}``.

Covers LLaVA-Instruct-150K (bare COCO file names), the v1.5 665K mix (``coco/train2017/…``-style sub-folders and
text-only ShareGPT records without ``image``), the 558K pre-training captions (single turn, read with
``template="plain"``) and LLaVA's converted ScienceQA files. Turns must alternate human/gpt, starting with human and
ending with gpt; ``<image>`` may appear once, in the first human turn, before or after the text: it is removed there
and the encoder puts it first (``"<image>\\n" + text``), as LLaVA's ``preprocess_multimodal`` does. An image record
without ``<image>`` in its text gets it in the same place. Anything else is a ``DataError`` naming file, id, field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lit_hyperet.data.conversation import Conversation
from lit_hyperet.data.errors import DataError, read_json, where
from lit_hyperet.data.images import ImageRef

ROLES = {"human": "user", "gpt": "assistant"}
IMAGE_TOKEN = "<image>"


def parse_record(record: Any, index: int, source: str, image_folder: Path | None, template: str) -> Conversation:
    """Validate one LLaVA record and turn it into a :class:`Conversation` (``template``: ``chat`` or ``plain``)."""
    if not isinstance(record, dict):
        raise DataError(f"{where(source, f'record {index}')}: expected a JSON object, got {type(record).__name__}")
    if not isinstance(record.get("id"), (str, int)) or isinstance(record.get("id"), bool):
        raise DataError(f"{where(source, f'record {index}', 'id')}: missing or not a string")
    rid = str(record["id"])
    rec = f"id {rid}"
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where(source, rec, 'conversations')}: expected a non-empty list of turns")
    messages: list[dict[str, str]] = []
    image_turns = []
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != expected or not isinstance(turn.get("value"), str):
            got = turn.get("from") if isinstance(turn, dict) else turn
            raise DataError(
                f"{where(source, rec, 'conversations')}: turn {i} should be from {expected!r} (turns must alternate "
                f"human/gpt starting with human), got {got!r}"
            )
        value = turn["value"]
        count = value.count(IMAGE_TOKEN)
        if count:
            image_turns += [i] * count
            value = value.replace(IMAGE_TOKEN, "").strip()
        messages.append({"role": ROLES[expected], "content": value})
    if len(turns) % 2:
        raise DataError(f"{where(source, rec, 'conversations')}: the last turn must be from 'gpt' ({len(turns)} turns)")
    image_name = record.get("image")
    if image_name is not None and (not isinstance(image_name, str) or not image_name):
        raise DataError(f"{where(source, rec, 'image')}: expected a relative file path, got {image_name!r}")
    if image_name is None and image_turns:
        raise DataError(f"{where(source, rec, 'conversations')}: {IMAGE_TOKEN} in the text but the record has no image")
    if image_turns and image_turns != [0]:
        raise DataError(
            f"{where(source, rec, 'conversations')}: {IMAGE_TOKEN} must appear once, in the first human turn "
            f"(found in turns {image_turns})"
        )
    image = None
    if image_name is not None:
        if image_folder is None:
            raise DataError(f"{where(source, rec, 'image')}: the record has an image but no image_folder was given")
        image = ImageRef(path=image_folder / image_name, source=source, record=rec)
    if template == "plain":
        if image is None or len(messages) != 2:
            raise DataError(
                f"{where(source, rec, 'conversations')}: the plain (pre-training) template needs an image and exactly "
                f"one human/gpt pair, got {len(messages)} turns{'' if image else ' and no image'}"
            )
    meta = {"id": rid, "reference": messages[-1]["content"], "has_image": image is not None}
    return Conversation(id=rid, messages=messages, image=image, template=template, meta=meta, source=source)


def read_llava_json(
    path: str | Path, image_folder: str | Path | None = None, template: str = "chat"
) -> list[Conversation]:
    """All records of a LLaVA JSON list as conversations (images are referenced, not opened)."""
    if template not in ("chat", "plain"):
        raise ValueError(f"template must be 'chat' or 'plain', got {template!r}")
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    folder = Path(image_folder) if image_folder is not None else None
    return [parse_record(record, i, str(path), folder, template) for i, record in enumerate(data)]
