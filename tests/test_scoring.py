"""``scienceqa-score`` against accuracies worked out by hand on a small hand-written problem set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lit_hyperet.tasks.scienceqa.scoring import main

KEYS = ["NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg", "count"]


def problem(split, subject, hint, image, grade, n_choices, answer, topic):
    return {"question": "Q?", "choices": [f"c{i}" for i in range(n_choices)], "answer": answer, "hint": hint,
            "image": image, "task": "closed choice", "grade": f"grade{grade}", "subject": subject, "topic": topic,
            "category": "Cat", "skill": "Skill", "lecture": "", "solution": "", "split": split}  # fmt: skip


NAT, SOC, LAN = "natural science", "social science", "language science"
PROBLEMS = {
    #                pid split    subject hint       image        grade choices answer topic
    "1": problem("test", NAT, "A hint.", "image.png", 2, 3, 0, "physics"),  # NAT TXT IMG G1-6
    "2": problem("test", NAT, "", "image.png", 9, 2, 1, "biology"),  # NAT IMG G7-12
    "3": problem("test", SOC, "Read.", None, 5, 4, 2, "geography"),  # SOC TXT G1-6
    "4": problem("test", SOC, "", None, 11, 2, 0, "economics"),  # SOC NO G7-12
    "5": problem("test", LAN, "", None, 1, 5, 4, "verbs"),  # LAN NO G1-6
    "6": problem("test", LAN, "Text.", "image.png", 7, 3, 1, "grammar"),  # LAN TXT IMG G7-12
    "7": problem("val", NAT, "", None, 3, 2, 0, "physics"),
    "8": problem("train", SOC, "", "image.png", 6, 2, 1, "geography"),
}
# Predictions for the test split: 1 right, 2 wrong letter, 3 right ("X. ..."), 4 letter C beyond 2 choices (wrong),
# 5 missing (wrong), 6 right. 7 (val) is right but outside the split and 99 is unknown: both ignored.
TEXTS = {"1": "The answer is A.", "2": "A", "3": "C. c2", "4": "The answer is C.", "6": "The answer is B.",
         "7": "The answer is A.", "99": "A"}  # fmt: skip
INDICES = {"1": 0, "2": 0, "3": 2, "4": -1, "6": 1, "7": 0, "99": 0}  # LLaVA's output-result: -1 = unparsed
# By hand, over the test split {1 ✓, 2 ✗, 3 ✓, 4 ✗, 5 ✗, 6 ✓}:
#   NAT {1✓ 2✗} 50.00   SOC {3✓ 4✗} 50.00   LAN {5✗ 6✓} 50.00   TXT {1✓ 3✓ 6✓} 100.00   IMG {1✓ 2✗ 6✓} 66.67
#   NO {4✗ 5✗} 0.00   G1-6 {1✓ 3✓ 5✗} 66.67   G7-12 {2✗ 4✗ 6✓} 33.33   Avg 3/6 50.00
EXPECTED_TEST = {"NAT": 50.0, "SOC": 50.0, "LAN": 50.0, "TXT": 100.0, "IMG": 66.67, "NO": 0.0, "G1-6": 66.67,
                 "G7-12": 33.33, "Avg": 50.0, "count": 6}  # fmt: skip
# minitest = {2 ✗, 5 ✗, 3 ✓}: NAT {2✗} 0, SOC {3✓} 100, LAN {5✗} 0, TXT {3✓} 100, IMG {2✗} 0, NO {5✗} 0,
#   G1-6 {3✓ 5✗} 50, G7-12 {2✗} 0, Avg 1/3 33.33
EXPECTED_MINITEST = {"NAT": 0.0, "SOC": 100.0, "LAN": 0.0, "TXT": 100.0, "IMG": 0.0, "NO": 0.0, "G1-6": 50.0,
                     "G7-12": 0.0, "Avg": 33.33, "count": 3}  # fmt: skip


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "problems.json").write_text(json.dumps(PROBLEMS, indent=1))  # no images/: none may be opened
    splits = {"train": ["8"], "val": ["7"], "test": ["1", "2", "3", "4", "5", "6"], "minitest": ["2", "5", "3"]}
    (tmp_path / "pid_splits.json").write_text(json.dumps(splits))
    (tmp_path / "texts.json").write_text(json.dumps(TEXTS))
    (tmp_path / "result.json").write_text(json.dumps({"acc": 50.0, "results": INDICES, "outputs": TEXTS}))
    lines = [{"question_id": pid, "prompt": "<image>\nQ?", "text": text, "answer_id": "x", "model_id": "m",
              "metadata": {}} for pid, text in TEXTS.items()]  # fmt: skip
    (tmp_path / "answers.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return tmp_path


@pytest.fixture(autouse=True)
def no_image_opening(monkeypatch: pytest.MonkeyPatch) -> None:
    import PIL.Image

    def refuse(*args, **kwargs):
        raise AssertionError("the scorer opened an image")

    monkeypatch.setattr(PIL.Image, "open", refuse)


def score(files: Path, predictions: str, *extra: str) -> dict:
    out = files / f"out-{predictions}.json"
    args = ["--problems", str(files / "problems.json"), "--predictions", str(files / predictions), "--json", str(out)]
    assert main([*args, *extra]) == 0
    result = json.loads(out.read_text())
    assert list(result) == KEYS
    return result


@pytest.mark.parametrize("predictions", ["texts.json", "result.json", "answers.jsonl"])
def test_hand_computed_accuracies_for_every_prediction_format(
    files: Path, predictions: str, capsys: pytest.CaptureFixture
) -> None:
    assert score(files, predictions) == EXPECTED_TEST
    captured = capsys.readouterr()
    assert "1 pids of split 'test' have no prediction (counted wrong): 5" in captured.err
    assert "ignored 2 predictions for pids outside split 'test'" in captured.err
    assert "Avg" in captured.out and "50.00  3/6" in captured.out and "66.67  2/3" in captured.out
    assert "topic/physics" in captured.out and "100.00  1/1" in captured.out  # pid 1; pid 7 (val) not counted


def test_split_membership_from_pid_splits(files: Path) -> None:
    assert score(files, "texts.json", "--splits", str(files / "pid_splits.json"), "--split", "minitest") == (
        EXPECTED_MINITEST
    )
    # pid_splits wins over the split field: here "test" is only pids 1 and 3, both right; empty groups are null.
    (files / "two.json").write_text(json.dumps({"test": ["1", "3"]}))
    assert score(files, "texts.json", "--splits", str(files / "two.json")) == {
        "NAT": 100.0, "SOC": 100.0, "LAN": None, "TXT": 100.0, "IMG": 100.0, "NO": None, "G1-6": 100.0,
        "G7-12": None, "Avg": 100.0, "count": 2,
    }  # fmt: skip


def test_split_field_used_without_pid_splits_and_val_split(files: Path) -> None:
    result = score(files, "texts.json", "--split", "val")
    assert result["count"] == 1 and result["Avg"] == 100.0 and result["NAT"] == 100.0 and result["SOC"] is None


def test_problems_without_split_field_work_with_pid_splits(files: Path) -> None:
    stripped = {pid: {k: v for k, v in p.items() if k != "split"} for pid, p in PROBLEMS.items()}
    (files / "problems.json").write_text(json.dumps(stripped))
    assert score(files, "answers.jsonl", "--splits", str(files / "pid_splits.json")) == EXPECTED_TEST


def test_answer_prefix_protocol_texts(files: Path) -> None:
    # One greedy token after "... ASSISTANT: The answer is", as the PredictionWriter stores it.
    (files / "cont.json").write_text(json.dumps({"1": " A.", "2": " B", "3": " C.", "4": " A", "5": " E", "6": " B."}))
    assert score(files, "cont.json", "--answer-prefix", "The answer is")["Avg"] == 100.0
    # Without the prefix " A." etc. do not parse (as in the metric): only 2, 4 and 5 are right.
    assert score(files, "cont.json")["Avg"] == 50.0


def test_everything_missing_is_all_wrong(files: Path, capsys: pytest.CaptureFixture) -> None:
    (files / "empty.json").write_text("{}")
    result = score(files, "empty.json")
    assert result["Avg"] == 0.0 and result["count"] == 6
    assert "6 pids of split 'test' have no prediction (counted wrong): 1, 2, 3, 4, 5, …" in capsys.readouterr().err


BAD_INPUTS = [
    # (file name, content, expected fragments of the one-line message; "{path}" is the file)
    ("p.json", '{"1": "A",}', ["{path}: malformed JSON at line 1 column 11"]),
    ("p.json", json.dumps({"results": {"1": 3}}), ["{path}: pid 1: field 'results': answer index 3 out of range for "
                                                  "3 choices"]),
    ("p.json", json.dumps({"results": {"2": -2}}), ["{path}: pid 2: field 'results': answer index -2 out of range"]),
    ("p.json", json.dumps({"results": {"1": "A"}}), ["{path}: pid 1: field 'results': expected a choice index"]),
    ("p.json", json.dumps({"1": "A", "2": 1}), ["{path}: pid 2: unknown prediction format"]),
    ("p.json", json.dumps("A B C"), ["{path}: unknown prediction format"]),
    ("p.json", json.dumps([1, 2]), ["{path}: record 1: field 'question_id': unknown prediction format"]),
    ("p.jsonl", '{"question_id": "3", "text": "A"}\n{"question_id": "4", "answer": "B"}\n',
     ["{path}: pid 4: field 'text': expected a string"]),
    ("p.jsonl", '{"question_id": "3", "text": "A"}\n{"question_id": "4",\n', ["{path}: malformed JSON at line 2"]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "fragments"), BAD_INPUTS)
def test_bad_predictions_exit_2_with_one_line(
    files: Path, capsys: pytest.CaptureFixture, name: str, content: str, fragments: list[str]
) -> None:
    path = files / name
    path.write_text(content)
    args = ["--problems", str(files / "problems.json"), "--predictions", str(path), "--json", str(files / "o.json")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("python -m lit_hyperet scienceqa-score: error: ")
    for fragment in fragments:
        assert fragment.format(path=path) in err
    assert not (files / "o.json").exists()


def test_predictions_of_another_split_fail_naming_their_split(files: Path, capsys: pytest.CaptureFixture) -> None:
    # texts.json is for the test split (pid 7 of val, 99 unknown): scoring it as "train" would print a table of zeros.
    base = ["--problems", str(files / "problems.json"), "--json", str(files / "o.json")]
    test_only = files / "test_only.json"
    test_only.write_text(json.dumps({pid: TEXTS[pid] for pid in ("1", "2", "3", "4", "6")}))
    assert main([*base, "--predictions", str(test_only), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err == (
        f"python -m lit_hyperet scienceqa-score: error: {test_only}: none of the 5 predictions is for a pid of split "
        f"'val'; according to the 'split' field of {files / 'problems.json'} their pids belong to split 'test' "
        "(5 pids): pass --split test to score them\n"
    )
    assert not (files / "o.json").exists()
    # pid_splits.json decides membership (a pid may be in several splits); pids in no split are counted apart
    mixed = files / "mixed.json"
    mixed.write_text(json.dumps({"2": "A", "3": "C", "8": "B", "99": "A"}))
    splits = ["--splits", str(files / "pid_splits.json")]
    assert main([*base, "--predictions", str(mixed), *splits, "--split", "val"]) == 2
    assert capsys.readouterr().err.endswith(
        f"none of the 4 predictions is for a pid of split 'val'; according to {files / 'pid_splits.json'} their pids "
        "belong to splits 'test' (2 pids), 'minitest' (2 pids), 'train' (1 pid), and 1 pid to no split: "
        "pass --split test (or --split minitest, --split train) to score them\n"
    )
    (files / "unknown.json").write_text(json.dumps({"99": "A"}))
    assert main([*base, "--predictions", str(files / "unknown.json")]) == 2
    assert "the only prediction is not for a pid of split 'test', nor of any split in the 'split' field of" in (
        capsys.readouterr().err
    )
    # the advice works; predictions only partly outside the split are still scored (the rest ignored, with a note)
    assert score(files, "test_only.json", "--split", "test")["Avg"] == 50.0
    assert score(files, "texts.json", "--split", "val")["Avg"] == 100.0
    assert "ignored 6 predictions for pids outside split 'val'" in capsys.readouterr().err


def test_bad_problems_and_splits(files: Path, capsys: pytest.CaptureFixture) -> None:
    problems = files / "problems.json"
    base = ["--problems", str(problems), "--predictions", str(files / "texts.json")]
    (files / "missing.json").write_text(json.dumps({"test": ["1", "42"]}))
    assert main([*base, "--splits", str(files / "missing.json")]) == 2
    assert f"{files / 'missing.json'}: split 'test': pid 42 is not in {problems}" in capsys.readouterr().err
    assert main([*base, "--split", "dev"]) == 2
    assert "no problem has split 'dev'; present: ['test', 'train', 'val']" in capsys.readouterr().err
    assert main([*base, "--splits", str(files / "pid_splits.json"), "--split", "dev"]) == 2
    assert "no split 'dev'; available: train, val, test, minitest" in capsys.readouterr().err
    broken = dict(PROBLEMS, **{"3": {**PROBLEMS["3"], "answer": 4}})
    problems.write_text(json.dumps(broken))
    assert main(base) == 2
    err = capsys.readouterr().err
    assert f"{problems}: pid 3: field 'answer': index 4 out of range for 4 choices" in err and err.count("\n") == 1
    assert main(["--problems", str(files / "nope.json"), "--predictions", str(files / "texts.json")]) == 2
    assert f"{files / 'nope.json'}: file not found" in capsys.readouterr().err


def test_command_line_through_the_dispatcher(files: Path) -> None:
    # The real entry point, in a fresh interpreter: the table on stdout, a one-line error without traceback.
    command = [sys.executable, "-m", "lit_hyperet", "scienceqa-score", "--problems", str(files / "problems.json")]
    ok = subprocess.run([*command, "--predictions", str(files / "answers.jsonl")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "IMG" in ok.stdout and "66.67  2/3" in ok.stdout
    code = (
        "import sys, lit_hyperet.tasks.scienceqa.scoring; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'lightning', 'torchmetrics')))"
    )
    light = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert light.stdout.strip() == "[]", light.stderr  # fast startup: no torch, transformers or Lightning
    (files / "bad.json").write_text('{"results": {"1": 0, "2": 7}}')
    bad = subprocess.run([*command, "--predictions", str(files / "bad.json")], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f"python -m lit_hyperet scienceqa-score: error: {files / 'bad.json'}: pid 2: field 'results': "
        "answer index 7 out of range for 2 choices (-1 means no answer)"
    ]
