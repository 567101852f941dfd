"""Reading ScienceQA: the raw layout and the Hugging Face parquet layout, every field kept, pids and order right."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from helpers.scienceqa_files import FIELDS, IMAGE_COLOURS, sample_problems, sample_splits, write_parquet, write_raw

from lit_hyperet.data.errors import DataError
from lit_hyperet.tasks.scienceqa.problems import ALL_SPLITS, load_scienceqa, read_problems

CAPTIONS = {"1": "a red square", "4": "a green square", "5": "a blue square"}


def assert_fields_kept(problem, raw: dict, split: str) -> None:
    values = dataclasses.asdict(problem)
    for name in FIELDS:
        expected = split if name == "split" else raw[name]
        assert values[name] == expected, name
    assert type(problem.answer) is int


def test_raw_layout_follows_pid_splits_order_and_keeps_every_field(tmp_path: Path) -> None:
    root = write_raw(tmp_path / "sqa", captions=CAPTIONS)
    raw = sample_problems()
    problems = load_scienceqa(root, "test")
    assert [p.pid for p in problems] == ["5", "4", "6"]  # pid_splits order, not pid order
    for problem in problems:
        assert_fields_kept(problem, raw[problem.pid], "test")
        assert problem.caption == CAPTIONS.get(problem.pid, "")
    five, four, six = problems
    assert five.image_ref.path == root / "images" / "test" / "5" / "image.png"
    assert four.image_ref.path == root / "images" / "test" / "4" / "image.png"
    assert six.image is None and six.image_ref is None and not six.has_image
    assert five.load_image().getpixel((0, 0)) == IMAGE_COLOURS["5"]
    assert (five.has_text, five.has_image, four.has_text, four.has_image) == (True, True, False, True)
    assert (five.grade_number, five.answer_letter, five.meta()["num_choices"]) == (12, "C", 5)


@pytest.mark.parametrize("split", ALL_SPLITS)
def test_raw_layout_reads_every_split_of_pid_splits(tmp_path: Path, split: str) -> None:
    root = write_raw(tmp_path)
    assert [p.pid for p in load_scienceqa(root, split)] == sample_splits()[split]


def test_raw_layout_without_pid_splits_uses_the_split_field(tmp_path: Path) -> None:
    root = write_raw(tmp_path, splits={})
    assert [p.pid for p in load_scienceqa(root, "test")] == ["4", "5", "6"]  # problems.json order
    assert [p.pid for p in load_scienceqa(root, "train")] == ["1", "3"]
    with pytest.raises(DataError, match="'minitest' needs a pid_splits.json"):
        load_scienceqa(root, "minitest")


def test_captions_and_pid_splits_found_in_the_parent_like_the_official_tree(tmp_path: Path) -> None:
    # lupantech/ScienceQA: data/captions.json next to data/scienceqa/{problems.json, pid_splits.json, images/}
    root = write_raw(tmp_path / "data" / "scienceqa")
    (tmp_path / "data" / "captions.json").write_text(json.dumps({"captions": CAPTIONS}))
    problems = load_scienceqa(root, "minitest")
    assert [(p.pid, p.caption) for p in problems] == [("6", ""), ("4", "a green square")]


def test_unknown_split_lists_the_available_ones(tmp_path: Path) -> None:
    root = write_raw(tmp_path)
    with pytest.raises(DataError, match="no split 'dev'; available: train, val, test, trainval"):
        load_scienceqa(root, "dev")


def test_read_problems_opens_no_image_and_keeps_string_pids(tmp_path: Path) -> None:
    root = write_raw(tmp_path)
    for png in root.rglob("*.png"):
        png.unlink()
    problems = read_problems(root / "problems.json")
    assert list(problems) == ["1", "2", "3", "4", "5", "6"]
    assert problems["3"].task == "true-or false"  # the odd official spelling is kept, not validated away


def test_parquet_layout_recovers_pids_from_pid_splits_order(tmp_path: Path) -> None:
    root = write_parquet(tmp_path / "hf")
    (root / "pid_splits.json").write_text(json.dumps(sample_splits()))
    raw = sample_problems()
    problems = load_scienceqa(root, "test", layout="parquet")
    assert [p.pid for p in problems] == ["5", "4", "6"]
    for problem in problems:
        assert_fields_kept(problem, raw[problem.pid], "test")
    five, four, six = problems
    assert five.image == "image.png" and five.image_ref.path is None and five.image_ref.data is not None
    assert five.load_image().getpixel((3, 3)) == IMAGE_COLOURS["5"]
    assert four.load_image().getpixel((3, 3)) == IMAGE_COLOURS["4"]
    assert six.image is None and six.image_ref is None
    assert [p.pid for p in load_scienceqa(root, "validation", layout="parquet")] == ["2"]
    assert [p.pid for p in load_scienceqa(root, "minitest", layout="parquet")] == ["6", "4"]
    trainval = load_scienceqa(root, "trainval", layout="parquet")
    assert [(p.pid, p.split) for p in trainval] == [("1", "train"), ("3", "train"), ("2", "val")]
    assert trainval[0].load_image().getpixel((0, 0)) == IMAGE_COLOURS["1"]


def test_parquet_layout_without_pid_splits_uses_row_ids(tmp_path: Path) -> None:
    root = write_parquet(tmp_path)
    problems = load_scienceqa(root, "test", layout="parquet")
    assert [p.pid for p in problems] == ["test-0", "test-1", "test-2"]
    assert [p.question for p in problems] == [sample_problems()[pid]["question"] for pid in ("5", "4", "6")]
    with pytest.raises(DataError, match="needs a pid_splits.json"):
        load_scienceqa(root, "minitest", layout="parquet")


def test_parquet_rows_must_match_pid_splits(tmp_path: Path) -> None:
    root = write_parquet(tmp_path)
    splits = sample_splits()
    splits["test"] = ["5", "4"]  # the parquet has 3 test rows
    splits["minitest"] = ["4"]
    (root / "pid_splits.json").write_text(json.dumps(splits))
    with pytest.raises(DataError, match="more rows than the 2 pids of split 'test'"):
        load_scienceqa(root, "test", layout="parquet")


def test_unknown_layout_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown ScienceQA layout 'hf'"):
        load_scienceqa(tmp_path, "test", layout="hf")


def test_scienceqa_datamodule_reads_parquet_with_images(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoProcessor

    from lit_hyperet.data import ScienceQADataModule

    root = write_parquet(tmp_path)
    (root / "pid_splits.json").write_text(json.dumps(sample_splits()))
    dm = ScienceQADataModule(str(root), layout="parquet", prompt_format="CQM-A", eval_batch_size=3)
    dm.set_processor(AutoProcessor.from_pretrained(tiny_model_dir))
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["ids"] == ["5", "4", "6"]
    assert batch["pixel_values"].shape[0] == 2  # pids 5 and 4 have images, 6 has none
    assert [m["answer"] for m in batch["meta"]] == [2, 1, 0]
    assert batch["references"] == ["The answer is C.", "The answer is B.", "The answer is A."]
