"""Bad input data gives a DataError naming the file, the pid/id and the field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers.scienceqa_files import raw_problem, sample_problems, sample_splits, write_parquet, write_raw
from transformers import AutoProcessor

from lit_hyperet.data import LlavaInstructDataModule, ScienceQADataModule
from lit_hyperet.data.errors import DataError, read_jsonl
from lit_hyperet.tasks.instruct.llava_json import read_llava_json
from lit_hyperet.tasks.scienceqa.problems import load_scienceqa, read_problems


def raises(match: str):
    return pytest.raises(DataError, match=re.escape(match))


# ------------------------------------------------------------------------------------------------ malformed JSON
def test_malformed_problems_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "problems.json"
    path.write_text('{\n "1": {"question": "x",,}\n}')  # the second comma is line 2, column 24
    with raises(f"{path}: malformed JSON at line 2 column 24: Expecting property name"):
        read_problems(path)
    with raises(f"{path}: malformed JSON at line 2 column 24"):
        load_scienceqa(tmp_path, "test")


def test_malformed_pid_splits_and_llava_json_and_jsonl(tmp_path: Path) -> None:
    root = write_raw(tmp_path / "sqa")
    (root / "pid_splits.json").write_text('{"test": ["4", "5"]')
    with raises(f"{root / 'pid_splits.json'}: malformed JSON at line 1 column 20"):
        load_scienceqa(root, "test")
    llava = tmp_path / "llava.json"
    llava.write_text('[{"id": "a", "conversations": []}\n{"id": "b"}]')
    with raises(f"{llava}: malformed JSON at line 2 column 1: Expecting ','"):
        read_llava_json(llava)
    lines = tmp_path / "answers.jsonl"
    lines.write_text('{"question_id": "1", "text": "A"}\n\n{"question_id": "2", "text": B}\n')
    with raises(f"{lines}: malformed JSON at line 3 column 30"):
        read_jsonl(lines)


# --------------------------------------------------------------------------------------------- problem fields
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"answer": 3}, "pid 2: field 'answer': index 3 out of range for 3 choices"),
        ({"answer": -1}, "pid 2: field 'answer': index -1 out of range for 3 choices"),
        ({"answer": "1"}, "pid 2: field 'answer': expected an integer index, got '1'"),
        ({"choices": ["a", "b", "c", "d", "e", "f"], "answer": 0},
         "pid 2: field 'choices': 6 choices but only 5 option letters (A, B, C, D, E)"),
        ({"choices": ["only"], "answer": 0}, "pid 2: field 'choices': need at least 2 choices, got 1"),
        ({"grade": "grade13"}, "pid 2: field 'grade': expected 'grade1' … 'grade12', got 'grade13'"),
        ({"hint": None}, "pid 2: field 'hint': expected a string, got None"),
        ({"image": 5}, "pid 2: field 'image': expected a file name or null, got 5"),
    ],
)  # fmt: skip
def test_bad_problem_field_names_file_pid_and_field(tmp_path: Path, overrides: dict, message: str) -> None:
    problems = sample_problems()
    problems["2"] = raw_problem("val", **overrides)
    root = write_raw(tmp_path, problems=problems)
    with raises(f"{root / 'problems.json'}: {message}"):
        load_scienceqa(root, "test")


def test_missing_problem_field_is_named(tmp_path: Path) -> None:
    problems = sample_problems()
    del problems["6"]["solution"]
    root = write_raw(tmp_path, problems=problems)
    with raises(f"{root / 'problems.json'}: pid 6: field 'solution': missing"):
        load_scienceqa(root, "test")


def test_pid_in_pid_splits_but_not_in_problems(tmp_path: Path) -> None:
    splits = sample_splits()
    splits["test"] = ["5", "99", "4"]
    root = write_raw(tmp_path, splits=splits)
    with raises(f"{root / 'pid_splits.json'}: split 'test': pid 99 is not in {root / 'problems.json'}"):
        load_scienceqa(root, "test")
    load_scienceqa(root, "val")  # other splits are unaffected


def test_pid_in_pid_splits_but_not_in_the_parquet_files(tmp_path: Path) -> None:
    root = write_parquet(tmp_path)
    splits = sample_splits()
    splits["minitest"] = ["6", "77"]
    (root / "pid_splits.json").write_text(json.dumps(splits))
    with raises(f"{root / 'pid_splits.json'}: split 'minitest': pid 77 is not in the parquet files"):
        load_scienceqa(root, "minitest", layout="parquet")


# ------------------------------------------------------------------------------------------------------ images
@pytest.fixture
def processor(tiny_model_dir: Path):
    return AutoProcessor.from_pretrained(tiny_model_dir)


def test_missing_image_file_is_reported_at_setup(tmp_path: Path, processor) -> None:
    root = write_raw(tmp_path)
    image = root / "images" / "test" / "4" / "image.png"
    image.unlink()
    dm = ScienceQADataModule(str(root), train_split=None, val_split=None, predict_split=None)
    dm.set_processor(processor)
    with raises(f"{image}: pid 4: field 'image': image file not found"):
        dm.setup("test")


def test_unreadable_image_names_file_pid_and_field(tmp_path: Path, processor) -> None:
    root = write_raw(tmp_path)
    image = root / "images" / "test" / "5" / "image.png"
    image.write_bytes(b"not a png at all")
    problem = load_scienceqa(root, "test")[0]
    with raises(f"{image}: pid 5: field 'image': cannot read image"):
        problem.load_image()
    dm = ScienceQADataModule(str(root), train_split=None, val_split=None, predict_split=None)
    dm.set_processor(processor)
    dm.setup("test")  # existence is checked at setup, decoding happens when the sample is loaded
    with raises(f"{image}: pid 5: field 'image': cannot read image"):
        dm.datasets["test"][0]


def test_unreadable_parquet_image_bytes(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    root = write_parquet(tmp_path)
    (root / "pid_splits.json").write_text(json.dumps(sample_splits()))
    path = next((root / "data").glob("test-*.parquet"))
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[1]["image"] = {"bytes": b"garbage", "path": None}  # row 1 of test = pid 4
    pq.write_table(table.from_pylist(rows, schema=table.schema), path)
    problem = load_scienceqa(root, "test", layout="parquet")[1]
    with raises(f"{path} (image bytes): pid 4: field 'image': cannot read image"):
        problem.load_image()


def test_parquet_image_stored_as_path_only_is_not_silently_dropped(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    root = write_parquet(tmp_path)
    path = next((root / "data").glob("test-*.parquet"))
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[0]["image"] = {"bytes": None, "path": "5/image.png"}  # row 0 of test = pid 5 (an image problem)
    pq.write_table(table.from_pylist(rows, schema=table.schema), path)
    (root / "pid_splits.json").write_text(json.dumps(sample_splits()))
    with raises(f"{path}: pid 5: field 'image': the image is stored as a path ('5/image.png') without bytes"):
        load_scienceqa(root, "test", layout="parquet")


def test_missing_llava_image_names_file_id_and_field(tmp_path: Path, processor) -> None:
    path = tmp_path / "data.json"
    record = {"id": "abc", "image": "coco/1.jpg", "conversations": [{"from": "human", "value": "<image>\nHi"},
                                                                    {"from": "gpt", "value": "Hello"}]}  # fmt: skip
    path.write_text(json.dumps([record]))
    dm = LlavaInstructDataModule(train_path=str(path), image_folder=str(tmp_path / "imgs"))
    dm.set_processor(processor)
    with raises(f"{tmp_path / 'imgs' / 'coco' / '1.jpg'}: id abc: field 'image': image file not found"):
        dm.setup("fit")
    with raises(f"{path}: id abc: field 'image': the record has an image but no image_folder was given"):
        read_llava_json(path)


# ----------------------------------------------------------------------------------------------- conversations
def turns(*sources: str) -> list[dict[str, str]]:
    return [{"from": s, "value": f"text {i}"} for i, s in enumerate(sources)]


@pytest.mark.parametrize(
    ("conversations", "message"),
    [
        (turns("human", "human", "gpt", "gpt"), "turn 1 should be from 'gpt'"),
        (turns("gpt", "human"), "turn 0 should be from 'human'"),
        (turns("human", "gpt", "human"), "the last turn must be from 'gpt' (3 turns)"),
        (turns("human", "assistant"), "turn 1 should be from 'gpt' (turns must alternate human/gpt starting with "
                                      "human), got 'assistant'"),
        ([], "expected a non-empty list of turns"),
    ],
)  # fmt: skip
def test_conversation_not_alternating_human_gpt(tmp_path: Path, conversations: list, message: str) -> None:
    path = tmp_path / "data.json"
    ok = {"id": "ok1", "conversations": turns("human", "gpt")}
    path.write_text(json.dumps([ok, {"id": "bad7", "conversations": conversations}]))
    with raises(f"{path}: id bad7: field 'conversations': {message}"):
        read_llava_json(path)


def test_image_token_outside_the_first_turn_or_without_image(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    conv = turns("human", "gpt", "human", "gpt")
    conv[2]["value"] = "<image>\nagain"
    path.write_text(json.dumps([{"id": "m1", "image": "a.jpg", "conversations": conv}]))
    with raises(f"{path}: id m1: field 'conversations': <image> must appear once, in the first human turn"):
        read_llava_json(path, tmp_path)
    path.write_text(json.dumps([{"id": "t1", "conversations": [{"from": "human", "value": "<image> hi"},
                                                              {"from": "gpt", "value": "x"}]}]))  # fmt: skip
    with raises(f"{path}: id t1: field 'conversations': <image> in the text but the record has no image"):
        read_llava_json(path, tmp_path)


def test_record_without_id_is_named_by_index(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"id": "a", "conversations": turns("human", "gpt")}, {"conversations": []}]))
    with raises(f"{path}: record 1: field 'id': missing or not a string"):
        read_llava_json(path)


# ------------------------------------------------------------------------------------------ no synthetic fallback
def test_synthetic_data_fills_only_the_demos_own_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lit_hyperet.tasks.scienceqa.demo import DEMO_DATA_DIR

    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "scienceqa_typo"
    module = ScienceQADataModule(data_dir=str(elsewhere), make_demo_if_missing=True, demo_num_problems=20)
    with raises(f"data_dir {elsewhere}: no problems.json"):
        module.prepare_data()
    assert not elsewhere.exists()
    ScienceQADataModule(data_dir=DEMO_DATA_DIR, make_demo_if_missing=True, demo_num_problems=20).prepare_data()
    assert len(json.loads((tmp_path / DEMO_DATA_DIR / "problems.json").read_text())) == 20


def test_a_mistyped_data_dir_ends_the_run_with_one_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers.demo_cli import demo_args

    from lit_hyperet.__main__ import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    missing = tmp_path / "scienceqa_typo"
    assert main(["fit", *demo_args(tiny_model_dir, missing, tmp_path / "out"), "--trainer.max_steps", "1"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: data_dir {missing}: no problems.json") and "make-demo-data" in last
    assert not missing.exists()


def test_bad_data_ends_the_run_with_its_message_not_a_traceback(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers.demo_cli import demo_args

    from lit_hyperet.__main__ import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = tmp_path / "data"
    data.mkdir()
    (data / "problems.json").write_text('{\n "1": {"question": "x",,}\n}')
    assert main(["fit", *demo_args(tiny_model_dir, data, tmp_path / "out"), "--trainer.max_steps", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (  # an uncaught error would end with its type instead
        f"error: {data / 'problems.json'}: malformed JSON at line 2 column 24: Expecting property name enclosed in "
        "double quotes"
    )
