"""``make-demo-data``: a small synthetic dataset in the exact ScienceQA raw layout, learnable in minutes on a CPU.

Problem kinds, cycled within each split so every score category is populated in val and test:

=========  ===========================  =======  =========================================================  =======
kind       subject / topic              context  the answer depends on                                      choices
=========  ===========================  =======  =========================================================  =======
colour     natural / physics            IMG(+TXT) colour of a big shape (every other one has a neutral hint)  5
position   social / geography           IMG      where a big dot sits on a "map"                            4
rhyme      language / phonological-aw.  NO       the question: which colour word rhymes with the cue word   4
story      social / economics or        TXT      the hint ("Mia has a blue kite.")                          3
           language / reading-compr.
shape      natural / physics            IMG      the shape drawn (circle, square, triangle)                 3
day_night  natural / earth-science      IMG      a bright or a dark sky                                     2
=========  ===========================  =======  =========================================================  =======

Every kind always shows its full option list in one canonical order (colours always ``(A) red (B) green (C) blue
(D) yellow (E) purple``), so an answer concept always maps to the same letter. Measured earlier: with canonical
options a LoRA + projector tiny model learns such tasks within ~100 steps of batch 16, while per-problem shuffled
options stay near chance for thousands of steps (and subsets of the canonical list, which move the letter, generalise
much more slowly). Chance is 1/2 … 1/5 per kind. Grades run from 1 to 12 and do not affect answers. Images are 64×64
PNGs of big, high-contrast objects (the tiny model sees 32×32 in 8×8 patches). Same seed → same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from lit_hyperet.user_errors import ConfigError

COLOURS = {"red": (220, 20, 20), "green": (20, 170, 20), "blue": (20, 40, 230), "yellow": (240, 220, 0),
           "purple": (140, 20, 160)}  # fmt: skip
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top", "bottom", "left", "right")
TIMES = ("day", "night")
STORY_COLOURS = ("red", "green", "blue")
RHYMES = {"red": ("bed", "head", "bread"), "green": ("seen", "bean", "queen"), "blue": ("glue", "shoe", "true"),
          "yellow": ("fellow", "mellow", "cello")}  # fmt: skip
NAMES = ("Mia", "Leo", "Ava", "Sam", "Zoe", "Ben")
THINGS = ("kite", "hat", "ball", "boat", "cup")
SIZE = 64
#: Where the demo config keeps its synthetic data; the only dir a datamodule may fill with it on first use.
DEMO_DATA_DIR = "outputs/demo_data"
SPLIT_KEYS = ("train", "val", "test", "trainval", "minitrain", "minival", "minitest")
MIN_PROBLEMS = 20

Problem = dict[str, Any]
Kind = Callable[[random.Random, int], tuple[Problem, "Image.Image | None", str]]


def _canvas(background: tuple[int, int, int] = (255, 255, 255)) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (SIZE, SIZE), background)
    return image, ImageDraw.Draw(image)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, fill: tuple[int, int, int], box: tuple[int, ...]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _big_box(rng: random.Random) -> tuple[int, int, int, int]:
    dx, dy = rng.randint(-4, 4), rng.randint(-4, 4)
    return (8 + dx, 8 + dy, 56 + dx, 56 + dy)


def _problem(question: str, choices: tuple[str, ...], answer: str, hint: str, subject: str, topic: str,
             category: str, skill: str, lecture: str, solution: str) -> Problem:  # fmt: skip
    return {
        "question": question,
        "choices": list(choices),
        "answer": choices.index(answer),
        "hint": hint,
        "subject": subject,
        "topic": topic,
        "category": category,
        "skill": skill,
        "lecture": lecture,
        "solution": solution,
    }


def _colour(rng: random.Random, k: int) -> tuple[Problem, Image.Image, str]:
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    image, draw = _canvas()
    _draw_shape(draw, shape, COLOURS[colour], _big_box(rng))
    problem = _problem(
        "What colour is the shape?", tuple(COLOURS), colour, "Look at the picture." if k % 2 else "",
        "natural science", "physics", "Colours", "Identify the colour of a shape",
        "Objects reflect light of some colours and absorb the rest.\nWe see the reflected colour.",
        f"The shape in the picture is {colour}.",
    )  # fmt: skip
    return problem, image, f"a {colour} {shape} on a white background"


def _position(rng: random.Random, k: int) -> tuple[Problem, Image.Image, str]:
    position = rng.choice(POSITIONS)
    centre = {"top": (32, 13), "bottom": (32, 51), "left": (13, 32), "right": (51, 32)}[position]
    image, draw = _canvas((200, 230, 255))
    draw.ellipse((centre[0] - 11, centre[1] - 11, centre[0] + 11, centre[1] + 11), fill=(0, 0, 0))
    problem = _problem(
        "Which part of the map is the city in?", POSITIONS, position, "", "social science", "geography", "Maps",
        "Read a map: find a place", "A map shows where places are. The city is drawn as a black dot.",
        f"The dot is in the {position} part of the map.",
    )  # fmt: skip
    return problem, image, f"a map with a black dot at the {position}"


def _rhyme(rng: random.Random, k: int) -> tuple[Problem, None, str]:
    colour = rng.choice(list(RHYMES))
    cue = rng.choice(RHYMES[colour])
    problem = _problem(
        f"Which word rhymes with {cue}?", tuple(RHYMES), colour, "", "language science", "phonological-awareness",
        "Rhyming", "Does the word rhyme?", "Rhyming words end with the same sound.",
        f"The words {cue} and {colour} rhyme.",
    )  # fmt: skip
    return problem, None, ""


def _story(rng: random.Random, k: int) -> tuple[Problem, None, str]:
    colour, name, thing = rng.choice(STORY_COLOURS), rng.choice(NAMES), rng.choice(THINGS)
    social = k % 2 == 0
    problem = _problem(
        f"What colour is {name}'s {thing}?", STORY_COLOURS, colour, f"{name} has a {colour} {thing}.",
        "social science" if social else "language science", "economics" if social else "reading-comprehension",
        "Goods" if social else "Read a text", "Read a short text", "",
        f"The text says that the {thing} is {colour}.",
    )  # fmt: skip
    return problem, None, ""


def _shape(rng: random.Random, k: int) -> tuple[Problem, Image.Image, str]:
    shape = rng.choice(SHAPES)
    image, draw = _canvas()
    _draw_shape(draw, shape, (0, 0, 0), _big_box(rng))
    problem = _problem(
        "Which shape is shown?", SHAPES, shape, "", "natural science", "physics", "Shapes", "Identify shapes",
        "A circle is round. A square has four equal sides. A triangle has three sides.",
        f"The picture shows a {shape}.",
    )  # fmt: skip
    return problem, image, f"a black {shape} on a white background"


def _day_night(rng: random.Random, k: int) -> tuple[Problem, Image.Image, str]:
    time = rng.choice(TIMES)
    image, draw = _canvas((135, 200, 250) if time == "day" else (10, 10, 50))
    x, y = rng.randint(14, 50), rng.randint(12, 24)
    draw.ellipse((x - 9, y - 9, x + 9, y + 9), fill=(255, 220, 0) if time == "day" else (230, 230, 230))
    draw.rectangle((0, 48, 63, 63), fill=(40, 140, 40) if time == "day" else (10, 40, 10))
    problem = _problem(
        "Is it day or night in the picture?", TIMES, time, "", "natural science", "earth-science", "Weather",
        "Tell day from night", "", f"The sky is {'bright' if time == 'day' else 'dark'}, so it is {time}.",
    )  # fmt: skip
    return problem, image, f"a {'bright' if time == 'day' else 'dark'} sky over a field"


#: Cycled within each split; the first four already cover NAT SOC LAN TXT IMG NO.
KINDS: tuple[Kind, ...] = (_colour, _position, _rhyme, _story, _shape, _day_night)


_SPLIT_PATTERN = ("train", "train", "train", "train", "train", "train", "val", "val", "test", "test")


def make_demo_data(out: str | Path, num_problems: int = 600, seed: int = 0) -> Path:
    """Write problems.json, pid_splits.json, captions.json and images/{split}/{pid}/image.png under ``out``.

    Splits are 60/20/20 (train/val/test, interleaved pids "1".."N") plus trainval and mini splits (every tenth
    train / fifth val and test problem, shuffled, as subsets like the real ones). Deterministic for a given ``seed``.
    Returns ``out``.
    """
    if num_problems < MIN_PROBLEMS:
        raise ConfigError(f"num_problems must be at least {MIN_PROBLEMS} (every category in val and test)")
    out = Path(out)
    rng = random.Random(seed)
    problems: dict[str, Problem] = {}
    captions: dict[str, str] = {}
    splits: dict[str, list[str]] = {key: [] for key in SPLIT_KEYS}
    position_in_split = {"train": 0, "val": 0, "test": 0}
    for index in range(num_problems):
        pid, split = str(index + 1), _SPLIT_PATTERN[index % len(_SPLIT_PATTERN)]
        k = position_in_split[split]
        position_in_split[split] += 1
        fields, image, caption = KINDS[k % len(KINDS)](rng, k // len(KINDS))
        grade = 1 + (k * 7) % 12  # alternates low/high grades within every kind
        problems[pid] = {
            "question": fields["question"],
            "choices": fields["choices"],
            "answer": fields["answer"],
            "hint": fields["hint"],
            "image": "image.png" if image is not None else None,
            "task": "closed choice",
            "grade": f"grade{grade}",
            "subject": fields["subject"],
            "topic": fields["topic"],
            "category": fields["category"],
            "skill": fields["skill"],
            "lecture": fields["lecture"],
            "solution": fields["solution"],
            "split": split,
        }
        splits[split].append(pid)
        if image is not None:
            folder = out / "images" / split / pid
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / "image.png", format="PNG")
            captions[pid] = caption
    splits["trainval"] = splits["train"] + splits["val"]
    for split in ("train", "val", "test"):
        mini = splits[split][:: 10 if split == "train" else 5]
        rng.shuffle(mini)
        splits[f"mini{split}"] = mini
    out.mkdir(parents=True, exist_ok=True)
    (out / "problems.json").write_text(json.dumps(problems, indent=1) + "\n", encoding="utf-8")
    (out / "pid_splits.json").write_text(json.dumps(splits) + "\n", encoding="utf-8")
    caption_file = {"model": "synthetic (lit_hyperet make-demo-data)", "captions": captions}
    (out / "captions.json").write_text(json.dumps(caption_file, indent=1) + "\n", encoding="utf-8")
    return out


def main(argv: list[str]) -> int:
    """``python -m lit_hyperet make-demo-data --out DIR [--num-problems N] [--seed S]``."""
    parser = argparse.ArgumentParser(prog="python -m lit_hyperet make-demo-data", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory to write the dataset to")
    parser.add_argument("--num-problems", type=int, default=600, help="number of problems (default: 600)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    try:
        out = make_demo_data(args.out, num_problems=args.num_problems, seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    splits = json.loads((out / "pid_splits.json").read_text())
    sizes = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    print(f"wrote {args.num_problems} ScienceQA-format problems to {out} ({sizes})")
    return 0
