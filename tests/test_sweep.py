"""Sweeps: grid expansion, dry-run, resume, failures, the ablation report, and a real 2-trial demo sweep."""

from __future__ import annotations

import csv
import shlex
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from lit_hyperet.sweep import SweepError, expand, load_sweep, main
from lit_hyperet.sweep.report import chart_figure, collect
from lit_hyperet.sweep.runner import Tracker, main_metric_summary
from lit_hyperet.sweep.spec import trial_tags

pytestmark = pytest.mark.filterwarnings("ignore:.*noload.*:DeprecationWarning")  # MLflow's sqlalchemy store

REPO = Path(__file__).resolve().parents[1]
VARIANT = "model.init_args.hyperet.variant"
SPACE = "model.init_args.hyperet.space"


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def base_config(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "base.yaml",
        {
            "model": {"init_args": {"hyperet": {"variant": "diagonal"}, "model": {"init_args": {"vision": "clip"}}}},
            "data": {"init_args": {"test_split": "test"}},
        },
    )


@pytest.fixture
def uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite store in a temporary working dir."""
    monkeypatch.chdir(tmp_path)
    value = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", value)
    return value


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _children(uri: str, experiment: str) -> list:
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`sweep.role` = 'trial'", order_by=["attributes.start_time"])
    return list(runs)


# ------------------------------------------------------------------------------------------------ expansion


def test_grid_exclude_include_and_seeds(tmp_path: Path, base_config: Path) -> None:
    sweep_file = _write(
        tmp_path / "grid.yaml",
        {
            "configs": [str(base_config)],
            "overrides": {"trainer.max_steps": 3},
            "axes": {VARIANT: ["diagonal", "banded"], SPACE: ["euclidean", "hyperbolic_no_mobius", "hyperbolic"]},
            "exclude": [{VARIANT: "banded", SPACE: "euclidean"}],
            "include": [{"name": "baseline", "model.init_args.hyperet": None}],
            "seeds": [0, 1],
        },
    )
    sweep = load_sweep(sweep_file, ["trainer.max_steps=5"])
    trials = expand(sweep)
    assert sweep.name == "grid" and len(trials) == (2 * 3 - 1 + 1) * 2
    names = [t.name for t in trials]
    assert len(set(names)) == len(names)
    assert names[:2] == ["baseline,seed=0", "baseline,seed=1"]
    assert "variant=banded,space=euclidean,seed=0" not in names
    assert "variant=banded,space=hyperbolic,seed=1" in names
    by_name = {t.name: t for t in trials}
    banded = by_name["variant=banded,space=hyperbolic,seed=1"]
    assert dict(banded.assignments)[VARIANT] == "banded" and dict(banded.assignments)["seed_everything"] == 1
    assert banded.resolved["trainer"]["max_steps"] == 5  # --override wins over the file's overrides
    assert banded.output_dir == "outputs/sweeps/grid/variant=banded,space=hyperbolic,seed=1"
    assert banded.test is True  # the data config names a test split
    baseline = by_name["baseline,seed=0"]
    assert baseline.resolved["model"]["init_args"]["hyperet"] is None
    # hashes: equal configs hash equally, seeds and values do not
    hashes = {t.name: t.config_hash for t in trials}
    assert len(set(hashes.values())) == len(trials)
    assert expand(load_sweep(sweep_file, ["trainer.max_steps=5"]))[3].config_hash == trials[3].config_hash
    assert expand(load_sweep(sweep_file))[3].config_hash != trials[3].config_hash


def test_bundle_and_config_axes_and_list_includes(tmp_path: Path, base_config: Path) -> None:
    delta = _write(tmp_path / "banded.yaml", {"model": {"init_args": {"hyperet": {"variant": "banded"}}}})
    sweep_file = _write(
        tmp_path / "bundles.yaml",
        {
            "name": "b",
            "configs": [str(base_config)],
            "axes": {
                "encoder": [
                    {"name": "clip", "model.init_args.model.init_args.vision": "clip"},
                    {"name": "siglip", "model.init_args.model.init_args.vision": "siglip"},
                ],
                "config": [None, str(delta)],
            },
            "exclude": [{"encoder": "siglip", "config": None}],
            "include": [
                {
                    "name": "baseline",
                    "model.init_args.hyperet": None,
                    "model.init_args.model.init_args.vision": ["clip", "siglip"],
                }
            ],
        },
    )
    trials = expand(load_sweep(sweep_file))
    names = [t.name for t in trials]
    assert names == [
        "baseline,vision=clip",
        "baseline,vision=siglip",
        "encoder=clip,config=null",
        "encoder=clip,config=banded",
        "encoder=siglip,config=banded",
    ]
    last = trials[-1]
    assert last.configs[-1] == str(delta) and last.resolved["model"]["init_args"]["hyperet"]["variant"] == "banded"
    assert last.resolved["model"]["init_args"]["model"]["init_args"]["vision"] == "siglip"
    assert trial_tags(load_sweep(sweep_file), last)["axis.encoder"] == "siglip"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"configs": ["base.yaml"], "axis": {}}, "axis: unknown key"),
        ({"configs": ["missing.yaml"]}, "configs[0]: config file 'missing.yaml' not found"),
        ({"configs": ["base.yaml"], "axes": {VARIANT: []}}, f"axes.{VARIANT}: expected a non-empty list"),
        ({"configs": ["base.yaml"], "axes": {VARIANT: ["a"]}, "exclude": [{SPACE: "x"}]}, "exclude: 'model.init"),
        ({"configs": ["base.yaml"], "axes": {"encoder": ["clip"]}}, "axes.encoder[0]: expected a mapping"),
        ({"configs": ["base.yaml"], "seeds": ["a"]}, "seeds: expected a list of integers"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, base_config: Path, content: dict, message: str) -> None:
    path = _write(tmp_path / "bad.yaml", content)
    with pytest.raises(SweepError) as info:
        expand(load_sweep(path))
    assert str(path) in str(info.value) and message in str(info.value)


def test_dry_run_prints_one_command_per_trial(tmp_path: Path, base_config: Path, capsys) -> None:
    sweep_file = _write(
        tmp_path / "dry.yaml",
        {
            "configs": [str(base_config)],
            "axes": {VARIANT: ["diagonal", "banded", "full"]},
            "include": [{"name": "baseline", "model.init_args.hyperet": None}],
            "seeds": [0, 1],
            "env": {"OMP_NUM_THREADS": "1"},
        },
    )
    strategy = _write(tmp_path / "ddp.yaml", {"trainer": {"strategy": "ddp"}})
    argv = [str(sweep_file), "--dry-run", "--override", "trainer.max_steps=5", "trainer.devices=8"]
    argv += ["--config", str(strategy)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8
    for line in lines:
        fit, _, test = line.partition(" && ")
        assert fit.startswith("OMP_NUM_THREADS=1 ") and test.startswith("OMP_NUM_THREADS=1 ")  # the sweep's env
        fit, test = fit.removeprefix("OMP_NUM_THREADS=1 "), test.removeprefix("OMP_NUM_THREADS=1 ")
        argv = shlex.split(fit)
        assert argv[:4] == [sys.executable, "-m", "lit_hyperet", "fit"]
        assert argv[4:8] == ["--config", str(base_config), "--config", str(strategy)]
        assert "--trainer.max_steps" in argv and argv[argv.index("--trainer.max_steps") + 1] == "5"
        assert argv[argv.index("--trainer.devices") + 1] == "8"
        assert "--seed_everything" in argv and "--trainer.logger.init_args.run_name" in argv
        assert shlex.split(test)[3] == "test" and "--ckpt_path" in test  # the data config has a test split
    assert "--model.init_args.hyperet null" in lines[0]


# ------------------------------------------------------------------------------------------------ running


FAKE_CLI = textwrap.dedent("""
    import sys
    for i in range(80):
        print(f"fake trial line {i}")
    if "broken" in sys.argv:
        print("error: invalid HyperET variant 'broken'")
        sys.exit(3)
