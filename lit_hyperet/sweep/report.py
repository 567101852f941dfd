"""Ablation table of a sweep from its MLflow child runs: ``ablation.md``, ``ablation.csv`` and ``ablation.png``.

One row per configuration (seeds grouped): HyperET variant, band width, block size and block count, space, encoder,
the exact trainable and HyperET parameter counts the runs logged (``params/*``), Δparams against the baseline
(the configuration without HyperET), every ``val/*`` and ``test/*`` metric as mean ± sample std over the finished seeds,
Δ of the main metric against the baseline, and the HyperET diagnostics (max identity deviation, mean clamp fraction).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lit_hyperet.hyperet_config import DEFAULT_BLOCK_SIZE
from lit_hyperet.sweep.spec import Sweep, Trial, config_tags
from lit_hyperet.tables import markdown_table
from lit_hyperet.tasks.scienceqa.rules import CATEGORIES

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.entities import Run

    from lit_hyperet.sweep.runner import Tracker

#: The splits whose metrics become table columns (ScienceQA accuracies are logged in percent, 0-100).
SPLITS = ("test", "val")
DEVIATION = "hyperet/identity_deviation_max"
CLAMP = "hyperet/clamp_fraction_mean"
EXACT_MATCH = "exact_match"  # lit_hyperet.metrics.ExactMatch, the metric of tasks without their own
DASH = "—"


@dataclass
class RunRecord:
    """The child run chosen for one trial."""

    trial: Trial
    run_id: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    stale: bool = False  # its config hash differs from the trial's current one

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED" and self.tags.get("sweep.outcome", "ok") == "ok"


@dataclass
class ConfigRow:
    """One configuration (all its seeds)."""

    name: str
    trials: list[Trial]
    records: list[RunRecord] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # metric -> (mean, std, n)
    delta_params: int | None = None
    delta_main: float | None = None

    @property
    def finished(self) -> list[RunRecord]:
        return [r for r in self.records if r.ok]

    @property
    def is_baseline(self) -> bool:
        return self.info.get("variant") == "none"


@dataclass
class Report:
    """The table's rows and what they were computed from."""

    sweep: Sweep
    parent_id: str | None
    rows: list[ConfigRow]
    metrics: list[str]
    main_metric: str | None


# ------------------------------------------------------------------------------------------------ collecting


def _record(trial: Trial, run: Run, stale: bool = False) -> RunRecord:
    return RunRecord(
        trial,
        run.info.run_id,
        run.info.status,
        dict(run.data.params),
        dict(run.data.metrics),
        dict(run.data.tags),
        stale,
    )


def choose_runs(trials: list[Trial], children: list[Run]) -> dict[str, RunRecord]:
    """Per trial: the newest finished child with the trial's hash, else its newest child with that hash, else (marked
    stale) the newest finished child with the trial's name. ``children`` are newest first."""
    chosen: dict[str, RunRecord] = {}
    for trial in trials:
        same = [r for r in children if r.data.tags.get("sweep.hash") == trial.config_hash]
        ok = [r for r in same if r.info.status == "FINISHED" and r.data.tags.get("sweep.outcome", "ok") == "ok"]
        named = [r for r in children if r.data.tags.get("sweep.trial") == trial.name and r.info.status == "FINISHED"]
        if ok or same:
            chosen[trial.name] = _record(trial, (ok or same)[0])
        elif named:
            chosen[trial.name] = _record(trial, named[0], stale=True)
    return chosen


def collect(sweep: Sweep, trials: list[Trial], tracker: Tracker, parent_id: str | None) -> Report:
    """Gather the child runs of ``parent_id`` into configuration rows and compute the statistics."""
    children = tracker.children(parent_id) if parent_id else []
    chosen = choose_runs(trials, children)
    rows: dict[str, ConfigRow] = {}
    for trial in trials:
        row = rows.setdefault(trial.config_name, ConfigRow(trial.config_name, []))
        row.trials.append(trial)
        if trial.name in chosen:
            row.records.append(chosen[trial.name])
    return build_report(sweep, parent_id, list(rows.values()))


