"""Reading caption annotations: Karpathy split files and LAVIS annotation files, into one record per image.

Karpathy split files (``dataset_coco.json``, ``dataset_flickr30k.json``)::

    {"images": [{"filepath"?, "filename", "imgid", "split": "train"|"val"|"test"|"restval",
                 "sentences": [{"raw", ...}, ...]}, ...]}

One file holds every split; the image is ``<image_root>/<filepath>/<filename>`` (``<image_root>/<filename>`` without
``filepath``, as in Flickr30k). ``restval`` images count as ``train`` (the Karpathy convention: COCO's 30k rest of
val2014 is trained on). The image id is ``imgid``.

LAVIS annotations (``coco_karpathy_{train,val,test}.json``, ``flickr30k_{train,val,test}.json``), one file per split:
a list of ``{"image": relative path, "caption": str, "image_id"}`` (train: one entry per caption) or of
``{"image", "caption": [str, ...]}`` (val/test). Entries are grouped by ``image`` in order of first appearance; the
image is ``<image_root>/<image>`` and the image id is the ``image`` path (val/test entries carry no other id).

Captions are kept as written, stripped of surrounding whitespace; any text normalisation is the model's business.

Specificity (optional, Karpathy layout): a sentence may carry ``"specificity": k`` (an int, larger = more specific;
the caption demo writes its levels 0–3 there). When any sentence of an image has it, every sentence of that image
must; the radius analysis and the alignment module's test metrics read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from lit_hyperet.data.errors import DataError, read_json, where
from lit_hyperet.data.images import ImageRef

KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
SPLIT_PLACEHOLDER = "{split}"
#: Missing images named in the error, before "…".
SHOW_MISSING = 5


@dataclass(frozen=True)
class CaptionRecord:
    """One image and all its captions. ``source``, ``record`` and ``image_field`` only serve error messages: the
    annotation file, the record in it (``"imgid 4"``, ``"entry 12"``) and the field naming the image file."""

    image_id: str
    image_path: Path
    captions: tuple[str, ...]
    source: str = ""
    record: str = ""
    image_field: str = "image"
    #: Per caption, its ``specificity`` level (Karpathy ``sentences[k].specificity``); ``None``: the file has none.
    specificity: tuple[int, ...] | None = None

    def where(self, field: str | None = None) -> str:
        """``"file: imgid 4: field 'filename'"`` for error messages."""
        return where(self.source, self.record, field)

    def open_image(self) -> Image.Image:
        """The image as an RGB ``PIL.Image``; a missing or unreadable file raises ``DataError``."""
        return ImageRef(path=self.image_path, source=self.source, record=self.record).open()


def _captions(values: list[Any], path: Path, record: str, field: str, fields: list[str]) -> tuple[str, ...]:
    """Check ``values`` (named ``fields`` in errors) are non-empty strings; ``field`` is the list's own name."""
    if not values:
        raise DataError(f"{where(path, record, field)}: the image has no caption")
    for value, name in zip(values, fields, strict=True):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where(path, record, name)}: expected a non-empty string, got {value!r}")
    return tuple(value.strip() for value in values)


def _karpathy_record(raw: Any, index: int, path: Path, image_root: Path) -> tuple[str, CaptionRecord]:
    record = f"image {index}"
    if not isinstance(raw, dict):
        raise DataError(f"{where(path, record)}: expected a JSON object, got {type(raw).__name__}")
    if "imgid" not in raw:
        raise DataError(f"{where(path, record, 'imgid')}: missing")
    record = f"imgid {raw['imgid']}"
    for name in ("filename", "split", "sentences"):
        if name not in raw:
            raise DataError(f"{where(path, record, name)}: missing")
    filename, filepath, split = raw["filename"], raw.get("filepath", ""), raw["split"]
    for name, value in (("filename", filename), ("filepath", filepath)):
        if not isinstance(value, str):
            raise DataError(f"{where(path, record, name)}: expected a string, got {value!r}")
    if split not in KARPATHY_SPLITS:
        raise DataError(f"{where(path, record, 'split')}: expected one of {', '.join(KARPATHY_SPLITS)}, got {split!r}")
    sentences = raw["sentences"]
    if not isinstance(sentences, list):
        raise DataError(f"{where(path, record, 'sentences')}: expected a list, got {type(sentences).__name__}")
    texts = []
    for number, sentence in enumerate(sentences):
        if not isinstance(sentence, dict) or "raw" not in sentence:
            raise DataError(f"{where(path, record, f'sentences[{number}].raw')}: missing")
        texts.append(sentence["raw"])
    names = [f"sentences[{number}].raw" for number in range(len(texts))]
    captions = _captions(texts, path, record, "sentences", names)
    image = image_root / filepath / filename
    levels = _specificity(sentences, path, record)
    caption_record = CaptionRecord(str(raw["imgid"]), image, captions, str(path), record, "filename", levels)
    return KARPATHY_SPLITS[split], caption_record


