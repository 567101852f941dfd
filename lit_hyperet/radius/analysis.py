"""From records to figures: descriptive statistics, groups (run, source, dataset category such as ScienceQA's grade
band), the JSON summary with its cross-run comparison, the per-image and per-group tables, and accuracy per radius
quantile bin (radius as uncertainty).

Statistics are pandas' (``DataFrame.describe``): mean, min, quantiles with linear interpolation (numpy's default
definition) and max, with the population std (``ddof=0``) in place of describe's sample std.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from lit_hyperet.radius.runs import CATEGORY_FIELDS, ImageRecord, RunResult
from lit_hyperet.radius.tokens import FORMULAS, IDENTITY, NORMALISATION, QUANTITIES, SOURCES
from lit_hyperet.user_errors import ConfigError

QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
STATS: tuple[str, ...] = ("mean", "std", "min", *(f"q{round(q * 100):02d}" for q in QUANTILES), "max")
#: Columns of the per-group table (``radius_groups.csv``; ``radius_table.md`` shows a subset).
GROUP_COLUMNS: tuple[str, ...] = (
    "run",
    "source",
    "group",
    "images",
    "tokens",
    *(f"{q}_{s}" for q in QUANTITIES for s in ("mean", "std", "q50")),
    "rad_mean_ratio_to_first",
)
#: Columns of the accuracy-per-radius-bin table (``reliability.csv`` / ``reliability.md``; ``accuracy`` in %).
RELIABILITY_COLUMNS: tuple[str, ...] = ("run", "source", "quantity", "bin", "lo", "hi", "n", "correct", "accuracy")

# ------------------------------------------------------------------------------------------------ statistics


def describe(frame: pd.DataFrame) -> pd.DataFrame:
    """The :data:`STATS` (rows: ``mean``, ``std``, ``min``, ``q05`` … ``q95``, ``max``) of every column of ``frame``
    (all NaN for an empty column)."""
    stats = frame.describe(percentiles=list(QUANTILES)).drop("count")
    stats.loc["std"] = frame.std(ddof=0)
    return stats.set_axis(list(STATS))


def groups(records: Sequence[ImageRecord], fields: Iterable[str]) -> dict[str, list[ImageRecord]]:
    """``{"all": records, "<field>=<value>": [...], ...}`` for each field present in the records' categories."""
    out: dict[str, list[ImageRecord]] = {"all": list(records)}
    for f in fields:
        values = sorted({str(r.categories[f]) for r in records if f in r.categories})
        for value in values:
            out[f"{f}={value}"] = [r for r in records if str(r.categories.get(f)) == value]
    return out


def image_means(records: Sequence[ImageRecord], source: str, quantity: str) -> np.ndarray:
    """Per-image mean of ``quantity`` over the tokens of ``source``."""
    return np.array([float(r.values[source][quantity].mean()) for r in records], dtype=np.float64)


def token_values(records: Sequence[ImageRecord], source: str, quantity: str) -> np.ndarray:
    """All tokens' ``quantity`` of ``source`` over the records, concatenated."""
    if not records:
        return np.zeros(0)
    return np.concatenate([r.values[source][quantity].reshape(-1) for r in records])


def image_stats(records: Sequence[ImageRecord], source: str, quantity: str) -> pd.DataFrame:
    """One row per record: the :data:`STATS` of its tokens' ``quantity`` of ``source``."""
    tokens = pd.DataFrame({i: r.values[source][quantity].reshape(-1) for i, r in enumerate(records)})
    return describe(tokens).T


# ------------------------------------------------------------------------------------------------ per image


