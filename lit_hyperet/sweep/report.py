"""The ablation table of a sweep from its study and MLflow runs, built with pandas: ``ablation.{md,csv,png}``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient

from lit_hyperet.sweep.spec import CONFIG_KEY, NAME_KEY, Sweep, Trial, aliases, cli_value, slug
from lit_hyperet.sweep.study import PARENT_ATTR
from lit_hyperet.tables import format_cells, markdown_table
from lit_hyperet.tasks.scienceqa.rules import CATEGORIES

DEVIATION, CLAMP, DASH = "hyperet/identity_deviation_max", "hyperet/clamp_fraction_mean", "—"
#: Columns shown where the runs use HyperET -> the run parameters they show (the first one logged).
HYPERET_COLUMNS = {
    "variant": ["hyperet/variant"], "d": ["hyperet/band_width"], "block size": ["hyperet/block_size"],
    "blocks": ["hyperet/num_blocks"], "space": ["hyperet/space"],
    "encoder": ["model/init_args/vision", "model/init_args/vision_path", "model/init_args/path"],
    "n": ["params/hyperet_n"], "adapted": ["params/hyperet_adapted_modules"], "HyperET params": ["params/hyperet"],
}  # fmt: skip
BASELINE_NOTE = (" Δparams and Δ are against the baseline without HyperET (same encoder where there is one). HyperET "
                 "params are the exact counts the runs logged for the `adapted` n×n matrices.")  # fmt: skip
COUNTS = {"d": "", "block size": "", "blocks": "", "n": "", "adapted": "", "HyperET params": ",", "trainable": ","}
COUNTS["Δparams"] = "+,"


@dataclass
class Report:
    """The table (one row per configuration, numbers unformatted) and what it was computed from."""

    sweep: Sweep
    parent_id: str | None
    table: pd.DataFrame
    columns: list[str]  # what tells the configurations apart: axis values, then HyperET where the runs use it
    metrics: list[str]
    main_metric: str | None


def trial_runs(study: optuna.Study, client: MlflowClient) -> pd.DataFrame:
    """Per grid point its latest completed, else pruned, else any trial, joined with that trial's MLflow run."""
    frame = study.trials_dataframe(attrs=("number", "state", "params", "user_attrs"))
    if frame.empty or "params_config" not in frame:
        return pd.DataFrame(columns=["params_config", "params_seed", "state", "run_id"])
    frame["rank"] = frame["state"].map({"COMPLETE": 2, "PRUNED": 1}).fillna(0)
    frame = frame.dropna(subset=["params_config"]).sort_values(["rank", "number"])
    frame = frame.groupby(["params_config", "params_seed"], dropna=False).tail(1)
    frame = frame.rename(columns={"user_attrs_mlflow_run_id": "run_id"})
    if (parent := study.user_attrs.get(PARENT_ATTR)) is None or "run_id" not in frame:
        return frame.assign(run_id=None)
    mlflow.set_tracking_uri(client.tracking_uri)
    experiment = client.get_run(parent).info.experiment_id
    runs = mlflow.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'", output_format="pandas")
    return frame.merge(runs, on="run_id", how="left", suffixes=("", "_run")) if not runs.empty else frame


def _number(value: Any) -> Any:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return value


