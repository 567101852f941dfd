"""The official ScienceQA score categories and answer extraction, in plain Python (no torch).

Shared by :class:`lit_hyperet.tasks.scienceqa.metric.ScienceQAAccuracy` and the ``scienceqa-score`` command, so both
parse and group exactly alike; kept free of torch/torchmetrics (which imports transformers) so the scorer starts fast.

Categories per problem (flags overlap exactly as in ScienceQA's ``tools/evaluate_acc.py``): NAT/SOC/LAN by
``subject``; TXT = non-empty hint (with or without image); IMG = has an image; NO = neither hint nor image; G1-6 /
G7-12 by the number in ``gradeN``; Avg = all; plus ``topic/<topic>`` for the 26 official topics.
"""

from __future__ import annotations

import re
from typing import Any

OPTION_LETTERS = ("A", "B", "C", "D", "E")
CATEGORIES = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg")
#: The 26 topics hard-coded in the official evaluate_acc.py, in its order.
TOPICS = (
    "punctuation", "literacy-in-science", "verbs", "pronouns", "civics", "culture", "word-study", "economics",
    "physics", "units-and-measurement", "science-and-engineering-practices", "reading-comprehension",
    "global-studies", "grammar", "figurative-language", "us-history", "writing-strategies", "world-history",
    "reference-skills", "biology", "earth-science", "phonological-awareness", "capitalization", "chemistry",
    "vocabulary", "geography",
)  # fmt: skip
GROUPS = CATEGORIES + tuple(f"topic/{t}" for t in TOPICS)
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
META_KEYS = ("answer", "num_choices", "subject", "grade", "topic", "has_text", "has_image")
GROUP_INDEX = {g: i for i, g in enumerate(GROUPS)}
_ANSWER_RE = re.compile(r"The answer is ([A-Z]).")  # the official pattern, unescaped "." included
_GRADE_RE = re.compile(r"grade(\d+)")


def grade_band(grade: Any) -> str | None:
    """ScienceQA's grade group of a ``gradeN`` value: ``G1-6``, ``G7-12``, or ``None`` for anything else."""
    match = _GRADE_RE.fullmatch(str(grade)) if grade is not None else None
    if match is None:
        return None
    number = int(match.group(1))
    return "G1-6" if 1 <= number <= 6 else "G7-12" if 7 <= number <= 12 else None


def score_groups(meta: dict[str, Any]) -> list[str]:
    """The groups a problem counts in, from its meta (``subject``, ``grade``, ``topic``, ``has_text``,
    ``has_image``)."""
    groups = ["Avg"]
    if meta["subject"] in SUBJECTS:
        groups.append(SUBJECTS[meta["subject"]])
    if meta["has_text"]:
        groups.append("TXT")
    if meta["has_image"]:
        groups.append("IMG")
    if not meta["has_text"] and not meta["has_image"]:
        groups.append("NO")
    band = grade_band(meta["grade"])
    if band is not None:
        groups.append(band)
    if f"topic/{meta['topic']}" in GROUP_INDEX:
        groups.append(f"topic/{meta['topic']}")
    return groups


def _parse_letter(text: str) -> str | None:
    # LLaVA's eval_science_qa.py, in its order: a bare letter; "X. ..."; then the official GPT-3 regex with exactly
    # one match (findall). Outputs are stripped first, as LLaVA's model_vqa_science.py and run_gpt3.py do.
    text = text.strip()
    if text in OPTION_LETTERS:
        return text
    if len(text) >= 3 and text[0] in OPTION_LETTERS and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_RE.findall(text)
    return found[0] if len(found) == 1 else None


def extract_answer(text: str, num_choices: int, answer_prefix: str = "") -> int | None:
    """The 0-based choice index a generated text names, or ``None`` (no parse, or a letter beyond the choices).

    Accepts ``"The answer is X."`` (exactly one match of the official regex), a bare letter ``"X"`` and ``"X. …"``.
    With the answer-prefix protocol pass the prefix the prompt ended with (``"The answer is"``): the continuation
    (``" B"``, one greedy token) is read as a bare letter, and ``answer_prefix + text`` is parsed when the text alone
    does not parse (``" B."`` → ``"The answer is B."``). Never guesses: unparsable means wrong.
    """
    letter = _parse_letter(text)
    if letter is None and answer_prefix:
        letter = _parse_letter(answer_prefix + text)
    if letter is None or letter not in OPTION_LETTERS[:num_choices]:
        return None
    return OPTION_LETTERS.index(letter)
