"""``CaptionDataModule``: image–caption data (Karpathy split files or LAVIS annotations) for image–text alignment."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from lit_hyperet.data.errors import DataError
from lit_hyperet.data.resumable import ResumableDataLoader
from lit_hyperet.tasks.captions.annotations import (
    SPLIT_PLACEHOLDER,
    CaptionRecord,
    check_images,
    karpathy_split,
    read_karpathy,
    read_lavis_split,
)
from lit_hyperet.tasks.captions.dataset import CaptionDataset, collate_captions
from lit_hyperet.tasks.captions.sampling import OneCaptionPerImage
from lit_hyperet.user_errors import ConfigError

log = logging.getLogger(__name__)

ROLES = ("train", "val", "test")
STAGE_ROLES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
FORMATS = ("karpathy", "lavis")


class CaptionDataModule(L.LightningDataModule):
    """Images and their captions; training batches hold one caption per image, evaluation batches all of them.

    Batches: ``pixel_values`` float ``[B, 3, H, W]`` and ``image_ids`` ``list[str]``, with ``captions`` a
    ``list[str]`` in training (each image once per epoch, shuffled, one of its captions drawn uniformly each epoch,
    reproducible under ``seed_everything``) and a ``list[list[str]]`` in val/test (every caption of each image; every
    image once, in file order, not shuffled). See :mod:`lit_hyperet.tasks.captions.dataset`.

    Args:
        annotations: ``format: karpathy``: a Karpathy split file (``dataset_coco.json``, ``dataset_flickr30k.json``)
            holding every split. ``format: lavis``: the path of the LAVIS files with ``{split}`` for the split
            (``/data/coco/annotations/coco_karpathy_{split}.json``).
        image_root: the folder image paths are relative to (Karpathy: ``<image_root>/<filepath>/<filename>``; LAVIS:
            ``<image_root>/<image>``).
        format: ``"karpathy"`` or ``"lavis"`` (see :mod:`lit_hyperet.tasks.captions.annotations`).
        train_split / val_split / test_split: split names (``None`` = no such stage). Karpathy ``train`` includes
            ``restval``.
        batch_size: training batch size (images).
        eval_batch_size: val/test batch size (images).
        num_workers: DataLoader worker processes (0: load in the main process).
        max_samples: the first N images per role (``{"train": 64, "val": 32}``; roles train/val/test) or for every
            role (an int); ``None``: all.
        make_demo_if_missing: write the synthetic demo dataset when ``annotations`` is the demo's own
            (``outputs/caption_demo/dataset_demo.json``, :data:`~lit_hyperet.tasks.captions.demo.DEMO`) and missing.
            Any other missing file is an error naming the path: synthetic data never stands in for real data.
        processor: an object whose ``image_processor`` turns PIL images into ``pixel_values`` (e.g. a
            ``Blip2Processor``); the CLI links in the model's.
    """

    def __init__(
        self,
        annotations: str,
        image_root: str,
        format: Literal["karpathy", "lavis"] = "karpathy",
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        max_samples: dict[str, int] | int | None = None,
        make_demo_if_missing: bool = False,
        processor: Any = None,
    ) -> None:
        super().__init__()
        if format not in FORMATS:
            raise ConfigError(f"data.format must be 'karpathy' or 'lavis', got {format!r}")
        if format == "lavis" and SPLIT_PLACEHOLDER not in str(annotations):
            raise ConfigError(
                f"data.annotations: format 'lavis' needs a path with {SPLIT_PLACEHOLDER} where the split goes "
                f"(e.g. DIR/coco_karpathy_{SPLIT_PLACEHOLDER}.json), got {annotations!r}"
            )
        if format == "karpathy" and SPLIT_PLACEHOLDER in str(annotations):
            raise ConfigError(
                f"data.annotations: format 'karpathy' reads one file holding every split; a path with "
                f"{SPLIT_PLACEHOLDER} is for format 'lavis', got {annotations!r}"
            )
        if isinstance(max_samples, dict) and set(max_samples) - set(ROLES):
            raise ConfigError(f"data.max_samples keys must be among {', '.join(ROLES)}, got {', '.join(max_samples)}")
        self.annotations, self.image_root, self.format = Path(annotations), Path(image_root), format
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.max_samples, self.make_demo_if_missing = max_samples, make_demo_if_missing
        self.processor = processor
        self.datasets: dict[str, CaptionDataset] = {}
        self._absent: set[str] = set()  # roles without a split
        self._karpathy: dict[str, list[CaptionRecord]] | None = None

    def set_processor(self, processor: Any) -> None:
        """Use ``processor.image_processor`` for all datasets built from now on."""
        self.processor = processor
        self.datasets.clear()
        self._absent.clear()

    def prepare_data(self) -> None:
        """Write the demo dataset to the demo's own path when asked and missing; refuse a missing Karpathy file
        anywhere else with the path and what belongs there (LAVIS files are named by the reader)."""
        if self.format == "lavis" or self.annotations.exists():
            return
        from lit_hyperet.tasks.captions.demo import DEMO, make_caption_demo_data

        if self.make_demo_if_missing and self.annotations.resolve() == Path(DEMO).resolve():
            log.warning("%s is missing: writing the synthetic caption demo dataset there", self.annotations)
            make_caption_demo_data(self.annotations.parent)
            return
        raise DataError(
            f"annotations {self.annotations}: file not found (expected a Karpathy split file such as "
            f'dataset_coco.json: {{"images": [{{filepath, filename, imgid, split, sentences}}]}}); synthetic data: '
            f"python -m lit_hyperet make-caption-demo-data --out {self.annotations.parent}"
        )

    def load_records(self, role: str) -> list[CaptionRecord] | None:
        """The images of a role's split in file order, limited by ``max_samples`` (``None``: the role has no
        split)."""
        split = self.splits[role]
        if split is None:
            return None
        if self.format == "lavis":
            records = read_lavis_split(self.annotations, self.image_root, split)
        else:
            if self._karpathy is None:
                self._karpathy = read_karpathy(self.annotations, self.image_root)
            records = karpathy_split(self._karpathy, split, self.annotations)
        limit = self.max_samples.get(role) if isinstance(self.max_samples, dict) else self.max_samples
        return records if limit is None else records[:limit]

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of ``stage`` (``fit``/``validate``/``test``; ``None``: all), checking that every image
        file exists (creating the demo data first if asked and missing)."""
        self.prepare_data()
        image_processor = getattr(self.processor, "image_processor", None)
        if image_processor is None:
            raise RuntimeError(
                f"{type(self).__name__}.setup(): no processor with an image_processor. The CLI links the model's "
                "processor in; otherwise call set_processor(Blip2Processor.from_pretrained(model_dir)) first"
            )
        for role in ROLES if stage is None else STAGE_ROLES.get(stage, ()):
            if role in self.datasets or role in self._absent:
                continue
            records = self.load_records(role)
            if records is None:
                self._absent.add(role)
                continue
            check_images(records, str(self.splits[role]))
            self.datasets[role] = CaptionDataset(records, image_processor)
        self._karpathy = None  # the parsed file is not kept once the datasets hold their records

    def _loader(self, role: str) -> DataLoader | list:
        if role in self._absent:
            return []
        if role not in self.datasets:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for the {role} dataloader")
        dataset = self.datasets[role]
        if role == "train":  # training resumes inside an epoch
            sampler = OneCaptionPerImage(dataset.caption_counts)
            return ResumableDataLoader(
                dataset,
                batch_size=self.batch_size,
                sampler=sampler,
                num_workers=self.num_workers,
                collate_fn=collate_captions,
            )
        # Several processes: each image once in all (Lightning's default sampler pads by repeating images, and a
        # repeated image ties with itself in the retrieval ranks).
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        sampler = UnrepeatedDistributedSampler(dataset, shuffle=False) if distributed else None
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_captions,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches, one caption per image."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        """Batches in file order with every caption of each image (``[]`` when there is no val split)."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list:
        """Like :meth:`val_dataloader`, for the test split."""
        return self._loader("test")
