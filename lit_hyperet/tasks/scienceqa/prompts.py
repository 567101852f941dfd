"""ScienceQA prompt formats ``"<IN>-<OUT>"`` exactly as the official ``base_prompt.py`` and LLaVA's conversion.

Letters: Q = question, C = context (hint, plus the caption with ``use_caption``; ``N/A`` when empty), M = options
(``(A) x (B) y``), L = lecture, E = explanation (the ``solution`` field), A = answer (``The answer is X.``).
Inputs: CQM, QCM, QCML, QCME, QCMLE, QCLM, QCEM, QCLEM. Outputs: A, AL, AE, ALE, AEL, LA, EA, LEA, ELA.

``render_prompt`` reproduces ``create_one_example_chatbot`` (LLaVA's ``convert_sqa_to_llava_base_prompt.py``) followed
by ``convert_sqa_to_llava.py``: lecture/solution keep real newlines, ``"  "`` becomes ``" "`` (one pass of
``str.replace``), both sides are stripped, a trailing empty ``BECAUSE:`` is removed, then — when the input starts with
``"Question: "`` / the output with ``"Answer: "`` — that marker is removed with ``str.replace`` (every occurrence, as
the reference does). The result is the human and gpt text of LLaVA's ``llava_{split}_{fmt}.json`` without ``<image>``.

**AL / AE.** The reference code swaps them: its ``AL`` appends the *solution* and its ``AE`` the *lecture*, while every
other format (ALE, AEL, LA, EA, LEA, ELA) uses L = lecture and E = explanation. We treat that as a bug: by default the
letters mean what they say (``AL`` → lecture, ``AE`` → solution), consistent with the other formats and the paper's
notation. Pass ``reference_quirks=True`` to reproduce the reference strings byte for byte, e.g. to compare with
numbers published for ``*-AL`` / ``*-AE`` runs of the official code. The two settings differ only for AL and AE.
"""

from __future__ import annotations

from lit_hyperet.tasks.scienceqa.problems import OPTION_LETTERS, ScienceQAProblem
from lit_hyperet.user_errors import ConfigError

INPUT_FORMATS = ("CQM", "QCM", "QCML", "QCME", "QCMLE", "QCLM", "QCEM", "QCLEM")
OUTPUT_FORMATS = ("A", "AL", "AE", "ALE", "AEL", "LA", "EA", "LEA", "ELA")
PROMPT_FORMATS = tuple(f"{i}-{o}" for i in INPUT_FORMATS for o in OUTPUT_FORMATS)
#: Output formats whose reply starts with the answer sentence (usable with the answer-prefix protocol).
ANSWER_FIRST_OUTPUTS = ("A", "AL", "AE", "ALE", "AEL")
ANSWER_PREFIX = "The answer is"
#: LLaVA-1.5's ``--single-pred-prompt`` suffix (appended to the user text).
SINGLE_PRED_PROMPT = "\nAnswer with the option's letter from the given choices directly."


def parse_format(prompt_format: str) -> tuple[str, str]:
    """Split ``"QCM-LEA"`` into ``("QCM", "LEA")``; an unknown format raises ``ConfigError`` listing the valid
    ones."""
    parts = prompt_format.split("-")
    if len(parts) != 2 or parts[0] not in INPUT_FORMATS or parts[1] not in OUTPUT_FORMATS:
        raise ConfigError(
            f"unknown prompt format {prompt_format!r}; expected '<IN>-<OUT>' with IN in {', '.join(INPUT_FORMATS)} "
            f"and OUT in {', '.join(OUTPUT_FORMATS)} (e.g. 'QCM-A', 'CQM-A', 'QCM-LEA')"
        )
    return parts[0], parts[1]


def context_text(problem: ScienceQAProblem, use_caption: bool = False) -> str:
    """Hint (plus caption with ``use_caption``) joined by a space and stripped; ``"N/A"`` when empty."""
    context = " ".join([problem.hint, problem.caption if use_caption else ""]).strip()
    return context or "N/A"


def choice_text(problem: ScienceQAProblem) -> str:
    """``"(A) x (B) y …"``."""
    return " ".join(f"({OPTION_LETTERS[i]}) {c}" for i, c in enumerate(problem.choices))


def _multiline(text: str) -> str:
    # base_prompt escapes newlines as "\\n" for GPT-3 and LLaVA's chatbot builder turns every "\\n" back into a real
    # newline (so a literal backslash-n in the source text becomes a newline too); reproduce both steps.
    return text.replace("\n", "\\n").replace("\\n", "\n")