def build_report(sweep: Sweep, trials: list[Trial], study: optuna.Study, client: MlflowClient) -> Report:
    """The ablation table of the study's grid, configurations in file order."""
    runs = trial_runs(study, client).sort_values("state", key=lambda s: s != "COMPLETE", kind="stable")
    metrics = [c.removeprefix("metrics.") for c in runs.filter(regex=r"^metrics\.(val|test)/[^/]+$")]
    metrics = sorted(metrics, key=lambda m: (m.startswith("val"), m.partition("/")[2] != "Avg", m))
    main = sweep.metric or next((m for m in ("test/Avg", "val/Avg") if m in metrics), None)
    configs = {t.config_name: t for t in sorted(trials, key=lambda t: t.order)}
    table = pd.DataFrame({"configuration": list(configs)}, index=list(configs))
    params = runs.filter(like="params.")
    described = params.mask(params.isin(["None", ""])).groupby(runs["params_config"]).first().reindex(table.index)

    def param(*names: str) -> pd.Series:  # the first of these a run of the configuration logged, completed runs first
        return described.reindex(columns=[f"params.{n}" for n in names]).bfill(axis=1).iloc[:, 0].map(_number)

    uses_hyperet = bool(param("hyperet/variant").notna().any())
    no_hyperet = params.reindex(columns=["params.hyperet"]).eq("None").groupby(runs["params_config"]).any()
    table["baseline"] = no_hyperet["params.hyperet"].reindex(table.index, fill_value=False).astype(bool) & uses_hyperet
    # An axis that a shown HyperET column describes (model.init_args.hyperet.variant: variant) goes into that column.
    shown_in = {n.replace("/", "."): c for c, names in HYPERET_COLUMNS.items() for n in names} if uses_hyperet else {}
    for key, short in aliases(sweep.axes).items():
        show = slug if key == CONFIG_KEY else cli_value
        column = next((c for name, c in shown_in.items() if key.endswith(f".{name}")), short)
        table[column] = [show(t.values[key]) if key in t.values else None for t in configs.values()]
    for column, names in HYPERET_COLUMNS.items() if uses_hyperet else ():  # what the axes leave open, as logged
        logged = param(*names).map(lambda v: v.rsplit("/", 1)[-1] if isinstance(v, str) else v)  # encoder dirs
        table[column] = table[column].fillna(logged) if column in table else logged
    columns = [c for c in table if c not in ("configuration", "baseline")]
    if uses_hyperet:
        table["variant"] = table["variant"].mask(table["baseline"] & table["variant"].isna(), "baseline (no HyperET)")
    table["trainable"] = param("params/trainable")
    done = runs[runs["state"] == "COMPLETE"]
    names = [*metrics, DEVIATION, CLAMP] if uses_hyperet else metrics  # HyperET diagnostics where it is used
    values = done.reindex(columns=[f"metrics.{m}" for m in names]).set_axis(names, axis=1)
    grouped = values.apply(pd.to_numeric, errors="coerce").groupby(done["params_config"])
    means = grouped.mean().assign(**({DEVIATION: grouped[DEVIATION].max()} if uses_hyperet else {}))
    table = table.join(means.add_suffix(" mean")).join(grouped.std().mask(grouped.count() == 1, 0.0).add_suffix(" std"))
    if table["baseline"].any():  # Δ against the baseline of the same encoder, else the first baseline
        bases = table.index[table["baseline"]]
        base_of = {encoder: c for c, encoder in table.loc[bases[::-1], "encoder"].astype(str).items()}
        refs = [base_of.get(encoder, bases[0]) for encoder in table["encoder"].astype(str)]
        table["Δparams"] = table["trainable"].to_numpy() - table.loc[refs, "trainable"].to_numpy()
        if f"{main} mean" in table:
            table["Δ main"] = table[f"{main} mean"].to_numpy() - table.loc[refs, f"{main} mean"].to_numpy()
    states = pd.crosstab(runs["params_config"], runs["state"]).reindex(table.index, fill_value=0)
    table[["completed", "pruned", "failed"]] = states.reindex(columns=["COMPLETE", "PRUNED", "FAIL"], fill_value=0)
    table["seeds total"] = pd.Series([t.config_name for t in trials]).value_counts()
    labels = {c: " · ".join(map(cli_value, t.values.values())) for c, t in configs.items() if t.values}
    table["label"] = [c if NAME_KEY in configs[c].values else labels.get(c, c) for c in configs]
    return Report(sweep, study.user_attrs.get(PARENT_ATTR), table.reset_index(drop=True), columns, metrics, main)


def is_accuracy(name: str) -> bool:
    """A ScienceQA accuracy or exact match (``test/Avg``, ``val/exact_match``): two decimals, else 4 digits."""
    split, _, category = name.partition("/")
    return split in ("val", "test") and (category in CATEGORIES or category == "exact_match")


