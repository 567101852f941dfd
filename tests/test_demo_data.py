"""``make-demo-data``: exact ScienceQA raw layout, determinism by seed, every score category, learnable answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lit_hyperet.tasks.scienceqa.demo import (
    COLOURS,
    MIN_PROBLEMS,
    POSITIONS,
    RHYMES,
    SHAPES,
    STORY_COLOURS,
    TIMES,
    main,
    make_demo_data as make,
)
from lit_hyperet.tasks.scienceqa.problems import load_scienceqa
from lit_hyperet.tasks.scienceqa.rules import CATEGORIES, score_groups

FIELDS = ["question", "choices", "answer", "hint", "image", "task", "grade", "subject", "topic", "category", "skill",
          "lecture", "solution", "split"]  # fmt: skip
CANONICAL = [list(COLOURS), list(POSITIONS), list(RHYMES), list(STORY_COLOURS), list(SHAPES), list(TIMES)]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    a, b, c = (make(tmp_path / name, num_problems=30, seed=seed) for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    assert tree(a) == tree(b)
    assert (a / "problems.json").read_bytes() != (c / "problems.json").read_bytes()


def test_exact_raw_layout(demo_data_dir: Path) -> None:
    problems = json.loads((demo_data_dir / "problems.json").read_text())
    splits = json.loads((demo_data_dir / "pid_splits.json").read_text())
    captions = json.loads((demo_data_dir / "captions.json").read_text())["captions"]
    assert list(problems) == [str(i) for i in range(1, 121)]
    assert list(splits) == ["train", "val", "test", "trainval", "minitrain", "minival", "minitest"]
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (72, 24, 24)
    assert splits["trainval"] == splits["train"] + splits["val"]
    for mini, full in (("minitrain", "train"), ("minival", "val"), ("minitest", "test")):
        assert splits[mini] and set(splits[mini]) <= set(splits[full])
    expected_files = {"problems.json", "pid_splits.json", "captions.json"}
    for pid, problem in problems.items():
        assert list(problem) == FIELDS
        assert pid in splits[problem["split"]]
        assert problem["image"] in ("image.png", None)
        assert 2 <= len(problem["choices"]) <= 5 and 0 <= problem["answer"] < len(problem["choices"])
        if problem["image"]:
            expected_files.add(f"images/{problem['split']}/{pid}/image.png")
    assert set(tree(demo_data_dir)) == expected_files
    assert set(captions) == {pid for pid, p in problems.items() if p["image"]}
    with Image.open(demo_data_dir / "images" / problems["1"]["split"] / "1" / "image.png") as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (64, 64))


@pytest.mark.parametrize("split", ["val", "test"])
def test_every_score_category_is_populated(demo_data_dir: Path, split: str) -> None:
    groups = [g for p in load_scienceqa(demo_data_dir, split) for g in score_groups(p.meta())]
    for category in CATEGORIES:
        assert groups.count(category) >= 2, category
    assert {len(p.choices) for p in load_scienceqa(demo_data_dir, split)} == {2, 3, 4, 5}


def test_smallest_dataset_still_populates_every_category(tmp_path: Path) -> None:
    root = make(tmp_path, num_problems=MIN_PROBLEMS, seed=1)
    for split in ("val", "test"):
        groups = {g for p in load_scienceqa(root, split) for g in score_groups(p.meta())}
        assert set(CATEGORIES) <= groups, split


def test_options_are_canonical_and_answers_follow_image_or_hint(demo_data_dir: Path) -> None:
    for problem in load_scienceqa(demo_data_dir, "trainval"):
        assert problem.choices in CANONICAL  # one fixed order per question type: a concept always has one letter
        answer = problem.choices[problem.answer]
        if problem.question == "What colour is the shape?":
            image = problem.load_image()
            assert image.getpixel((32, 32)) == COLOURS[answer]
        elif problem.question == "Is it day or night in the picture?":
            sky = problem.load_image().getpixel((2, 2))
            assert (sum(sky) > 300) == (answer == "day")
        elif problem.hint and problem.topic in ("economics", "reading-comprehension"):
            assert f" {answer} " in problem.hint  # "Mia has a blue kite."
        elif problem.image is None:
            assert problem.question.split()[-1].rstrip("?") in RHYMES[answer]


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--out", str(tmp_path / "d"), "--num-problems", "20", "--seed", "2"]) == 0
    assert "wrote 20 ScienceQA-format problems" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "d" / "problems.json").read_text())) == 20
    with pytest.raises(SystemExit) as info:
        main(["--out", str(tmp_path / "e"), "--num-problems", "5"])
    assert info.value.code == 2
    assert "num_problems must be at least 20" in capsys.readouterr().err