def _input_text(fmt: str, question: str, context: str, choice: str, lecture: str, solution: str) -> str:
    return {
        "CQM": f"Context: {context}\nQuestion: {question}\nOptions: {choice}\n",
        "QCM": f"Question: {question}\nContext: {context}\nOptions: {choice}\n",
        "QCML": f"Question: {question}\nContext: {context}\nOptions: {choice}\nBECAUSE: {lecture}\n",
        "QCME": f"Question: {question}\nContext: {context}\nOptions: {choice}\nBECAUSE: {solution}\n",
        "QCMLE": f"Question: {question}\nContext: {context}\nOptions: {choice}\nBECAUSE: {lecture} {solution}\n",
        "QCLM": f"Question: {question}\nContext: {context}\nBECAUSE: {lecture}\nOptions: {choice}\n",
        "QCEM": f"Question: {question}\nContext: {context}\nBECAUSE: {solution}\nOptions: {choice}\n",
        "QCLEM": f"Question: {question}\nContext: {context}\nBECAUSE: {lecture} {solution}\nOptions: {choice}\n",
    }[fmt]


def _output_text(fmt: str, answer: str, lecture: str, solution: str, reference_quirks: bool) -> str:
    al, ae = (solution, lecture) if reference_quirks else (lecture, solution)
    return {
        "A": f"Answer: The answer is {answer}.",
        "AL": f"Answer: The answer is {answer}. BECAUSE: {al}",
        "AE": f"Answer: The answer is {answer}. BECAUSE: {ae}",
        "ALE": f"Answer: The answer is {answer}. BECAUSE: {lecture} {solution}",
        "AEL": f"Answer: The answer is {answer}. BECAUSE: {solution} {lecture}",
        "LA": f"Answer: {lecture} The answer is {answer}.",
        "EA": f"Answer: {solution} The answer is {answer}.",
        "LEA": f"Answer: {lecture} {solution} The answer is {answer}.",
        "ELA": f"Answer: {solution} {lecture} The answer is {answer}.",
    }[fmt]


def _clean(text: str) -> str:
    text = text.replace("  ", " ").strip()
    if text.endswith("BECAUSE:"):
        text = text.replace("BECAUSE:", "").strip()
    return text


def render_prompt(
    problem: ScienceQAProblem,
    prompt_format: str = "QCM-A",
    use_caption: bool = False,
    reference_quirks: bool = False,
) -> tuple[str, str]:
    """``(user_text, assistant_text)`` of a problem as in LLaVA's converted ScienceQA JSON (no ``<image>``).

    E.g. QCM-A → ``("{question}\\nContext: {context}\\nOptions: (A) … (B) …", "The answer is B.")``.
    """
    in_fmt, out_fmt = parse_format(prompt_format)
    lecture, solution = _multiline(problem.lecture), _multiline(problem.solution)
    context = context_text(problem, use_caption)
    user = _clean(_input_text(in_fmt, problem.question, context, choice_text(problem), lecture, solution))
    reply = _clean(_output_text(out_fmt, problem.answer_letter, lecture, solution, reference_quirks))
    if user.startswith("Question: "):
        user = user.replace("Question: ", "")
    if reply.startswith("Answer: "):
        reply = reply.replace("Answer: ", "")
    return user, reply


#: Prompt styles: LLaVA's converted JSON (:func:`render_prompt`) or MemVP's training examples
#: (:func:`render_memvp_prompt`).
PROMPT_STYLES = ("llava", "memvp")


def render_memvp_prompt(
    problem: ScienceQAProblem, prompt_format: str = "QCM-A", use_caption: bool = False
) -> tuple[str, str]:
    """``(prompt, reply)`` as MemVP's ``create_training_example`` builds them (``util/base_prompt.py``).

    The prompt keeps its ``Question: `` marker and ends with ``Response:``; the reply follows it directly, e.g.
    ``("Question: …\\nContext: …\\nOptions: (A) … (B) …\\nResponse:", "The answer is B.")``. Like MemVP: lecture and
    solution keep literal ``\\n`` sequences, AL / AE are swapped as in the reference code, ``"  "`` becomes ``" "``
    and both sides are stripped; a trailing empty ``BECAUSE:`` stays (MemVP's removal assigns to an unused name).
    """
    in_fmt, out_fmt = parse_format(prompt_format)
    lecture, solution = problem.lecture.replace("\n", "\\n"), problem.solution.replace("\n", "\\n")
    context = context_text(problem, use_caption)
    user = _input_text(in_fmt, problem.question, context, choice_text(problem), lecture, solution)
    prompt = ("\n" + user + "Response:").replace("  ", " ").strip()
    reply = _output_text(out_fmt, problem.answer_letter, lecture, solution, reference_quirks=True)
    return prompt, reply.removeprefix("Answer: ").replace("  ", " ").strip()