def image_table(results: Sequence[RunResult]) -> pd.DataFrame:
    """One row per (run, image): run, id, categories (``""`` where absent), token count per source, the
    :data:`STATS` of every source and quantity (``<source>_<quantity>_<stat>``) and, when answers were generated,
    ``correct`` (1/0, ``""`` if unknown) and ``prediction``."""
    cats = [f for f in CATEGORY_FIELDS if any(f in r.categories for res in results for r in res.records)]
    sources = sorted({s for res in results for s in res.sources()}, key=SOURCES.index)
    with_acc = any(r.correct is not None for res in results for r in res.records)
    parts = []
    for res in results:
        if not res.records:
            continue
        recs = res.records
        # object columns keep each value as given (an int category stays "2", not "2.0", beside absent ones)
        labels: dict[str, Any] = {"run": [res.name] * len(recs), "id": [r.id for r in recs]}
        labels.update({c: [r.categories.get(c, "") for r in recs] for c in cats})
        labels.update({f"{s}_n_tokens": [int(r.values[s][QUANTITIES[0]].size) for r in recs] for s in sources})
        columns = [pd.DataFrame(labels, dtype=object)]
        columns += [image_stats(recs, s, q).add_prefix(f"{s}_{q}_") for s in sources for q in QUANTITIES]
        if with_acc:
            answers = {
                "correct": ["" if r.correct is None else int(r.correct) for r in recs],
                "prediction": [r.prediction or "" for r in recs],
            }
            columns.append(pd.DataFrame(answers, dtype=object))
        parts.append(pd.concat(columns, axis=1))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run", "id"])


# ------------------------------------------------------------------------------------------------ summary


def run_summary(res: RunResult, group_by: Sequence[str]) -> dict[str, Any]:
    """Counts (with ``text_only_accuracy`` in percent when answers were scored) and, per group and source,
    token-level and per-image-mean statistics of every quantity."""
    out: dict[str, Any] = {
        "configs": res.configs,
        "ckpt": res.ckpt,
        "split": res.split,
        "model": res.model,
        "counts": {
            "samples_seen": res.samples_seen,
            "images": len(res.records),
            "skipped_text_only": res.skipped_text_only,
            "skipped_text_only_ids_first": res.skipped_ids[:20],
            "rad_saturated_tokens": res.saturated,
        },
        "groups": {},
    }
    for name, recs in groups(res.records, group_by).items():
        entry: dict[str, Any] = {"images": len(recs)}
        for s in res.sources():
            tokens = pd.DataFrame({q: token_values(recs, s, q) for q in QUANTITIES})
            token_stats = describe(tokens)
            mean_stats = describe(pd.DataFrame({q: image_means(recs, s, q) for q in QUANTITIES}))
            entry[s] = {"tokens": len(tokens)}
            for q in QUANTITIES:
                entry[s][q] = {"tokens": token_stats[q].to_dict(), "image_mean": mean_stats[q].to_dict()}
        out["groups"][name] = entry
    if res.text_only_correct:
        out["counts"]["text_only_accuracy"] = 100.0 * sum(res.text_only_correct) / len(res.text_only_correct)
    return out


def comparison(summary_runs: dict[str, Any], quantity: str = "rad") -> dict[str, Any]:
    """``{source: {group: {run: mean token quantity, ..., "ratio_<run>_to_<first>": ...}}}`` across runs."""
    names = list(summary_runs)
    out: dict[str, Any] = {}
    for name in names:
        for group, entry in summary_runs[name]["groups"].items():
            for s, per in entry.items():
                if isinstance(per, dict) and quantity in per:
                    out.setdefault(s, {}).setdefault(group, {})[name] = per[quantity]["tokens"]["mean"]
    first = names[0] if names else None
    for per_source in out.values():
        for per_group in per_source.values():
            base = per_group.get(first)
            for name in names[1:]:
                if name in per_group and base:
                    per_group[f"ratio_{name}_to_{first}"] = per_group[name] / base
    return out