def build_report(sweep: Sweep, parent_id: str | None, rows: list[ConfigRow]) -> Report:
    """Fill in descriptions, statistics and the deltas against the baseline."""
    for row in rows:
        row.info = describe(row)
        row.stats = metric_stats(row.finished)
    metrics = _metric_order({m for row in rows for m in row.stats})
    main = sweep.metric or next((m for m in ("test/Avg", "val/Avg") if m in metrics), metrics[0] if metrics else None)
    for row in rows:
        base = _baseline_for(row, rows)
        if base is None:
            continue
        if row.info.get("trainable") is not None and base.info.get("trainable") is not None:
            row.delta_params = row.info["trainable"] - base.info["trainable"]
        if main in row.stats and main in base.stats:
            row.delta_main = row.stats[main][0] - base.stats[main][0]
    return Report(sweep, parent_id, rows, metrics, main)


def _baseline_for(row: ConfigRow, rows: list[ConfigRow]) -> ConfigRow | None:
    bases = [r for r in rows if r.is_baseline and r.finished]
    same_encoder = [r for r in bases if r.info.get("encoder") == row.info.get("encoder")]
    return (same_encoder or bases or [None])[0]


def _metric_order(names: Iterable[str]) -> list[str]:
    def key(name: str) -> tuple[int, int, str]:
        split, _, category = name.partition("/")
        s = SPLITS.index(split) if split in SPLITS else len(SPLITS)
        c = CATEGORIES.index(category) if category in CATEGORIES else len(CATEGORIES)
        return s, c, name

    return sorted((n for n in names if _is_split_metric(n)), key=key)


def _is_split_metric(name: str) -> bool:
    """``val/<name>`` or ``test/<name>`` without further nesting (``val/topic/...`` breakdowns stay out)."""
    split, _, rest = name.partition("/")
    return split in SPLITS and bool(rest) and "/" not in rest


def metric_stats(records: list[RunRecord]) -> dict[str, tuple[float, float, int]]:
    """``metric -> (mean, sample std (0 for one value), count)`` over the records, for val/*, test/* and HyperET."""
    values: dict[str, list[float]] = {}
    for record in records:
        for name, value in record.metrics.items():
            if (_is_split_metric(name) or name in (DEVIATION, CLAMP)) and math.isfinite(value):
                values.setdefault(name, []).append(float(value))
    out = {}
    for name, vs in values.items():
        if name == DEVIATION:  # a maximum stays a maximum over seeds
            out[name] = (max(vs), 0.0, len(vs))
        else:
            out[name] = (statistics.fmean(vs), statistics.stdev(vs) if len(vs) > 1 else 0.0, len(vs))
    return out


# ------------------------------------------------------------------------------------------------ describing


def _int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _value(record: RunRecord, param: str, tag: str) -> str | None:
    """A logged hyper-parameter (resolved by the CLI), else the sweep's tag."""
    value = record.params.get(param, record.tags.get(tag))
    return None if value in (None, "None", "") else value


