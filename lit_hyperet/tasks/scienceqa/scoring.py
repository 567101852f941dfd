"""``scienceqa-score``: the official ScienceQA category accuracies of a prediction file.

``python -m lit_hyperet scienceqa-score --problems problems.json --predictions FILE [--split test]
[--splits pid_splits.json] [--json OUT] [--answer-prefix TEXT]``

FILE is one of

* the official result file ``{"results": {pid: index}, ...}`` (``run_gpt3.py``; LLaVA's ``--output-result``, where
  ``-1`` marks an unparsed answer),
* ``{pid: generated text}`` (what :class:`lit_hyperet.callbacks.PredictionWriter` writes),
* LLaVA's answer file, JSON lines of ``{"question_id": pid, "text": generated text, ...}``.

Texts are parsed exactly as :class:`lit_hyperet.tasks.scienceqa.metric.ScienceQAAccuracy` does (:func:`extract_answer`;
a letter beyond the choices or no parse is wrong, never a random guess); pass ``--answer-prefix "The answer is"`` for
texts generated with the answer-prefix protocol, as the metric does. The split's pids come from ``--splits`` when given,
else from each problem's ``split`` field; ``count`` is the number of problems in the split. Pids of the split without a
prediction count as wrong (and are reported on stderr); predictions for other pids are ignored. Predictions none of
which is for a pid of the split (another split's file) are an error naming the splits their pids belong to. Bad input
ends with one line on stderr and exit status 2. Images are never opened. Torch-free, so it starts fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lit_hyperet.data.errors import DataError, read_json, read_jsonl, where
from lit_hyperet.tasks.scienceqa.problems import ScienceQAProblem, read_pid_splits, read_problems, split_pids
from lit_hyperet.tasks.scienceqa.rules import CATEGORIES, GROUPS, extract_answer, score_groups

PROG = "python -m lit_hyperet scienceqa-score"
#: Missing pids listed on stderr.
SHOW_MISSING = 5

Prediction = int | str  # a choice index (result files) or a generated text


def _records_to_predictions(records: list[Any], path: Path) -> dict[str, Prediction]:
    """LLaVA answer records (``question_id``, ``text``); a later record for the same pid wins, as in LLaVA."""
    predictions: dict[str, Prediction] = {}
    for i, record in enumerate(records):
        rec = f"record {i + 1}"
        if not isinstance(record, dict) or "question_id" not in record:
            raise DataError(
                f"{where(path, rec, 'question_id')}: unknown prediction format: expected LLaVA answer records "
                f"{{question_id, text}}, got {record!r:.60}"
            )
        pid = str(record["question_id"])
        if not isinstance(record.get("text"), str):
            raise DataError(f"{where(path, f'pid {pid}', 'text')}: expected a string, got {record.get('text')!r}")
        predictions[pid] = record["text"]
    return predictions


def _load_any(path: Path) -> Any:
    """The parsed JSON, or the list of records of a JSON-lines file (``*.jsonl``, or any name whose text is one)."""
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    try:
        return read_json(path)
    except DataError:
        try:  # LLaVA answer files are JSON lines whatever they are called: the first line alone parses
            first = next((line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()), "")
            is_jsonl = isinstance(json.loads(first), dict)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            is_jsonl = False
        if not is_jsonl:
            raise
        return read_jsonl(path)


def read_predictions(path: str | Path) -> dict[str, Prediction]:
    """``{pid: index or text}`` from any of the three accepted formats (see the module docstring)."""
    path = Path(path)
    data = _load_any(path)
    if isinstance(data, list):
        return _records_to_predictions(data, path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: unknown prediction format: expected a JSON object or JSON lines, got {data!r:.60}")
    if isinstance(data.get("results"), dict):
        predictions: dict[str, Prediction] = {}
        for pid, index in data["results"].items():
            if isinstance(index, bool) or not isinstance(index, int):
                raise DataError(f"{where(path, f'pid {pid}', 'results')}: expected a choice index, got {index!r}")
            predictions[str(pid)] = index
        return predictions
    for pid, text in data.items():
        if not isinstance(text, str):
            raise DataError(
                f"{where(path, f'pid {pid}')}: unknown prediction format: expected {{pid: generated text}}, "
                f'{{"results": {{pid: index}}}} or JSON lines with question_id/text, got the value {text!r:.60}'
            )
    return {str(pid): text for pid, text in data.items()}


def split_problems(
    problems: dict[str, ScienceQAProblem], split: str, problems_path: Path, splits_path: Path | None
) -> list[ScienceQAProblem]:
    """The problems of ``split``: from pid_splits.json when given (every pid must exist), else the ``split`` field."""
    if splits_path is not None:
        pids = split_pids(read_pid_splits(splits_path), split, splits_path)
        for pid in pids:
            if pid not in problems:
                raise DataError(f"{splits_path}: split {split!r}: pid {pid} is not in {problems_path}")
        return [problems[pid] for pid in dict.fromkeys(pids)]
    selected = [p for p in problems.values() if p.split == split]
    if not selected:
        present = sorted({p.split for p in problems.values()})
        raise DataError(f"{where(problems_path, field='split')}: no problem has split {split!r}; present: {present}")
    return selected


def prediction_splits(
    pids: Iterable[str], problems: dict[str, ScienceQAProblem], splits_path: Path | None
) -> tuple[dict[str, int], int]:
    """``({split: number of pids in it}, number of pids in no split)`` for ``pids``, the splits with the most pids
    first: from pid_splits.json when given (a pid may be in several of its splits), else each problem's ``split``
    field (a pid that is no problem is in no split)."""
    ordered_pids = list(dict.fromkeys(pids))
    wanted = set(ordered_pids)
    counts: dict[str, int] = {}
    placed: set[str] = set()
    if splits_path is not None:
        for name, members in read_pid_splits(splits_path).items():
            found = wanted.intersection(members)
            if found:
                counts[name] = len(found)
                placed |= found
    else:
        for pid in ordered_pids:
            name = problems[pid].split if pid in problems else ""
            if name:
                counts[name] = counts.get(name, 0) + 1
                placed.add(pid)
    ordered = dict(sorted(counts.items(), key=lambda item: -item[1]))  # stable: ties keep their order
    return ordered, len(wanted - placed)


def check_predictions_in_split(
    predictions: dict[str, Prediction],
    selected: list[ScienceQAProblem],
    split: str,
    problems: dict[str, ScienceQAProblem],
    predictions_path: Path,
    problems_path: Path,
    splits_path: Path | None,
) -> None:
    """A ``DataError`` when there are predictions and none is for a pid of ``split``: scoring them would print a
    table of zeros. The message names the splits the predictions' pids belong to and the ``--split`` to pass."""
    in_split = {p.pid for p in selected}
    if not predictions or any(pid in in_split for pid in predictions):
        return
    counts, unplaced = prediction_splits(predictions, problems, splits_path)
    source = splits_path if splits_path is not None else f"the 'split' field of {problems_path}"
    subject = f"none of the {len(predictions)} predictions is" if len(predictions) > 1 else "the only prediction is not"
    head = f"{predictions_path}: {subject} for a pid of split {split!r}"
    if not counts:
        also = " and --splits" if splits_path is not None else ""
        raise DataError(f"{head}, nor of any split in {source}: check that --problems{also} match the predictions")
    plural = "s" if len(counts) > 1 else ""
    named = ", ".join(f"{name!r} ({_pids(n)})" for name, n in counts.items())
    rest = f", and {_pids(unplaced)} to no split" if unplaced else ""
    first, *others = counts
    alternatives = f" (or {', '.join(f'--split {name}' for name in others)})" if others else ""
    raise DataError(
        f"{head}; according to {source} their pids belong to split{plural} {named}{rest}: "
        f"pass --split {first}{alternatives} to score them"
    )