def formatted(report: Report) -> pd.DataFrame:
    """The markdown table's cells: counts as integers (no sign or separator for 0), metrics as mean ± std as logged
    (accuracies in percent, no ± for one seed), ``—`` for a missing value."""
    t, main = report.table, report.main_metric
    out = t[[c for c in ["configuration", *report.columns, "trainable", "Δparams"] if c in t]].copy()
    formats: dict[str, Any] = {c: lambda v, sep=sep: format(int(v), sep if v else "") for c, sep in COUNTS.items()}
    for metric in report.metrics:
        spec = ".2f" if is_accuracy(metric) else ".4g"
        pairs = zip(t[f"{metric} mean"], t[f"{metric} std"], strict=True)
        out[metric] = [None if pd.isna(m) else f"{m:{spec}} ± {s:{spec}}" if s else f"{m:{spec}}" for m, s in pairs]
    if "Δ main" in t:
        out[f"Δ {main}"], formats[f"Δ {main}"] = t["Δ main"], "+.2f" if is_accuracy(main) else "+.4g"
    if "HyperET params" in report.columns:  # the runs use HyperET
        out["identity dev. (max)"], out["clamp fraction"] = t[f"{DEVIATION} mean"], t[f"{CLAMP} mean"]
        formats |= {"identity dev. (max)": ".2g", "clamp fraction": ".2g"}
    seeds = zip(t["completed"], t["seeds total"], t["pruned"], t["failed"], strict=True)
    out["seeds"] = [f"{c}/{n}" + f" ({p} pruned)" * bool(p) + f" ({f} failed)" * bool(f) for c, n, p, f in seeds]
    return format_cells(out, formats, DASH)


def chart_figure(report: Report) -> Figure:
    """A horizontal bar chart of the main metric per configuration, from zero, with std error bars."""
    metric, t = report.main_metric, report.table
    t = t[t[f"{metric} mean"].notna()] if f"{metric} mean" in t else t.iloc[0:0]
    fig = Figure(figsize=(8, 1.4 + 0.35 * max(len(t), 1)), layout="constrained")
    ax = fig.add_subplot()
    if len(t):
        colors = ["0.6" if baseline else "tab:blue" for baseline in t["baseline"]]
        ax.barh(range(len(t)), t[f"{metric} mean"], xerr=t[f"{metric} std"].fillna(0), color=colors, capsize=3)
        ax.set_yticks(range(len(t)), t["label"], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(left=0)
    else:
        ax.text(0.5, 0.5, "no completed trials", ha="center", va="center", transform=ax.transAxes)
    unit = " (%)" if metric and is_accuracy(metric) else ""
    ax.set_xlabel(f"{metric}{unit}, mean ± std over seeds" if metric else "")
    ax.set_title(f"{report.sweep.name}: {metric}")
    return fig


def report(sweep: Sweep, trials: list[Trial], study: optuna.Study, client: MlflowClient) -> int:
    """Write ``ablation.{md,csv,png}`` into the sweep's output dir, log them to the parent run, print a summary."""
    result, out_dir = build_report(sweep, trials, study, client), Path(sweep.output_dir)
    t, header = result.table, [f"# Ablation: {sweep.name}", ""]
    header.append(f"Sweep `{sweep.path}`, MLflow experiment `{sweep.experiment}`, parent run `{result.parent_id}`: "
                  f"{t['seeds total'].sum()} trials, {t['completed'].sum()} completed, {t['pruned'].sum()} pruned, "
                  f"{t['failed'].sum()} failed (pruned and failed ones are left out of the means).")  # fmt: skip
    header.append(f"Main metric: `{result.main_metric}`. Metrics as logged (accuracies in %), mean ± sample std over "
                  "the completed seeds." + (BASELINE_NOTE if "Δparams" in t else "") + "\n")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"ablation.{ext}" for ext in ("md", "csv", "png")]
    paths[0].write_text("\n".join([*header, markdown_table(cells := formatted(result))]) + "\n")
    t.to_csv(paths[1], index=False)
    chart_figure(result).savefig(paths[2], dpi=120)
    for path in paths if result.parent_id is not None else ():
        client.log_artifact(result.parent_id, str(path))
    main = [result.main_metric, f"Δ {result.main_metric}"] if result.main_metric else []  # the console's summary:
    cells = cells[[c for c in ["configuration", "HyperET params", "Δparams", "seeds", *main] if c in cells]].copy()
    budget = 120 - sum(max(len(c), cells[c].str.len().max()) + 3 for c in cells.columns[1:]) - 4
    cells["configuration"] = cells["configuration"].map(lambda s: s if len(s) <= budget else s[: budget - 1] + "…")
    print(markdown_table(cells))
    print("wrote " + ", ".join(map(str, paths)) + f" (logged to parent run {result.parent_id})", flush=True)
    return 0
