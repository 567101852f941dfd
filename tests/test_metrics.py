"""ScienceQAAccuracy: official categories (overlapping), topics, answer extraction, both protocols, DDP sync."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers.metric_ddp import score_rank

from lit_hyperet.metrics import ExactMatch
from lit_hyperet.tasks.scienceqa.metric import ScienceQAAccuracy
from lit_hyperet.tasks.scienceqa.rules import CATEGORIES, TOPICS, extract_answer, score_groups


def meta(answer: int, num_choices: int, subject: str, grade: int, topic: str, text: bool, image: bool, **extra):
    return {"answer": answer, "num_choices": num_choices, "subject": subject, "grade": f"grade{grade}",
            "topic": topic, "has_text": text, "has_image": image, **extra}  # fmt: skip


# Six problems covering every category; the flags overlap as in evaluate_acc.py (TXT and IMG both on P1 and P5).
PROBLEMS = [
    (meta(0, 3, "natural science", 3, "physics", True, True), "The answer is A."),  # right
    (meta(1, 2, "social science", 8, "geography", False, True), "A"),  # wrong letter
    (meta(2, 3, "language science", 12, "verbs", False, False), "C. run"),  # right
    (meta(1, 3, "natural science", 6, "biology", True, False), "The answer is E."),  # E beyond 3 choices: wrong
    (meta(0, 2, "social science", 7, "economics", True, True), "I think B or A"),  # no parse: wrong
    (meta(3, 4, "language science", 1, "not-a-topic", False, True), "D"),  # right
]
# Worked out by hand from the list above:
#   NAT {P1 ✓, P4 ✗} 1/2   SOC {P2 ✗, P5 ✗} 0/2   LAN {P3 ✓, P6 ✓} 2/2
#   TXT {P1 ✓, P4 ✗, P5 ✗} 1/3   IMG {P1 ✓, P2 ✗, P5 ✗, P6 ✓} 2/4   NO {P3 ✓} 1/1
#   G1-6 {P1 ✓ g3, P4 ✗ g6, P6 ✓ g1} 2/3   G7-12 {P2 ✗ g8, P3 ✓ g12, P5 ✗ g7} 1/3   Avg 3/6
# compute() reports percent (0-100), as logged and as scienceqa-score prints.
EXPECTED = {"NAT": 50.0, "SOC": 0.0, "LAN": 100.0, "TXT": 100 / 3, "IMG": 50.0, "NO": 100.0, "G1-6": 200 / 3,
            "G7-12": 100 / 3, "Avg": 50.0, "topic/physics": 100.0, "topic/geography": 0.0, "topic/verbs": 100.0,
            "topic/biology": 0.0, "topic/economics": 0.0}  # fmt: skip


def test_categories_overlap_and_topics_as_in_the_official_script() -> None:
    metric = ScienceQAAccuracy()
    metric.update([text for _, text in PROBLEMS[:4]], [m for m, _ in PROBLEMS[:4]])
    metric.update([text for _, text in PROBLEMS[4:]], [m for m, _ in PROBLEMS[4:]])
    result = {key: value.item() for key, value in metric.compute().items()}
    assert result.keys() == EXPECTED.keys()  # only the topics seen, and only official ones
    for key, value in EXPECTED.items():
        assert result[key] == pytest.approx(value), key
    assert metric.counts()["TXT"] == (1, 3) and metric.counts()["IMG"] == (2, 4)
    metric.reset()
    with pytest.warns(UserWarning, match="called before the ``update``"):
        assert all(math.isnan(metric.compute()[c].item()) for c in CATEGORIES)


def test_score_groups_of_single_problems() -> None:
    both = meta(0, 2, "natural science", 6, "physics", True, True)
    assert score_groups(both) == ["Avg", "NAT", "TXT", "IMG", "G1-6", "topic/physics"]
    neither = meta(0, 2, "language science", 7, "verbs", False, False)
    assert score_groups(neither) == ["Avg", "LAN", "NO", "G7-12", "topic/verbs"]
    assert len(TOPICS) == 26 and "phonological-awareness" in TOPICS


def test_empty_categories_are_nan_not_a_number_that_looks_like_accuracy() -> None:
    metric = ScienceQAAccuracy()
    m = meta(0, 2, "natural science", 2, "physics", False, True)
    metric.update(["A"], [m])
    result = metric.compute()
    assert result["NAT"].item() == 100.0 and result["IMG"].item() == 100.0
    for key in ("SOC", "LAN", "TXT", "NO", "G7-12"):
        assert math.isnan(result[key].item()), key


@pytest.mark.parametrize(
    ("text", "num_choices", "expected"),
    [
        ("The answer is B.", 3, 1),  # the official sentence
        ("Because of the map. The answer is C. ", 3, 2),
        ("The answer is B", 3, None),  # the official regex needs one more character after the letter
        ("The answer is A. The answer is B.", 3, None),  # two matches: FAILED in the official script
        ("B", 3, 1),  # bare letter (LLaVA)
        ("  D\n", 4, 3),  # stripped first
        ("C. run", 3, 2),  # "X. ..." (LLaVA)
        ("A. The answer is B.", 3, 0),  # LLaVA's order: "X. " is tried before the sentence
        ("The answer is E.", 3, None),  # letter beyond the choices: wrong, never a random guess
        ("E", 4, None),
        ("E", 5, 4),
        ("b", 3, None),
        ("B.", 3, None),
        ("Bananas are yellow.", 3, None),
        ("The statement is true.", 2, None),  # LLaVA's pid 7727 failure
        ("", 2, None),
    ],
)
def test_extract_answer_rules(text: str, num_choices: int, expected: int | None) -> None:
    assert extract_answer(text, num_choices) == expected


@pytest.mark.parametrize(
    ("continuation", "expected"), [(" B", 1), (" B.", 1), ("B", 1), (" Z", None), (" C", None), ("", None)]
)
def test_answer_prefix_continuations(continuation: str, expected: int | None) -> None:
    assert extract_answer(continuation, 2, answer_prefix="The answer is") == expected


def test_update_with_both_protocols_and_indices() -> None:
    m = meta(1, 2, "natural science", 2, "physics", False, True)
    prefixed = {**m, "answer_prefix": "The answer is"}
    metric = ScienceQAAccuracy()
    metric.update([" B", " B.", " A"], [prefixed] * 3)  # answer-prefix protocol: one greedy token
    assert metric.counts()["Avg"] == (2, 3)
    metric.update(["The answer is B.", "Sure. The answer is B.", " B."], [m] * 3)  # free generation
    assert metric.counts()["Avg"] == (4, 6)  # " B." alone parses only with the prefix
    metric.update_indices([1, None, -1, 0], [m] * 4)
    assert metric.counts()["Avg"] == (5, 10)
    with pytest.raises(ValueError, match="2 predictions for 1 meta"):
        metric.update(["A", "B"], [m])
    with pytest.raises(ValueError, match="lacks topic"):
        metric.update(["A"], [{k: v for k, v in m.items() if k != "topic"}])


def test_exact_match_normalises_whitespace() -> None:
    metric = ExactMatch()
    metric.update(["a  b\n", "c", "x"], [{"reference": "a b"}, {"reference": " c "}, {"reference": "y"}])
    assert metric.compute()["exact_match"].item() == pytest.approx(200 / 3)  # percent: 66.67
    metric.reset()
    with pytest.warns(UserWarning, match="called before the ``update``"):
        assert math.isnan(metric.compute()["exact_match"].item())


def test_syncs_across_two_gloo_processes(tmp_path: Path) -> None:
    shards = [
        ([text for _, text in PROBLEMS[:2]], [m for m, _ in PROBLEMS[:2]]),
        ([text for _, text in PROBLEMS[2:]], [m for m, _ in PROBLEMS[2:]]),
    ]
    # fork: the children inherit the imported modules (spawn would re-import torch/torchmetrics, several seconds)
    mp.start_processes(score_rank, args=(2, str(tmp_path), shards), nprocs=2, start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank in ranks:
        assert rank["compute"].keys() == EXPECTED.keys()
        for key, value in EXPECTED.items():
            assert rank["compute"][key] == pytest.approx(value), key
    assert [rank["local_avg"] for rank in ranks] == [[1, 2], [2, 4]]  # compute() restores each rank's own state


# ------------------------------------------------------------------------------ through the ScienceQA DataModule
def _letters(meta_list) -> list[str]:
    return ["ABCDE"[m["answer"]] for m in meta_list]


def test_datamodule_answer_prefix_protocol(tiny_model_dir: Path, demo_data_dir: Path) -> None:
    from transformers import AutoProcessor

    from lit_hyperet.data import ScienceQADataModule

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    dm = ScienceQADataModule(str(demo_data_dir), max_samples={"test": 12}, eval_batch_size=12)
    dm.set_processor(processor)
    dm.setup("test")
    assert (dm.eval_protocol, dm.eval_max_new_tokens) == ("answer_prefix", 1)
    batch = next(iter(dm.test_dataloader()))
    for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
        text = processor.tokenizer.decode(row[mask.bool()], skip_special_tokens=False)
        assert text.endswith(" ASSISTANT: The answer is")
    assert {m["answer_prefix"] for m in batch["meta"]} == {"The answer is"}
    metric = dm.build_metric()
    metric.update([f" {letter}" for letter in _letters(batch["meta"])], batch["meta"])
    assert metric.compute()["Avg"].item() == 100.0
    wrong = [" " + "ABCDE"[(m["answer"] + 1) % m["num_choices"]] for m in batch["meta"]]
    metric.reset()
    metric.update(wrong, batch["meta"])
    assert metric.compute()["Avg"].item() == 0.0


def test_datamodule_generate_protocol(tiny_model_dir: Path, demo_data_dir: Path) -> None:
    from transformers import AutoProcessor

    from lit_hyperet.data import ScienceQADataModule

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    dm = ScienceQADataModule(
        str(demo_data_dir), prompt_format="QCM-LEA", eval_protocol="generate", max_samples=12, eval_batch_size=12
    )
    dm.set_processor(processor)
    dm.setup("validate")
    assert dm.eval_max_new_tokens is None
    batch = next(iter(dm.val_dataloader()))
    for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
        assert processor.tokenizer.decode(row[mask.bool()], skip_special_tokens=False).endswith(" ASSISTANT:")
    assert {m["answer_prefix"] for m in batch["meta"]} == {""}
    for reference, letter in zip(batch["references"], _letters(batch["meta"]), strict=True):
        assert reference.endswith(f"The answer is {letter}.")
    metric = dm.build_metric()
    metric.update(batch["references"], batch["meta"])  # the gold LEA replies parse to the gold answers
    assert metric.compute()["Avg"].item() == 100.0
    assert torch.equal(metric.total, metric.correct)
