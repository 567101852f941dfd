"""Writing the per-image CSV and the JSON summary (per run, source and dataset category)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_hyperet.radius.compute import FORMULAS, NORMALISATION, QUANTITIES
from lit_hyperet.radius.records import CATEGORY_FIELDS, RunResult
from lit_hyperet.radius.stats import STATS, describe, groups, image_means, token_values

IMAGES_CSV = "radius_images.csv"
GROUPS_CSV = "radius_groups.csv"
TABLE_MD = "radius_table.md"
SUMMARY_JSON = "radius_summary.json"
GROUP_COLUMNS = (
    "run",
    "source",
    "group",
    "images",
    "tokens",
    *(f"{q}_{s}" for q in QUANTITIES for s in ("mean", "std", "q50")),
    "rad_mean_ratio_to_first",
)
IDENTITY = "Rad(exp0(f)) = 2 * ||f|| exactly (independent of c); 'rad' is the hyperbolic radius, not ||exp0(f)||"


def image_rows(results: Sequence[RunResult]) -> tuple[list[str], list[dict[str, Any]]]:
    """CSV header and one row per (run, image): categories, token count, per-image stats of every quantity."""
    cats = [f for f in CATEGORY_FIELDS if any(f in r.categories for res in results for r in res.records)]
    sources = sorted({s for res in results for s in res.sources()}, key=["vision", "projector"].index)
    with_acc = any(r.correct is not None for res in results for r in res.records)
    header = ["run", "id", *cats]
    header += [f"{s}_n_tokens" for s in sources]
    header += [f"{s}_{q}_{stat}" for s in sources for q in QUANTITIES for stat in STATS]
    header += ["correct", "prediction"] if with_acc else []
    rows = []
    for res in results:
        for rec in res.records:
            row: dict[str, Any] = {"run": res.name, "id": rec.id, **{c: rec.categories.get(c, "") for c in cats}}
            for s in sources:
                row[f"{s}_n_tokens"] = int(rec.values[s][QUANTITIES[0]].size)
                for q in QUANTITIES:
                    row.update({f"{s}_{q}_{k}": v for k, v in describe(rec.values[s][q]).items()})
            if with_acc:
                row["correct"] = "" if rec.correct is None else int(rec.correct)
                row["prediction"] = rec.prediction or ""
            rows.append(row)
    return header, rows


def write_csv(path: Path, header: list[str], rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` (dicts keyed by ``header``) as a CSV file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def run_summary(res: RunResult, group_by: Sequence[str]) -> dict[str, Any]:
    """Counts and, per group and source, token-level and per-image-mean statistics of every quantity."""
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
            tokens = {q: token_values(recs, s, q) for q in QUANTITIES}
            entry[s] = {"tokens": int(tokens[QUANTITIES[0]].size)}
            for q in QUANTITIES:
                entry[s][q] = {"tokens": describe(tokens[q]), "image_mean": describe(image_means(recs, s, q))}
        out["groups"][name] = entry
    if res.text_only_correct:
        out["counts"]["text_only_accuracy"] = sum(res.text_only_correct) / len(res.text_only_correct)
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


def group_rows(summary_data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (run, source, group) with token-level mean/std/median of each quantity (the combined table)."""
    rows = []
    for run, entry in summary_data["runs"].items():
        for group, per in entry["groups"].items():
            for source, stats in per.items():
                if not isinstance(stats, dict):
                    continue
                row: dict[str, Any] = {
                    "run": run,
                    "source": source,
                    "group": group,
                    "images": per["images"],
                    "tokens": stats["tokens"],
                }
                for q in QUANTITIES:
                    row.update({f"{q}_{k}": stats[q]["tokens"][k] for k in ("mean", "std", "q50")})
                rows.append(row)
    first = next(iter(summary_data["runs"]), None)
    base = {(r["source"], r["group"]): r["rad_mean"] for r in rows if r["run"] == first}
    for r in rows:
        b = base.get((r["source"], r["group"]))
        r["rad_mean_ratio_to_first"] = r["rad_mean"] / b if b else float("nan")
    return rows


def write_table(path: Path, rows: Sequence[dict[str, Any]], c: float) -> Path:
    """A markdown table of :func:`group_rows` with the formulas above it."""
    cols = ["run", "source", "group", "images", "tokens", "rad_mean", "rad_std", "ball_norm_mean", "norm_radius_mean"]
    cols += ["rad_mean_ratio_to_first"] if len({r["run"] for r in rows}) > 1 else []
    lines = [f"# Hyperbolic radius of visual tokens (c = {c})", ""]
    lines += [f"- `{q}`: {FORMULAS[q]}" for q in QUANTITIES]
    lines += [
        "- means and std over all tokens of the group's images; `rad_mean_ratio_to_first`: rad_mean over the "
        "first run's rad_mean for the same source and group",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in cols) + " |")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON (NaN written as null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_nan_to_none(data), indent=2) + "\n")
    return path


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x
