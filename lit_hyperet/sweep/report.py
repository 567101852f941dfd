"""The ablation table of a sweep, built with pandas from the study (``study.trials_dataframe()``) and its MLflow child
runs (``mlflow.search_runs``): ``ablation.md``, ``ablation.csv`` and ``ablation.png``, logged to the parent run.

One row per configuration (seeds grouped): variant, band width, block size and count, space, encoder, n (logged by
the run), the exact HyperET and trainable parameter counts, Δparams against the baseline (the configuration without
HyperET, same encoder where there is one), every ``val/*`` and ``test/*`` metric as mean ± sample std over the
completed seeds, Δ of the main metric, the HyperET diagnostics, and how many seeds completed, were pruned or failed.
Pruned and failed trials are counted but left out of the means. Accuracies are logged in percent and shown with two
decimals, other metrics (retrieval recall, radius statistics) with four significant digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lit_hyperet.sweep.spec import NAME_KEY, Sweep, Trial, cli_value
from lit_hyperet.sweep.study import PARENT_ATTR
from lit_hyperet.tables import markdown_table
from lit_hyperet.tasks.scienceqa.rules import CATEGORIES

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

SPLITS = ("val", "test")
DEVIATION, CLAMP = "hyperet/identity_deviation_max", "hyperet/clamp_fraction_mean"
DASH = "—"
#: Table column -> the logged run parameter it shows.
DESCRIBED = {
    "variant": "hyperet/variant",
    "d": "hyperet/band_width",
    "block size": "hyperet/block_size",
    "blocks": "hyperet/num_blocks",
    "space": "hyperet/space",
    "n": "params/hyperet_n",
    "adapted": "params/hyperet_adapted_modules",
    "HyperET params": "params/hyperet",
    "trainable": "params/trainable",
}
ENCODER_PARAMS = ("model/init_args/vision", "model/init_args/vision_path", "model/init_args/path")
CONSOLE_COLUMNS = ("configuration", "HyperET params", "Δparams", "seeds")


@dataclass
class Report:
    """The table (one row per configuration, numbers unformatted) and what it was computed from."""

    sweep: Sweep
    parent_id: str | None
    table: pd.DataFrame
    metrics: list[str]
    main_metric: str | None
    counts: dict[str, int]
    labels: dict[str, str]  # configuration -> its chart label


def trial_runs(study: optuna.Study, client: MlflowClient) -> pd.DataFrame:
    """One row per grid point: its latest completed trial, else its latest pruned one, else its latest, joined with
    that trial's MLflow run (``metrics.*``, ``params.*``, ``tags.*``)."""
    import mlflow

    frame = study.trials_dataframe(attrs=("number", "state", "params", "user_attrs"))
    if frame.empty or "params_config" not in frame:
        return pd.DataFrame(columns=["params_config", "params_seed", "state", "run_id"])
    frame = frame.dropna(subset=["params_config"])
    frame["rank"] = frame["state"].map({"COMPLETE": 2, "PRUNED": 1}).fillna(0)
    frame = frame.sort_values(["rank", "number"]).groupby(["params_config", "params_seed"], dropna=False).tail(1)
    frame = frame.rename(columns={"user_attrs_mlflow_run_id": "run_id"})
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent is None or "run_id" not in frame:
        return frame.assign(run_id=None)
    mlflow.set_tracking_uri(client.tracking_uri)
    experiment = client.get_run(parent).info.experiment_id
    runs = mlflow.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'", output_format="pandas")
    return frame.merge(runs, on="run_id", how="left", suffixes=("", "_run")) if not runs.empty else frame


def _order(sweep: Sweep, trials: list[Trial]) -> list[str]:
    """Configurations in grid order (include entries first, then the product in file order)."""

    def key(trial: Trial) -> tuple:
        values = [trial.values.get(k) for k in sweep.axes]
        positions = [
            [v if not isinstance(v, dict) else v.get(NAME_KEY) for v in sweep.axes[k]].index(value)
            if value in [v if not isinstance(v, dict) else v.get(NAME_KEY) for v in sweep.axes[k]]
            else -1
            for k, value in zip(sweep.axes, values, strict=True)
        ]
        return (NAME_KEY not in trial.values, positions)

    return list(dict.fromkeys(t.config_name for t in sorted(trials, key=key)))


def _param(rows: pd.DataFrame, name: str) -> Any:
    values = rows.get(f"params.{name}", pd.Series(dtype=object)).dropna()
    values = values[~values.isin(["None", ""])]
    if values.empty:
        return None
    value = values.iloc[0]
    try:
        return int(float(value))
    except ValueError:
        return value