def _pids(n: int) -> str:
    return f"{n} pid{'s' if n != 1 else ''}"


def score(
    problems: list[ScienceQAProblem], predictions: dict[str, Prediction], source: str | Path, answer_prefix: str = ""
) -> tuple[dict[str, tuple[int, int]], list[str], int]:
    """``({group: (correct, total)}, missing pids, unparsed texts)`` over ``problems``.

    An index prediction must be ``-1`` (no answer) or within the problem's choices; anything else is a ``DataError``.
    """
    counts = {group: [0, 0] for group in GROUPS}
    missing: list[str] = []
    unparsed = 0
    for problem in problems:
        prediction = predictions.get(problem.pid)
        if prediction is None:
            missing.append(problem.pid)
            index = None
        elif isinstance(prediction, int):
            if not -1 <= prediction < len(problem.choices):
                raise DataError(
                    f"{where(source, f'pid {problem.pid}', 'results')}: answer index {prediction} out of range for "
                    f"{len(problem.choices)} choices (-1 means no answer)"
                )
            index = prediction
        else:
            index = extract_answer(prediction, len(problem.choices), answer_prefix)
            unparsed += index is None
        hit = index == problem.answer
        for group in score_groups(problem.meta()):
            counts[group][0] += hit
            counts[group][1] += 1
    return {g: (c, t) for g, (c, t) in counts.items()}, missing, unparsed


