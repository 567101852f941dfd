"""ScienceQA prompt formats: exact strings of the reference conversion, every IN×OUT format, AL/AE, bad formats."""

from __future__ import annotations

import pytest

from lit_hyperet.tasks.scienceqa.problems import ScienceQAProblem
from lit_hyperet.tasks.scienceqa.prompts import (
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    PROMPT_FORMATS,
    parse_format,
    render_prompt,
)


def make_problem(**overrides) -> ScienceQAProblem:
    fields = dict(
        pid="7",
        question="Which word rhymes with bed?",
        choices=["blue", "red", "green"],
        answer=1,
        hint="Read the poem.",
        image=None,
        task="closed choice",
        grade="grade2",
        subject="language science",
        topic="phonological-awareness",
        category="Rhyming",
        skill="Does the word rhyme?",
        lecture="Rhyming words end alike.\nThey sound the same.",
        solution="Bed and red rhyme.",
        split="test",
    )
    fields.update(overrides)
    return ScienceQAProblem(**fields)


OPTIONS = "(A) blue (B) red (C) green"


@pytest.mark.parametrize(
    ("fmt", "user", "reply"),
    [
        (
            "QCM-A",
            f"Which word rhymes with bed?\nContext: Read the poem.\nOptions: {OPTIONS}",
            "The answer is B.",
        ),
        (
            "CQM-A",
            f"Context: Read the poem.\nQuestion: Which word rhymes with bed?\nOptions: {OPTIONS}",
            "The answer is B.",
        ),
        (
            "QCM-LEA",
            f"Which word rhymes with bed?\nContext: Read the poem.\nOptions: {OPTIONS}",
            "Rhyming words end alike.\nThey sound the same. Bed and red rhyme. The answer is B.",
        ),
        (
            "QCML-A",
            f"Which word rhymes with bed?\nContext: Read the poem.\nOptions: {OPTIONS}\n"
            "BECAUSE: Rhyming words end alike.\nThey sound the same.",
            "The answer is B.",
        ),
        (
            "QCEM-ALE",
            f"Which word rhymes with bed?\nContext: Read the poem.\nBECAUSE: Bed and red rhyme.\nOptions: {OPTIONS}",
            "The answer is B. BECAUSE: Rhyming words end alike.\nThey sound the same. Bed and red rhyme.",
        ),
        (
            "QCM-ELA",
            f"Which word rhymes with bed?\nContext: Read the poem.\nOptions: {OPTIONS}",
            "Bed and red rhyme. Rhyming words end alike.\nThey sound the same. The answer is B.",
        ),
    ],
)
def test_exact_strings_match_llava_conversion(fmt: str, user: str, reply: str) -> None:
    # Hand-written from convert_sqa_to_llava.py: strip, drop a leading "Question: " / "Answer: ", real newlines.
    assert render_prompt(make_problem(), fmt) == (user, reply)


def test_empty_context_is_na_and_caption_is_appended() -> None:
    assert render_prompt(make_problem(hint=""), "CQM-A")[0].startswith("Context: N/A\nQuestion: ")
    captioned = make_problem(hint="", caption="A bed and a red ball.")
    assert render_prompt(captioned, "CQM-A", use_caption=True)[0].startswith("Context: A bed and a red ball.\n")
    assert render_prompt(captioned, "CQM-A", use_caption=False)[0].startswith("Context: N/A\n")
    both = make_problem(caption="A bed.")
    assert render_prompt(both, "CQM-A", use_caption=True)[0].startswith("Context: Read the poem. A bed.\n")


def test_empty_lecture_drops_trailing_because_and_double_spaces() -> None:
    problem = make_problem(lecture="")
    user, reply = render_prompt(problem, "QCML-LA")
    assert user == f"Which word rhymes with bed?\nContext: Read the poem.\nOptions: {OPTIONS}"
    assert reply == "The answer is B."
    assert render_prompt(problem, "QCM-AL")[1] == "The answer is B."