def describe(row: ConfigRow) -> dict[str, Any]:
    """Variant, band width, block size/count, space, encoder, matrix size and parameter counts of a configuration."""
    source = (row.finished or row.records or [None])[0]
    if source is None:  # nothing ran: what the sweep file says
        tags = {f"cfg.{k}": v for k, v in config_tags(row.trials[0].resolved).items()}
        source = RunRecord(row.trials[0], "", "", {}, {}, tags)
    baseline = source.params.get("hyperet") == "None" or source.tags.get("cfg.hyperet") == "none"
    info: dict[str, Any] = {
        "variant": "none" if baseline else _value(source, "hyperet/variant", "cfg.hyperet.variant") or "diagonal",
        "encoder": _encoder(source),
        "trainable": _int(source.params.get("params/trainable")),
        "hyperet_params": _int(source.params.get("params/hyperet")),
        "adapted": _int(source.params.get("params/hyperet_adapted_modules")),
    }
    if baseline:
        return info
    info["space"] = _value(source, "hyperet/space", "cfg.hyperet.space") or "hyperbolic"
    if info["variant"] == "banded":
        info["band_width"] = _int(_value(source, "hyperet/band_width", "cfg.hyperet.band_width")) or 2
    if info["variant"] == "block_diagonal":
        info["block_size"] = _int(_value(source, "hyperet/block_size", "cfg.hyperet.block_size"))
        info["num_blocks"] = _int(_value(source, "hyperet/num_blocks", "cfg.hyperet.num_blocks"))
        if info["block_size"] is None and info["num_blocks"] is None:
            info["block_size"] = DEFAULT_BLOCK_SIZE
    learn_c = str(source.params.get("hyperet/learn_curvature")) == "True"
    info["n"] = matrix_size(info, learn_c)
    n = info["n"]
    if n and info["variant"] == "block_diagonal":
        if info.get("block_size"):
            info["num_blocks"] = n // info["block_size"]
        elif info.get("num_blocks"):
            info["block_size"] = n // info["num_blocks"]
    return info


def _encoder(record: RunRecord) -> str | None:
    for key in ("model/init_args/vision", "model/init_args/vision_path", "model/init_args/path"):
        value = record.params.get(key)
        if value and value != "None":
            return f"tiny-{value}" if key.endswith("/vision") else Path(value).name
    tag = record.tags.get("cfg.encoder")
    return (Path(tag).name if "/" in tag else tag) if tag else None


def matrix_size(info: dict[str, Any], learn_curvature: bool = False) -> int | None:
    """n of the adapted n×n weights, from the logged HyperET parameter count and number of adapted matrices."""
    total, count = info.get("hyperet_params"), info.get("adapted")
    if not total or not count:
        return None
    per = total / count - (1 if learn_curvature else 0)
    variant = info["variant"]
    if variant == "diagonal":
        n = per
    elif variant == "full":
        n = math.sqrt(per)
    elif variant == "banded":
        d = info.get("band_width") or 0
        n = (per + d * (d + 1)) / (2 * d + 1)
    elif variant == "block_diagonal":
        n = per / info["block_size"] if info.get("block_size") else math.sqrt(per * (info.get("num_blocks") or 0))
    else:
        return None
    return round(n) if n > 0 and abs(n - round(n)) < 1e-6 else None


# ------------------------------------------------------------------------------------------------ formatting


def is_accuracy(name: str) -> bool:
    """An accuracy (``test/Avg``, ``val/NAT`` …, ``val/exact_match``): logged in percent, shown with two decimals."""
    split, _, category = name.partition("/")
    return split in SPLITS and (category in CATEGORIES or category == EXACT_MATCH)


def fmt_metric(name: str, stat: tuple[float, float, int] | None) -> str:
    """``mean ± std`` (accuracies as logged, in %, with two decimals; no ± for one seed)."""
    if stat is None:
        return DASH
    mean, std, n = stat
    if is_accuracy(name):
        return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"
    return f"{mean:.4g} ± {std:.2g}" if n > 1 else f"{mean:.4g}"


def _fmt_int(value: int | None, signed: bool = False) -> str:
    if value is None:
        return DASH
    return f"{value:+,}" if signed and value else f"{value:,}"


def _fmt(value: Any) -> str:
    return DASH if value is None or value == "" else str(value)


def _status(row: ConfigRow) -> str:
    done, total = len(row.finished), len(row.trials)
    failed = sum(1 for r in row.records if not r.ok)
    text = f"{done}/{total}"
    if failed:
        text += f" ({failed} failed)"
    if any(r.stale for r in row.records):
        text += " *"
    return text


