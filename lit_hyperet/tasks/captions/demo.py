"""``make-caption-demo-data``: a synthetic caption dataset in the Karpathy layout, four captions per image.

Each image is a 32×32 RGB PNG with one shape — 4 colours × 3 shapes × 4 positions, 48 combinations — on a plain grey
background, moved by up to a pixel and with a little pixel noise. Each image has exactly four captions at four levels
of specificity, generic to specific (sentence ``k`` is level ``k``, written as its ``specificity``)::

    "a shape"   "a red shape"   "a red square"   "a red square on the left"

(positions read "on the left", "on the right", "at the top", "at the bottom"). Splits: val and test hold ``N // 10``
images each, but at least 48 (every combination once) while that leaves half of ``N`` for training; the rest is train.
Within each split the images go through all 48 combinations in turns, each turn in a random order, so val and test
hold every combination from ``N = 192`` on (the default 576 gives 462 / 57 / 57). Same seed → same bytes.

Layout: ``DIR/dataset_demo.json`` (``{"images": [{"filepath": "images", "filename", "imgid", "split", "sentids",
"sentences": [{"tokens", "raw", "imgid", "sentid", "specificity"}]}], "dataset": "demo"}``) and
``DIR/images/*.png``; read it with ``image_root: DIR``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lit_hyperet.user_errors import ConfigError

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 205, 30)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
CENTRES = {"left": (9, 16), "right": (22, 16), "top": (16, 9), "bottom": (16, 22)}
COMBINATIONS = tuple(itertools.product(COLOURS, SHAPES, POSITIONS))
SIZE, HALF, BACKGROUND, NOISE = 32, 6, (150, 150, 150), 10
FILE_NAME = "dataset_demo.json"
#: The demo config's annotation file: the only path a datamodule may fill with synthetic data on first use.
DEMO = f"outputs/caption_demo/{FILE_NAME}"
MIN_IMAGES = 4


def captions(colour: str, shape: str, position: str) -> list[str]:
    """The four captions of an image, generic to specific."""
    return ["a shape", f"a {colour} shape", f"a {colour} {shape}", f"a {colour} {shape} {POSITIONS[position]}"]


def split_sizes(num_images: int) -> dict[str, int]:
    """``{"train": …, "val": …, "test": …}`` for ``num_images`` (see the module)."""
    held_out = max(num_images // 10, min(len(COMBINATIONS), num_images // 4))
    return {"train": num_images - 2 * held_out, "val": held_out, "test": held_out}


def draw(colour: str, shape: str, position: str, rng: np.random.Generator) -> Image.Image:
    """One image: the shape at its position (± 1 px) on the grey background, plus uniform noise of ± NOISE."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    dx, dy = (int(v) for v in rng.integers(-1, 2, size=2))
    cx, cy = CENTRES[position][0] + dx, CENTRES[position][1] + dy
    box = (cx - HALF, cy - HALF, cx + HALF, cy + HALF)
    canvas, fill = ImageDraw.Draw(image), COLOURS[colour]
    if shape == "circle":
        canvas.ellipse(box, fill=fill)
    elif shape == "square":
        canvas.rectangle(box, fill=fill)
    else:
        canvas.polygon([(cx, cy - HALF), (cx + HALF, cy + HALF), (cx - HALF, cy + HALF)], fill=fill)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-NOISE, NOISE + 1, size=(SIZE, SIZE, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def _combinations(count: int, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    chosen: list[tuple[str, str, str]] = []
    while len(chosen) < count:
        chosen += [COMBINATIONS[i] for i in rng.permutation(len(COMBINATIONS))]
    return chosen[:count]


def make_caption_demo_data(out: str | Path, num_images: int = 576, seed: int = 0) -> Path:
    """Write ``dataset_demo.json`` and ``images/*.png`` under ``out`` (train images first, then val, then test);
    returns ``out``. Deterministic for a given ``seed``."""
    if num_images < MIN_IMAGES:
        raise ConfigError(f"num_images must be at least {MIN_IMAGES} (an image in every split)")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images: list[dict[str, Any]] = []
    for split, count in split_sizes(num_images).items():
        for colour, shape, position in _combinations(count, rng):
            imgid = len(images)
            filename = f"demo_{imgid:05d}.png"
            draw(colour, shape, position, rng).save(out / "images" / filename, format="PNG")
            texts = captions(colour, shape, position)
            sentids = [4 * imgid + level for level in range(len(texts))]
            images.append(
                {
                    "filepath": "images",
                    "filename": filename,
                    "imgid": imgid,
                    "split": split,
                    "sentids": sentids,
                    "sentences": [
                        {"tokens": text.split(), "raw": text, "imgid": imgid, "sentid": sentid, "specificity": level}
                        for level, (text, sentid) in enumerate(zip(texts, sentids, strict=True))
                    ],
                }
            )
    document = {"images": images, "dataset": "demo"}
    (out / FILE_NAME).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return out


def main(argv: list[str]) -> int:
    """``python -m lit_hyperet make-caption-demo-data --out DIR [--num-images N] [--seed S]``."""
    parser = argparse.ArgumentParser(
        prog="python -m lit_hyperet make-caption-demo-data", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", required=True, help="directory to write the dataset to")
    parser.add_argument("--num-images", type=int, default=576, help="number of images (default: 576)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    try:
        out = make_caption_demo_data(args.out, num_images=args.num_images, seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    sizes = ", ".join(f"{split} {count}" for split, count in split_sizes(args.num_images).items())
    print(f"wrote {args.num_images} captioned images in the Karpathy layout to {out / FILE_NAME} ({sizes})")
    return 0