def build_report(sweep: Sweep, trials: list[Trial], study: optuna.Study, client: MlflowClient) -> Report:
    """The ablation table of the study's grid."""
    joined = trial_runs(study, client)
    metrics = [c.removeprefix("metrics.") for c in joined if c.startswith("metrics.")]
    metrics = sorted((m for m in metrics if m.split("/")[0] in SPLITS and m.count("/") == 1), key=_metric_key)
    main = sweep.metric or next((m for m in ("test/Avg", "val/Avg") if m in metrics), None)
    rows = []
    for config in _order(sweep, trials):
        group = joined[joined["params_config"] == config]
        done = group[group["state"] == "COMPLETE"]
        described = done if not done.empty else group
        row: dict[str, Any] = {"configuration": config}
        row |= {column: _param(described, name) for column, name in DESCRIBED.items()}
        row["baseline"] = bool(described.get("params.hyperet", pd.Series(dtype=object)).eq("None").any())
        row["variant"] = "baseline (no HyperET)" if row["baseline"] else row["variant"]
        row["encoder"] = next((v for v in (_param(described, p) for p in ENCODER_PARAMS) if v is not None), None)
        row["encoder"] = str(row["encoder"]).rsplit("/", 1)[-1] if row["encoder"] is not None else None
        for metric in [*metrics, DEVIATION, CLAMP]:
            values = pd.to_numeric(done.get(f"metrics.{metric}", pd.Series(dtype=float)), errors="coerce").dropna()
            row[f"{metric} mean"] = values.max() if metric == DEVIATION else values.mean()
            row[f"{metric} std"] = values.std() if len(values) > 1 else 0.0 if len(values) else None
        total = sum(1 for t in trials if t.config_name == config)
        for state, column in (("COMPLETE", "completed"), ("PRUNED", "pruned"), ("FAIL", "failed")):
            row[column] = int((group["state"] == state).sum())
        row["seeds total"] = total
        rows.append(row)
    table = pd.DataFrame(rows)
    _deltas(table, main)
    counts = {c: int(table[c].sum()) for c in ("completed", "pruned", "failed")} if len(table) else {}
    counts["trials"] = len(trials)
    labels = {t.config_name: _label(t) for t in trials}
    return Report(sweep, study.user_attrs.get(PARENT_ATTR), table, metrics, main, counts, labels)


def _metric_key(name: str) -> tuple:
    split, _, category = name.partition("/")
    return (SPLITS[::-1].index(split), category != "Avg", name)


def _deltas(table: pd.DataFrame, main: str | None) -> None:
    """Δparams and Δ of the main metric against the baseline of the same encoder (else the first baseline)."""
    table["Δparams"] = table["Δ main"] = None
    bases = table[table.get("baseline", pd.Series(dtype=bool)) == True]  # noqa: E712 - pandas element-wise
    for index, row in table.iterrows():
        same = bases[bases["encoder"] == row["encoder"]]
        base = (same if not same.empty else bases).head(1)
        if base.empty:
            continue
        if pd.notna(row["trainable"]) and pd.notna(base["trainable"].iloc[0]):
            table.at[index, "Δparams"] = int(row["trainable"]) - int(base["trainable"].iloc[0])
        if main and pd.notna(row.get(f"{main} mean")) and pd.notna(base[f"{main} mean"].iloc[0]):
            table.at[index, "Δ main"] = row[f"{main} mean"] - base[f"{main} mean"].iloc[0]


# ------------------------------------------------------------------------------------------------ formatting