# Distinct markers so the order of the parts can be checked for every format without re-implementing it.
MARKED = dict(question="QQQ?", hint="CCC", choices=["aaa", "bbb"], answer=1, lecture="LLL", solution="EEE")
IN_MARKERS = {"Q": "QQQ?", "C": "CCC", "M": "(A) aaa (B) bbb", "L": "LLL", "E": "EEE"}
OUT_MARKERS = {"A": "The answer is B.", "L": "LLL", "E": "EEE"}


def _assert_order(text: str, letters: str, markers: dict[str, str]) -> None:
    positions = [text.find(markers[letter]) for letter in letters]
    assert -1 not in positions, (letters, text)
    assert positions == sorted(positions), (letters, text)
    for letter, marker in markers.items():
        if letter not in letters:
            assert marker not in text, (letters, text)


@pytest.mark.parametrize("fmt", PROMPT_FORMATS)
def test_every_format_renders_its_parts_in_order(fmt: str) -> None:
    in_fmt, out_fmt = fmt.split("-")
    user, reply = render_prompt(make_problem(**MARKED), fmt)
    _assert_order(user, in_fmt, IN_MARKERS)
    _assert_order(reply, out_fmt, OUT_MARKERS)
    assert user.startswith("Context: CCC\nQuestion: QQQ?" if in_fmt == "CQM" else "QQQ?\nContext: CCC\n")
    assert "Answer:" not in reply
    assert ("Question: " in user) == (in_fmt == "CQM")  # the leading "Question: " of QCM* inputs is removed
    assert reply.count("The answer is B.") == 1
    assert ("BECAUSE: " in reply) == (out_fmt[0] == "A" and len(out_fmt) > 1)


def test_al_ae_follow_letter_meaning_unless_reference_quirks() -> None:
    problem = make_problem(**MARKED)
    assert render_prompt(problem, "QCM-AL")[1] == "The answer is B. BECAUSE: LLL"
    assert render_prompt(problem, "QCM-AE")[1] == "The answer is B. BECAUSE: EEE"
    # The reference code's swap: its AL appends the solution, its AE the lecture.
    assert render_prompt(problem, "QCM-AL", reference_quirks=True)[1] == "The answer is B. BECAUSE: EEE"
    assert render_prompt(problem, "QCM-AE", reference_quirks=True)[1] == "The answer is B. BECAUSE: LLL"
    for fmt in PROMPT_FORMATS:
        if fmt.split("-")[1] not in ("AL", "AE"):
            assert render_prompt(problem, fmt, reference_quirks=True) == render_prompt(problem, fmt)


def test_format_lists_are_the_official_ones() -> None:
    assert INPUT_FORMATS == ("CQM", "QCM", "QCML", "QCME", "QCMLE", "QCLM", "QCEM", "QCLEM")
    assert OUTPUT_FORMATS == ("A", "AL", "AE", "ALE", "AEL", "LA", "EA", "LEA", "ELA")
    assert len(PROMPT_FORMATS) == 72


@pytest.mark.parametrize("bad", ["QCM-X", "QMC-A", "QCM", "qcm-a", "QCM-A-L", "", "QCM-LEPA"])
def test_unknown_format_lists_the_valid_ones(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown prompt format") as info:
        parse_format(bad)
    message = str(info.value)
    assert repr(bad) in message
    for name in INPUT_FORMATS + OUTPUT_FORMATS:
        assert name in message
    with pytest.raises(ValueError, match="unknown prompt format"):
        render_prompt(make_problem(), bad)


def test_datamodule_rejects_bad_format_and_answer_prefix_with_late_answer(tmp_path) -> None:
    from lit_hyperet.data import ScienceQADataModule

    with pytest.raises(ValueError, match="unknown prompt format"):
        ScienceQADataModule(str(tmp_path), prompt_format="QCM-B")
    with pytest.raises(ValueError, match="answer_prefix"):
        ScienceQADataModule(str(tmp_path), prompt_format="QCM-LEA", eval_protocol="answer_prefix")
    ScienceQADataModule(str(tmp_path), prompt_format="QCM-LEA", eval_protocol="generate")