def table_columns(report: Report) -> list[tuple[str, Any]]:
    """``(header, row -> cell)`` of the markdown table."""
    main = report.main_metric
    cols: list[tuple[str, Any]] = [
        ("configuration", lambda r: r.name),
        ("variant", lambda r: "baseline (no HyperET)" if r.is_baseline else _fmt(r.info.get("variant"))),
        ("d", lambda r: _fmt(r.info.get("band_width"))),
        ("block size", lambda r: _fmt(r.info.get("block_size"))),
        ("blocks", lambda r: _fmt(r.info.get("num_blocks"))),
        ("space", lambda r: _fmt(r.info.get("space"))),
        ("encoder", lambda r: _fmt(r.info.get("encoder"))),
        ("n", lambda r: _fmt(r.info.get("n"))),
        ("adapted", lambda r: _fmt(r.info.get("adapted"))),
        ("HyperET params", lambda r: _fmt_int(r.info.get("hyperet_params"))),
        ("trainable", lambda r: _fmt_int(r.info.get("trainable"))),
        ("Δparams", lambda r: _fmt_int(r.delta_params, signed=True)),
    ]
    cols += [(m, lambda r, m=m: fmt_metric(m, r.stats.get(m))) for m in report.metrics]
    if main:
        cols.append(
            (
                f"Δ {main}",
                lambda r: (
                    DASH
                    if r.delta_main is None
                    else (f"{r.delta_main:+.2f}" if is_accuracy(main) else f"{r.delta_main:+.4g}")
                ),
            )
        )
    cols += [
        ("identity dev. (max)", lambda r: _fmt_sci(r.stats.get(DEVIATION))),
        ("clamp fraction", lambda r: _fmt_sci(r.stats.get(CLAMP))),
        ("seeds", _status),
    ]
    return cols


def _fmt_sci(stat: tuple[float, float, int] | None) -> str:
    return DASH if stat is None else f"{stat[0]:.2g}"


def table_frame(report: Report) -> pd.DataFrame:
    """The markdown table's cells (formatted strings), one row per configuration, columns of :func:`table_columns`."""
    cols = table_columns(report)
    cells = [[str(cell(row)) for _, cell in cols] for row in report.rows]
    return pd.DataFrame(cells, columns=[h for h, _ in cols], dtype=object)


def to_markdown(report: Report) -> str:
    """The ablation table with a short header explaining units and conventions."""
    sweep, rows = report.sweep, report.rows
    n_trials = sum(len(r.trials) for r in rows)
    n_done = sum(len(r.finished) for r in rows)
    n_failed = sum(1 for r in rows for rec in r.records if not rec.ok)
    lines = [
        f"# Ablation: {sweep.name}",
        "",
        f"Sweep `{sweep.path}`, MLflow experiment `{sweep.experiment}`, parent run `{report.parent_id}`: "
        f"{n_trials} trials, {n_done} finished, {n_failed} failed, {n_trials - n_done - n_failed} not run.",
        f"Main metric: `{report.main_metric}`. Accuracies in %, mean ± sample std over the finished seeds. "
        "Δparams and Δ are against the baseline without HyperET (same encoder where there is one).",
        "HyperET params are the exact counts the runs logged for what was adapted: `adapted` n×n matrices "
        "(the poster's Δparams assume q, k, v adapted for block-diagonal and banded, but q, v for diagonal).",
        "",
    ]
    lines.append(markdown_table(table_frame(report)))
    if any(rec.stale for r in rows for rec in r.records):
        lines += ["", "\\* from a run whose config hash differs from the sweep file's current trial (older settings)."]
    return "\n".join(lines) + "\n"


