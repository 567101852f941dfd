"""Stand-ins for the caption datamodule and the retrieval metric in alignment tests: synthetic shape images with
captions in the batch layout ``CaptionDataModule`` gives, and a minimal ``ImageTextRecall`` with its contract
(``update(image_embeds [B, Q, D], text_embeds [T, D], text_image [T])``, ``compute()`` in percent)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader
from torchmetrics import Metric

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("square", "circle", "triangle")
POSITIONS = ("left", "right")


def shape_image(colour: str, shape: str, position: str) -> Image.Image:
    image = Image.new("RGB", (32, 32), "white")
    draw = ImageDraw.Draw(image)
    x = 2 if position == "left" else 17
    box = (x, 8, x + 13, 21)
    if shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "circle":
        draw.ellipse(box, fill=colour)
    else:
        draw.polygon([(x, 21), (x + 13, 21), (x + 6, 8)], fill=colour)
    return image


def shape_items(n: int) -> list[tuple[str, str, str]]:
    return list(itertools.islice(itertools.cycle(itertools.product(COLOURS, SHAPES, POSITIONS)), n))


def captions_of(colour: str, shape: str, position: str) -> list[str]:
    """Four specificity levels, most specific first."""
    return [f"a {colour} {shape} on the {position}", f"a {colour} {shape}", f"a {colour} shape", "a shape"]


def train_batch(processor: Any, n: int = 8) -> dict[str, Any]:
    items = shape_items(n)
    pixels = processor.image_processor([shape_image(*item) for item in items], return_tensors="pt")["pixel_values"]
    return {
        "pixel_values": pixels,
        "captions": [captions_of(*item)[0] for item in items],
        "image_ids": [f"{i}" for i in range(n)],
    }


def eval_batch(processor: Any, n: int = 6) -> dict[str, Any]:
    items = shape_items(n)
    pixels = processor.image_processor([shape_image(*item) for item in items], return_tensors="pt")["pixel_values"]
    return {
        "pixel_values": pixels,
        "captions": [captions_of(*item)[:2] for item in items],
        "image_ids": [f"{i}" for i in range(n)],
        "specificity": [[3, 2] for _ in items],  # captions_of lists the most specific (level 3) first
    }


class ShapeCaptionData(LightningDataModule):
    """Train batches of ``num_images`` image–caption pairs (the same batch ``repeat`` times) and one evaluation batch
    with two captions per image; takes the model's processor as ``CaptionDataModule`` does."""

    def __init__(self, processor: Any = None, num_images: int = 8, repeat: int = 4) -> None:
        super().__init__()
        self.processor = processor
        self.num_images = num_images
        self.repeat = repeat

    def train_dataloader(self) -> DataLoader:
        return DataLoader([train_batch(self.processor, self.num_images)] * self.repeat, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([eval_batch(self.processor, 6)], batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class StandInImageTextRecall(Metric):
    """Image→text R@K: an image's best-ranked caption within the top K; text→image R@K: its image within the top K;
    percent. Ranks from ``scorer(image_embeds, text_embeds)`` (higher is better), all images at once."""

    full_state_update = False

    def __init__(
        self, scorer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None, chunk_size: int = 256
    ):
        super().__init__()
        self.scorer = scorer
        self.add_state("images", default=[], dist_reduce_fx="cat")
        self.add_state("texts", default=[], dist_reduce_fx="cat")
        self.add_state("text_image", default=[], dist_reduce_fx="cat")
        self.seen = 0
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def update(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, text_image: torch.Tensor) -> None:
        self.images.append(image_embeds)
        self.texts.append(text_embeds)
        self.text_image.append(text_image + self.seen)
        self.seen += image_embeds.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        images, texts = torch.cat(self.images), torch.cat(self.texts)
        owner = torch.cat(self.text_image)
        scores = self.scorer(images, texts)  # [N, T]
        self.calls.append((tuple(images.shape), tuple(texts.shape)))
        out = {}
        order_t = scores.argsort(dim=1, descending=True)
        order_i = scores.T.argsort(dim=1, descending=True)
        for k in (1, 5, 10):
            i2t = torch.tensor([bool((owner[order_t[i, :k]] == i).any()) for i in range(images.shape[0])])
            t2i = torch.tensor([bool((order_i[t, :k] == owner[t]).any()) for t in range(texts.shape[0])])
            out[f"i2t_R@{k}"] = i2t.float().mean() * 100
            out[f"t2i_R@{k}"] = t2i.float().mean() * 100
        out["r_mean"] = torch.stack(list(out.values())).mean()
        return out

    def reset(self) -> None:
        super().reset()
        self.seen = 0