def summary(results: Sequence[RunResult], settings: dict[str, Any], group_by: Sequence[str]) -> dict[str, Any]:
    """The whole JSON summary: formulas, normalisation, settings, per-run summaries and the cross-run comparison."""
    runs = {res.name: run_summary(res, group_by) for res in results}
    return {
        "quantities": dict(FORMULAS),
        "identity": IDENTITY,
        "normalisation": NORMALISATION,
        "statistics": "tokens: over all tokens of the group's images; image_mean: over the per-image token means",
        "settings": settings,
        "group_by": list(group_by),
        "runs": runs,
        "comparison_rad_token_mean": comparison(runs, "rad"),
        "comparison_norm_radius_token_mean": comparison(runs, "norm_radius"),
    }


def group_table(summary_data: dict[str, Any]) -> pd.DataFrame:
    """One row per (run, group, source) of the summary with token-level mean/std/median of each quantity and
    ``rad_mean_ratio_to_first``: rad_mean over the first run's for the same source and group (NaN without one)."""
    rows = []
    for run, entry in summary_data["runs"].items():
        for group, per in entry["groups"].items():
            for source, stats in per.items():
                if not isinstance(stats, dict):
                    continue
                row = {"run": run, "source": source, "group": group, "images": per["images"], "tokens": stats["tokens"]}
                for q in QUANTITIES:
                    row.update({f"{q}_{k}": stats[q]["tokens"][k] for k in ("mean", "std", "q50")})
                rows.append(row)
    table = pd.DataFrame(rows, columns=list(GROUP_COLUMNS[:-1]))
    first = next(iter(summary_data["runs"]), None)
    base = table.loc[table["run"] == first, ["source", "group", "rad_mean"]]
    table = table.merge(base, on=["source", "group"], how="left", suffixes=("", "_first"))
    table["rad_mean_ratio_to_first"] = table["rad_mean"] / table.pop("rad_mean_first").replace(0, np.nan)
    return table


# ------------------------------------------------------------------------------------------------ reliability


def reliability_table(
    results: Sequence[RunResult], bins: int = 5, source: str = "vision", quantity: str = "rad"
) -> pd.DataFrame:
    """Per run: images sorted by their mean token ``quantity`` and split into ``bins`` equal-count bins (the radius
    quantile bins); each row gives the bin's value range, size, correct count and accuracy in percent (0-100).
    Text-only samples (no radius) get one extra row ``bin = "text-only"``. Records without a correctness flag are
    left out."""
    if bins < 1:
        raise ConfigError(f"bins must be >= 1, got {bins}")
    parts = []
    for res in results:
        recs = [r for r in res.records if r.correct is not None and source in r.values]
        if recs:
            images = pd.DataFrame(
                {"value": image_means(recs, source, quantity), "correct": [bool(r.correct) for r in recs]}
            ).sort_values("value", kind="stable")
            # Equal counts by rank, the first len % bins bins one larger (np.array_split); pandas.qcut cuts at
            # interpolated quantiles and would size the bins differently (5 images in 3 bins: 2, 1, 2).
            sizes = [len(part) for part in np.array_split(images.index, min(bins, len(recs)))]
            images["bin"] = np.repeat(np.arange(1, len(sizes) + 1), sizes)
            per_bin = images.groupby("bin").agg(
                lo=("value", "min"), hi=("value", "max"), n=("correct", "size"), correct=("correct", "sum")
            )
            parts.append(per_bin.reset_index().assign(run=res.name))
        if res.text_only_correct:
            text_only = {"bin": "text-only", "lo": np.nan, "hi": np.nan, "n": len(res.text_only_correct)}
            text_only.update(run=res.name, correct=sum(res.text_only_correct))
            parts.append(pd.DataFrame([text_only]))
    if not parts:
        return pd.DataFrame(columns=list(RELIABILITY_COLUMNS))
    table = pd.concat(parts, ignore_index=True).assign(source=source, quantity=quantity)
    table["accuracy"] = 100.0 * table["correct"] / table["n"]
    return table[list(RELIABILITY_COLUMNS)]