""")


def _fake_sweep(tmp_path: Path, base_config: Path, variants: list[str]) -> Path:
    """A sweep whose launcher is a stand-in script (``command``), so no model is trained."""
    (tmp_path / "fake_cli.py").write_text(FAKE_CLI)
    return _write(
        tmp_path / "fake.yaml",
        {
            "experiment": "fake",
            "configs": [str(base_config)],
            "command": ["python", str(tmp_path / "fake_cli.py")],
            "test": False,
            "axes": {VARIANT: variants},
        },
    )


def test_failure_is_recorded_and_resume_skips_finished(tmp_path: Path, base_config: Path, uri: str) -> None:
    sweep_file = _fake_sweep(tmp_path, base_config, ["broken", "diagonal"])
    assert main([str(sweep_file)]) == 1  # a trial failed, the sweep went on
    runs = {r.data.tags["sweep.trial"]: r for r in _children(uri, "fake")}
    assert set(runs) == {"variant=broken", "variant=diagonal"}
    broken, ok = runs["variant=broken"], runs["variant=diagonal"]
    assert broken.info.status == "FAILED" and ok.info.status == "FINISHED"
    assert ok.data.tags["mlflow.parentRunId"] == broken.data.tags["mlflow.parentRunId"]
    assert ok.data.tags[f"axis.{VARIANT}"] == "diagonal" and len(ok.data.tags["sweep.hash"]) == 16
    tail = broken.data.tags["sweep.log_tail"]
    assert "invalid HyperET variant 'broken'" in tail and "fake trial line 79" in tail
    assert "fake trial line 20" not in tail  # only the last ~50 lines
    assert "fit exited with code 3" in broken.data.tags["sweep.error"]
    text = _client(uri).download_artifacts(broken.info.run_id, "log_tail.txt", str(tmp_path))
    assert "invalid HyperET variant" in Path(text).read_text()
    # resume: the finished trial is skipped, the failed one reruns in a new child run
    assert main([str(sweep_file)]) == 1
    again = _children(uri, "fake")
    assert [r.data.tags["sweep.trial"] for r in again].count("variant=diagonal") == 1
    reruns = [r for r in again if r.data.tags["sweep.trial"] == "variant=broken"]
    assert [r.data.tags["sweep.attempt"] for r in reruns] == ["1", "2"]
    assert (tmp_path / "outputs/sweeps/fake/ablation.md").is_file()


def test_max_trials_cuts_short_with_exit_zero_and_a_table(tmp_path: Path, base_config: Path, uri: str) -> None:
    sweep_file = _fake_sweep(tmp_path, base_config, ["diagonal", "banded", "full"])
    assert main([str(sweep_file), "--max-trials", "1"]) == 0
    assert len(_children(uri, "fake")) == 1
    table = (tmp_path / "outputs/sweeps/fake/ablation.csv").read_text()
    rows = list(csv.DictReader(table.splitlines()))
    assert [r["seeds_finished"] for r in rows] == ["1", "0", "0"]
    assert main([str(sweep_file), "--max-trials", "1"]) == 0  # picks up where it stopped
    assert len(_children(uri, "fake")) == 2
    assert main([str(sweep_file), "--trial", "variant=full", "--trial", "0"]) == 0  # one cluster job's trials
    children = _children(uri, "fake")
    assert [r.data.tags["sweep.trial"] for r in children] == ["variant=diagonal", "variant=banded", "variant=full"]
    assert len({r.data.tags["mlflow.parentRunId"] for r in children}) == 1


# ------------------------------------------------------------------------------------------------ report


def test_report_from_runs_in_a_sqlite_store(tmp_path: Path, base_config: Path, uri: str, capsys) -> None:
    sweep_file = _write(
        tmp_path / "rep.yaml",
        {
            "experiment": "rep",
            "configs": [str(base_config)],
            "axes": {
                "variant": [
                    {"name": "block4", VARIANT: "block_diagonal", "model.init_args.hyperet.block_size": 4},
                    {"name": "banded2", VARIANT: "banded", "model.init_args.hyperet.band_width": 2},
                ]
            },
            "include": [{"name": "baseline", "model.init_args.hyperet": None}],
            "seeds": [0, 1],
        },
    )
    sweep = load_sweep(sweep_file)
    trials = expand(sweep)
    client = _client(uri)
    exp_id = client.create_experiment("rep")
    parent = client.create_run(exp_id, tags={"sweep.name": "rep", "sweep.role": "parent"}).info.run_id
    # n = 64, 4 adapted matrices: block size 4 -> 256 per matrix, banded d = 2 -> 5n - 6 = 314
    setups = {
        "baseline": ({"hyperet": "None", "params/hyperet": "0", "params/hyperet_adapted_modules": "0"}, 1000, 50.0),
        "variant=block4": (
            {
                "hyperet/variant": "block_diagonal",
                "hyperet/block_size": "4",
                "hyperet/num_blocks": "None",
                "params/hyperet": "1024",
                "params/hyperet_adapted_modules": "4",
            },
            2024,
            60.0,
        ),
        "variant=banded2": (
            {
                "hyperet/variant": "banded",
                "hyperet/band_width": "2",
                "params/hyperet": "1256",
                "params/hyperet_adapted_modules": "4",
            },
            2256,
            55.0,
        ),
    }
    for trial in trials:
        params, trainable, acc = setups[trial.config_name]
        tags = trial_tags(sweep, trial) | {"mlflow.parentRunId": parent, "sweep.outcome": "ok"}
        run_id = client.create_run(exp_id, run_name=trial.name, tags=tags).info.run_id
        extra = {"params/trainable": str(trainable), "model/init_args/vision": "clip", "hyperet/space": "hyperbolic"}
        for key, value in (params | extra).items():
            client.log_param(run_id, key, value)
        delta = 2.0 * trial.seed  # seeds 0, 1 -> acc, acc + 2 (accuracies are logged in percent)
        client.log_metric(run_id, "test/Avg", acc + delta)
        client.log_metric(run_id, "test/NAT", acc)
        client.log_metric(run_id, "val/Avg", acc)
        client.log_metric(run_id, "val/topic/physics", 10.0)
        if trial.config_name != "baseline":
            client.log_metric(run_id, "hyperet/identity_deviation_max", 1e-7 * (1 + trial.seed))
            client.log_metric(run_id, "hyperet/clamp_fraction_mean", 0.0)
        client.set_terminated(run_id, "FINISHED")
    assert main([str(sweep_file), "--report"]) == 0
    out = tmp_path / "outputs/sweeps/rep"
    rows = {r["configuration"]: r for r in csv.DictReader((out / "ablation.csv").read_text().splitlines())}
    assert list(rows) == ["baseline", "variant=block4", "variant=banded2"]
    block = rows["variant=block4"]
    described = (block["variant"], block["block_size"], block["num_blocks"], block["n"])
    assert described == ("block_diagonal", "4", "16", "64")
    assert block["delta_params"] == "1024" and rows["variant=banded2"]["band_width"] == "2"
    assert float(block["test/Avg_mean"]) == pytest.approx(61.0)  # as logged: percent
    assert float(block["test/Avg_std"]) == pytest.approx(1.41421, rel=1e-4)
    assert float(block["delta_test/Avg"]) == pytest.approx(10.0)
    assert float(block["identity_deviation_max"]) == pytest.approx(2e-7)
    assert "val/topic/physics_mean" not in block
    md = (out / "ablation.md").read_text()
    row = "| variant=block4 | block_diagonal | — | 4 | 16 | hyperbolic | tiny-clip | 64 | 4 | 1,024 | 2,024 | +1,024 |"
    assert row in md
    assert "61.00 ± 1.41" in md and "+10.00" in md
    # every accuracy column as logged (percent), none scaled: baseline test/NAT 50, test/Avg 50 and 52, val/Avg 50
    assert "| 50.00 ± 0.00 | 51.00 ± 1.41 | 50.00 ± 0.00 | +0.00 |" in md
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    report = collect(sweep, trials, Tracker(sweep, uri), parent)
    ax = chart_figure(report).axes[0]
    bars = [patch.get_width() for patch in ax.patches]
    assert bars == pytest.approx([51.0, 61.0, 56.0])  # the test/Avg means, in percent as logged
    assert ax.get_xlabel() == "test/Avg (%), mean ± std over seeds"
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"ablation.md", "ablation.csv", "ablation.png"} <= artifacts
    assert "variant=banded2" in capsys.readouterr().out


def test_trial_summary_line_prints_accuracies_in_percent() -> None:
    # what the runner prints after each trial: the metrics are logged in percent and printed with two decimals
    metrics = {"test/Avg": 10.416666, "val/Avg": 12.5, "val/exact_match": 200 / 3, "val/loss": 0.123456}
    assert main_metric_summary(metrics) == ", test/Avg=10.42"
    assert main_metric_summary({"val/Avg": 12.5}) == ", val/Avg=12.50"
    assert main_metric_summary(metrics, "val/exact_match") == ", val/exact_match=66.67"
    assert main_metric_summary(metrics, "val/loss") == ", val/loss=0.1235"  # not an accuracy: as before
    assert main_metric_summary(metrics, "test/NAT") == ", test/Avg=10.42"  # the sweep's metric was not logged
    assert main_metric_summary({"train/loss": 1.0}) == ""


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_demo_sweep_end_to_end(tmp_path: Path, uri: str, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    """Two real trials through `python -m lit_hyperet fit` (and `test` where the data has a test split)."""
    sweep_file = _write(
        tmp_path / "e2e.yaml",
        {
            "experiment": "e2e",
            "configs": [str(REPO / "configs/demo.yaml")],
            "overrides": {
                "model.init_args.model.init_args.path": str(tiny_model_dir),
                "data.init_args.data_dir": str(demo_data_dir),
                "data.init_args.batch_size": 2,
                "data.init_args.eval_batch_size": 4,
                "trainer.val_check_interval": 1,
                "trainer.limit_val_batches": 1,
                "trainer.limit_test_batches": 1,
                "trainer.enable_progress_bar": False,
                "trainer.enable_model_summary": False,
            },
            "axes": {VARIANT: ["banded"]},
            "include": [{"name": "baseline", "model.init_args.hyperet": None, "data.init_args.test_split": None}],
        },
    )
    assert main([str(sweep_file), "--override", "trainer.max_steps=1"]) == 0
    runs = {r.data.tags["sweep.trial"]: r for r in _children(uri, "e2e")}
    assert set(runs) == {"baseline", "variant=banded"}
    banded, baseline = runs["variant=banded"], runs["baseline"]
    assert banded.info.status == baseline.info.status == "FINISHED"
    assert banded.data.params["hyperet/variant"] == "banded" and banded.data.params["params/hyperet"] == "1256"
    assert "val/Avg" in banded.data.metrics and "test/Avg" in banded.data.metrics  # fit, then test
    assert "val/Avg" in baseline.data.metrics and "test/Avg" not in baseline.data.metrics  # no test split
    assert (tmp_path / "outputs/sweeps/e2e/variant=banded/checkpoints/last.ckpt").is_file()
    md = (tmp_path / "outputs/sweeps/e2e/ablation.md").read_text()
    assert "| variant=banded | banded | 2 |" in md and "| baseline | baseline (no HyperET) |" in md