def csv_rows(report: Report) -> list[dict[str, Any]]:
    """Machine-readable rows (metrics as logged: accuracies in percent)."""
    out = []
    for row in report.rows:
        item: dict[str, Any] = {"configuration": row.name, "baseline": row.is_baseline}
        for key in (
            "variant",
            "band_width",
            "block_size",
            "num_blocks",
            "space",
            "encoder",
            "n",
            "adapted",
            "hyperet_params",
            "trainable",
        ):
            item[key] = row.info.get(key)
        item["delta_params"] = row.delta_params
        for metric in report.metrics:
            mean, std, _ = row.stats.get(metric, (None, None, 0))
            item[f"{metric}_mean"], item[f"{metric}_std"] = mean, std
        if report.main_metric:
            item[f"delta_{report.main_metric}"] = row.delta_main
        item["identity_deviation_max"] = row.stats.get(DEVIATION, (None,))[0]
        item["clamp_fraction_mean"] = row.stats.get(CLAMP, (None,))[0]
        item["seeds_finished"], item["seeds_total"] = len(row.finished), len(row.trials)
        item["run_ids"] = " ".join(r.run_id for r in row.records)
        out.append(item)
    return out


def write_csv(report: Report, path: Path) -> None:
    """``ablation.csv``."""
    rows = csv_rows(report)
    fields = list(dict.fromkeys(k for row in rows for k in row)) or ["configuration"]
    # object columns keep each value as logged (ints stay ints next to missing values); None is written empty
    frame = pd.DataFrame(rows, columns=fields, dtype=object)
    frame.to_csv(path, index=False, na_rep="", lineterminator="\r\n")


def write_chart(report: Report, path: Path) -> None:
    """``ablation.png``: the chart of :func:`chart_figure`."""
    chart_figure(report).savefig(path, dpi=120)


def chart_figure(report: Report) -> Figure:
    """A horizontal bar chart of the main metric per configuration (mean with std error bars, as logged: accuracies in
    percent; Agg backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = report.main_metric
    rows = [r for r in report.rows if metric and metric in r.stats]
    percent = bool(metric and is_accuracy(metric))
    fig = Figure(figsize=(8, 1.2 + 0.35 * max(len(rows), 1)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if rows:
        means = [r.stats[metric][0] for r in rows]
        stds = [r.stats[metric][1] for r in rows]
        colors = ["0.6" if r.is_baseline else "tab:blue" for r in rows]
        ax.barh(range(len(rows)), means, xerr=stds, color=colors, capsize=3)
        ax.set_yticks(range(len(rows)), [r.name for r in rows], fontsize=8)
        ax.invert_yaxis()
        base = next((r for r in rows if r.is_baseline), None)
        if base is not None:
            ax.axvline(base.stats[metric][0], color="0.3", linestyle="--", linewidth=1, label="baseline")
            ax.legend(loc="lower right", fontsize=8)
        low = min(m - s for m, s in zip(means, stds, strict=True))
        high = max(m + s for m, s in zip(means, stds, strict=True))
        pad = max(0.05 * (high - low), 0.5 if percent else 1e-3)
        ax.set_xlim(max(0.0, low - pad) if low >= 0 else low - pad, high + pad)
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    unit = " (%)" if percent else ""
    ax.set_xlabel(f"{metric}{unit}, mean ± std over seeds" if metric else "")
    ax.set_title(f"{report.sweep.name}")
    return fig


def write_report(report: Report, out_dir: Path) -> list[Path]:
    """Write ``ablation.md``, ``ablation.csv`` and ``ablation.png`` into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, table, chart = out_dir / "ablation.md", out_dir / "ablation.csv", out_dir / "ablation.png"
    md.write_text(to_markdown(report))
    write_csv(report, table)
    write_chart(report, chart)
    return [md, table, chart]


def report_sweep(
    sweep: Sweep, trials: list[Trial], tracker: Tracker, parent_id: str | None
) -> tuple[Report, list[Path]]:
    """Collect, write and (when there is a parent run) log the report as artifacts of the parent run."""
    report = collect(sweep, trials, tracker, parent_id)
    paths = write_report(report, Path(sweep.output_dir))
    if parent_id is not None:
        for path in paths:
            tracker.client.log_artifact(parent_id, str(path))
    return report, paths