def _specificity(sentences: list[dict[str, Any]], path: Path, record: str) -> tuple[int, ...] | None:
    """The sentences' ``specificity`` ints; ``None`` when none has one; a ``DataError`` when only some have one or a
    value is not an int."""
    if not any("specificity" in sentence for sentence in sentences):
        return None
    levels = []
    for number, sentence in enumerate(sentences):
        value = sentence.get("specificity")
        if not isinstance(value, int) or isinstance(value, bool):
            field = f"sentences[{number}].specificity"
            raise DataError(
                f"{where(path, record, field)}: expected an int (other sentences of the image have one), got {value!r}"
            )
        levels.append(value)
    return tuple(levels)


def read_karpathy(path: str | Path, image_root: str | Path) -> dict[str, list[CaptionRecord]]:
    """Every split of a Karpathy split file, ``{"train": [...], "val": [...], "test": [...]}`` in file order, with
    ``restval`` images in ``train``. Opens no image."""
    path, image_root = Path(path), Path(image_root)
    data = read_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(f"{where(path, field='images')}: expected an object with a list of images")
    splits: dict[str, list[CaptionRecord]] = {}
    for index, raw in enumerate(images):
        split, record = _karpathy_record(raw, index, path, image_root)
        splits.setdefault(split, []).append(record)
    return splits


def karpathy_split(splits: dict[str, list[CaptionRecord]], split: str, path: str | Path) -> list[CaptionRecord]:
    """The records of ``split``; an unknown split name raises ``DataError`` listing the file's splits."""
    if split not in splits:
        note = " (restval images are part of 'train', the Karpathy convention)" if split == "restval" else ""
        raise DataError(f"{path}: no split {split!r}{note}; available: {', '.join(sorted(splits)) or 'none'}")
    return splits[split]


def lavis_path(template: str | Path, split: str) -> Path:
    """The LAVIS annotation file of ``split``: ``template`` with ``{split}`` filled in."""
    return Path(str(template).replace(SPLIT_PLACEHOLDER, split))


def _lavis_splits(template: str | Path) -> list[str]:
    folder, name = Path(template).parent, Path(template).name
    if SPLIT_PLACEHOLDER not in name or not folder.is_dir():
        return []
    head, _, tail = name.partition(SPLIT_PLACEHOLDER)
    names = [p.name for p in folder.glob(f"{head}*{tail}")]
    return sorted(name[len(head) : len(name) - len(tail)] for name in names)


def read_lavis(path: str | Path, image_root: str | Path) -> list[CaptionRecord]:
    """One LAVIS annotation file as records, one per distinct ``image`` in order of first appearance. Opens no
    image."""
    path, image_root = Path(path), Path(image_root)
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of {{image, caption}} entries, got {type(data).__name__}")
    grouped: dict[str, list[str]] = {}
    first_entry: dict[str, int] = {}
    for index, raw in enumerate(data):
        record = f"entry {index}"
        if not isinstance(raw, dict):
            raise DataError(f"{where(path, record)}: expected a JSON object, got {type(raw).__name__}")
        for name in ("image", "caption"):
            if name not in raw:
                raise DataError(f"{where(path, record, name)}: missing")
        image, caption = raw["image"], raw["caption"]
        if not isinstance(image, str) or not image:
            raise DataError(f"{where(path, record, 'image')}: expected a relative image path, got {image!r}")
        if not isinstance(caption, (str, list)):
            raise DataError(
                f"{where(path, record, 'caption')}: expected a string or a list of strings, got {caption!r}"
            )
        if isinstance(caption, str):
            captions = _captions([caption], path, record, "caption", ["caption"])
        else:
            captions = _captions(caption, path, record, "caption", [f"caption[{i}]" for i in range(len(caption))])
        first_entry.setdefault(image, index)
        grouped.setdefault(image, []).extend(captions)
    return [
        CaptionRecord(image, image_root / image, tuple(captions), str(path), f"entry {first_entry[image]}", "image")
        for image, captions in grouped.items()
    ]


def read_lavis_split(template: str | Path, image_root: str | Path, split: str) -> list[CaptionRecord]:
    """The records of ``split`` from the LAVIS file ``template`` names (``…/coco_karpathy_{split}.json``); a split
    without a file raises ``DataError`` listing the splits that have one."""
    path = lavis_path(template, split)
    if not path.is_file():
        available = ", ".join(_lavis_splits(template)) or "none"
        raise DataError(f"{path}: no split {split!r}: file not found; splits with a file ({template}): {available}")
    return read_lavis(path, image_root)


def check_images(records: list[CaptionRecord], split: str) -> None:
    """Raise ``DataError`` when image files are missing: how many, and the first :data:`SHOW_MISSING` by file, record,
    field and path (no decoding; nothing is dropped)."""
    missing = [record for record in records if not record.image_path.is_file()]
    if not missing:
        return
    shown = "; ".join(f"{r.where(r.image_field)}: {r.image_path}" for r in missing[:SHOW_MISSING])
    more = "; …" if len(missing) > SHOW_MISSING else ""
    raise DataError(
        f"{missing[0].source}: {len(missing)} of {len(records)} images of split {split!r} not found: {shown}{more}"
    )