def percent(correct: int, total: int) -> float | None:
    """Accuracy in percent, two decimals (``None`` for an empty group; the official script prints -1)."""
    return round(100.0 * correct / total, 2) if total else None


def format_table(counts: dict[str, tuple[int, int]]) -> str:
    """The nine categories, then every topic seen, as ``name  acc%  (correct/total)`` rows."""
    rows = list(CATEGORIES) + [g for g in GROUPS if g.startswith("topic/") and counts[g][1]]
    lines = [f"{'category':<42} {'acc %':>7}  correct/total"]
    for group in rows:
        correct, total = counts[group]
        value = percent(correct, total)
        shown = "-" if value is None else f"{value:.2f}"
        lines.append(f"{group:<42} {shown:>7}  {correct}/{total}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    problems_path = Path(args.problems)
    splits_path = Path(args.splits) if args.splits else None
    predictions_path = Path(args.predictions)
    problems = read_problems(problems_path, require_split=splits_path is None)
    selected = split_problems(problems, args.split, problems_path, splits_path)
    predictions = read_predictions(predictions_path)
    check_predictions_in_split(
        predictions, selected, args.split, problems, predictions_path, problems_path, splits_path
    )
    counts, missing, unparsed = score(selected, predictions, predictions_path, args.answer_prefix)
    in_split = {p.pid for p in selected}
    ignored = sum(pid not in in_split for pid in predictions)
    print(f"ScienceQA split {args.split!r}: {len(selected)} problems, {len(predictions) - ignored} predictions")
    print(format_table(counts))
    if unparsed:
        print(f"{unparsed} generated texts named no valid option (counted wrong)")
    if missing:
        shown = ", ".join(missing[:SHOW_MISSING]) + (", …" if len(missing) > SHOW_MISSING else "")
        message = f"{len(missing)} pids of split {args.split!r} have no prediction (counted wrong): {shown}"
        print(f"{PROG}: {message}", file=sys.stderr)
    if ignored:
        print(f"{PROG}: ignored {ignored} predictions for pids outside split {args.split!r}", file=sys.stderr)
    if args.json:
        out = {group: percent(*counts[group]) for group in CATEGORIES}
        out["count"] = len(selected)
        path = Path(args.json)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
        except OSError as exc:
            raise DataError(f"{path}: cannot write: {exc}") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lit_hyperet scienceqa-score``; bad input → exit 2 with a one-line message (the
    status of every user error of ``python -m lit_hyperet``, and of argparse's usage errors)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Score ScienceQA predictions with the official categories (NAT SOC LAN TXT IMG NO G1-6 G7-12 Avg). "
        'PREDICTIONS: an official result file {"results": {pid: index}}, a {pid: generated text} JSON, or LLaVA\'s '
        "answer JSONL (question_id, text).",
    )
    parser.add_argument("--problems", required=True, help="ScienceQA problems.json")
    parser.add_argument("--predictions", required=True, help="result file, {pid: text} JSON, or LLaVA JSONL")
    parser.add_argument("--split", default="test", help="split to score (default: test)")
    parser.add_argument("--splits", help="pid_splits.json (default: each problem's 'split' field)")
    parser.add_argument("--json", help="write {NAT, SOC, LAN, TXT, IMG, NO, G1-6, G7-12, Avg, count} here")
    parser.add_argument(
        "--answer-prefix", default="", help="prefix the prompts ended with (answer-prefix protocol: 'The answer is')"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except DataError as exc:
        message = " ".join(str(exc).splitlines())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
