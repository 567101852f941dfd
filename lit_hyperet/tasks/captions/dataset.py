"""Caption samples and batches: images processed in ``__getitem__`` (the DataLoader workers), captions as text.

Batches (the contract of the alignment LightningModule):

- training: ``pixel_values`` float ``[B, 3, H, W]``, ``captions`` ``list[str]`` (one caption per image, drawn by
  :class:`~lit_hyperet.tasks.captions.sampling.OneCaptionPerImage`), ``image_ids`` ``list[str]``;
- evaluation: ``pixel_values`` as above, ``captions`` ``list[list[str]]`` (every caption of each image, in file order),
  ``image_ids``, ``specificity`` ``list[list[int] | None]`` (each caption's level where the annotations have one).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from lit_hyperet.tasks.captions.annotations import CaptionRecord


class CaptionDataset(Dataset):
    """Images with their captions. ``dataset[i]`` gives every caption of image ``i`` (evaluation);
    ``dataset[(i, j)]`` gives its caption ``j`` only (training, as the sampler yields them).

    Items: ``pixel_values`` ``[3, H, W]`` float, ``captions`` (a ``str`` or a ``list[str]``), ``image_id``.

    Args:
        records: the images, in the order evaluation reports them.
        image_processor: turns a list of PIL images into ``{"pixel_values": [N, 3, H, W]}`` (a Hugging Face image
            processor, e.g. ``Blip2Processor.image_processor``).
    """

    def __init__(self, records: list[CaptionRecord], image_processor: Any) -> None:
        self.records, self.image_processor = records, image_processor

    def __len__(self) -> int:
        return len(self.records)

    @property
    def caption_counts(self) -> list[int]:
        """The number of captions of each image."""
        return [len(record.captions) for record in self.records]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, pick = key if isinstance(key, (tuple, list)) else (key, None)
        record = self.records[index]
        image = record.open_image()
        pixel_values = self.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        captions = list(record.captions) if pick is None else record.captions[pick]
        item = {"pixel_values": pixel_values[0].float(), "captions": captions, "image_id": record.image_id}
        if pick is None:
            item["specificity"] = None if record.specificity is None else list(record.specificity)
        return item


def collate_captions(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the images; captions, image ids (and in evaluation the captions' specificity) stay lists, in sample
    order."""
    batch = {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "captions": [item["captions"] for item in items],
        "image_ids": [item["image_id"] for item in items],
    }
    if items and "specificity" in items[0]:
        batch["specificity"] = [item["specificity"] for item in items]
    return batch