def _fmt(value: Any, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return DASH
    return format(value, spec) if spec else str(value)


def is_accuracy(name: str) -> bool:
    """A ScienceQA accuracy or exact match (``test/Avg``, ``val/NAT``, ``val/exact_match``): shown with two decimals,
    other metrics with four significant digits."""
    split, _, category = name.partition("/")
    return split in SPLITS and (category in CATEGORIES or category == "exact_match")


def _stat(metric: str, mean: Any, std: Any) -> str:
    """``mean ± std`` as logged (accuracies in percent); no ± for one seed."""
    if mean is None or pd.isna(mean):
        return DASH
    spec = ".2f" if is_accuracy(metric) else ".4g"
    return f"{mean:{spec}} ± {std:{spec}}" if std else f"{mean:{spec}}"


def formatted(report: Report) -> pd.DataFrame:
    """The markdown table's cells."""
    t = report.table
    out = pd.DataFrame({"configuration": t["configuration"]})
    for column in ("variant", "space", "encoder"):
        out[column] = t[column].map(_fmt)
    for column, spec in {"d": "", "block size": "", "blocks": "", "n": "", "adapted": "", "Δparams": "+,"}.items():
        out[column] = t[column].map(lambda v, spec=spec: _fmt(None if pd.isna(v) else int(v), spec if v else ""))
    for column in ("HyperET params", "trainable"):
        out[column] = t[column].map(lambda v: _fmt(None if pd.isna(v) else int(v), ","))
    for metric in report.metrics:
        out[metric] = [_stat(metric, m, s) for m, s in zip(t[f"{metric} mean"], t[f"{metric} std"], strict=True)]
    head = ["configuration", "variant", "d", "block size", "blocks", "space", "encoder", "n", "adapted"]
    head += ["HyperET params", "trainable", "Δparams"]
    out = out[head + [c for c in out if c not in head]]
    if report.main_metric:
        spec = "+.2f" if is_accuracy(report.main_metric) else "+.4g"
        out[f"Δ {report.main_metric}"] = t["Δ main"].map(lambda v: _fmt(v, spec))
    out["identity dev. (max)"] = t[f"{DEVIATION} mean"].map(lambda v: _fmt(v, ".2g"))
    out["clamp fraction"] = t[f"{CLAMP} mean"].map(lambda v: _fmt(v, ".2g"))
    out["seeds"] = [
        f"{c}/{n}" + (f" ({p} pruned)" if p else "") + (f" ({f} failed)" if f else "")
        for c, n, p, f in zip(t["completed"], t["seeds total"], t["pruned"], t["failed"], strict=True)
    ]
    return out


def to_markdown(report: Report) -> str:
    """The table with a short header explaining units and conventions."""
    c = report.counts
    lines = [
        f"# Ablation: {report.sweep.name}",
        "",
        f"Sweep `{report.sweep.path}`, MLflow experiment `{report.sweep.experiment}`, parent run `{report.parent_id}`: "
        f"{c['trials']} trials, {c.get('completed', 0)} completed, {c.get('pruned', 0)} pruned, "
        f"{c.get('failed', 0)} failed (pruned and failed ones are left out of the means).",
        f"Main metric: `{report.main_metric}`. Metrics in % as logged, mean ± sample std over the completed seeds. "
        "Δparams and Δ are against the baseline without HyperET (same encoder where there is one). HyperET params "
        "are the exact counts the runs logged for the `adapted` n×n matrices.",
        "",
        markdown_table(formatted(report)),
    ]
    return "\n".join(lines) + "\n"


def console_table(report: Report, width: int = 120) -> str:
    """A summary that fits ``width`` columns: the configuration, counts, the main metric (the full table is in the
    files)."""
    cells = formatted(report)
    columns = [*CONSOLE_COLUMNS, *([report.main_metric, f"Δ {report.main_metric}"] if report.main_metric else [])]
    cells = cells[[c for c in columns if c in cells]].copy()
    budget = width - sum(max(len(c), cells[c].str.len().max()) + 3 for c in cells.columns[1:]) - 4
    cells["configuration"] = cells["configuration"].map(lambda s: s if len(s) <= budget else s[: budget - 1] + "…")
    return markdown_table(cells)


def chart_figure(report: Report) -> Figure:
    """A horizontal bar chart of the main metric per configuration, from zero, with std error bars (Agg backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = report.main_metric
    t = report.table
    t = t[t[f"{metric} mean"].notna()] if metric and f"{metric} mean" in t else t.iloc[0:0]
    fig = Figure(figsize=(8, 1.4 + 0.35 * max(len(t), 1)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if len(t):
        labels = [report.labels.get(name, name) for name in t["configuration"]]
        colors = ["0.6" if b else "tab:blue" for b in t["baseline"]]
        ax.barh(range(len(t)), t[f"{metric} mean"], xerr=t[f"{metric} std"].fillna(0), color=colors, capsize=3)
        ax.set_yticks(range(len(t)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(left=0)
    else:
        ax.text(0.5, 0.5, "no completed trials", ha="center", va="center", transform=ax.transAxes)
    unit = " (%)" if metric and is_accuracy(metric) else ""
    ax.set_xlabel(f"{metric}{unit}, mean ± std over seeds" if metric else "")
    ax.set_title(f"{report.sweep.name}: {metric}")
    return fig


def _label(trial: Trial) -> str:
    """A configuration's axis values without their keys (``banded · hyperbolic``); include entries by name."""
    if NAME_KEY in trial.values or not trial.values:
        return trial.config_name
    return " · ".join(cli_value(v) for v in trial.values.values())


def write_report(report: Report, out_dir: Path, client: MlflowClient | None = None) -> list[Path]:
    """Write ``ablation.md``, ``ablation.csv`` and ``ablation.png`` into ``out_dir`` (and log them to the parent
    run); returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv, png = out_dir / "ablation.md", out_dir / "ablation.csv", out_dir / "ablation.png"
    md.write_text(to_markdown(report))
    report.table.to_csv(csv, index=False)
    chart_figure(report).savefig(png, dpi=120)
    if client is not None and report.parent_id is not None:
        for path in (md, csv, png):
            client.log_artifact(report.parent_id, str(path))
    return [md, csv, png]
