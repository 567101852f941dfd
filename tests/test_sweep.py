"""Sweeps on Optuna: grid expansion, resume, signals, workers, pruning, the report, the submitit launcher, and a real
2-trial demo sweep. Orchestration tests run a stand-in trial command (the sweep file's ``command``) through the real
runner; the last test runs `python -m lit_hyperet fit` / `test`."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lit_hyperet.sweep import SweepError, expand, load_sweep, main
from lit_hyperet.sweep.spec import dir_name

pytestmark = pytest.mark.filterwarnings("ignore:.*noload.*:DeprecationWarning")  # MLflow's sqlalchemy store

REPO = Path(__file__).resolve().parents[1]
VARIANT = "model.init_args.hyperet.variant"
SPACE = "model.init_args.hyperet.space"

# A stand-in for `python -m lit_hyperet fit|test`: logs what the variant says into the run the sweep created.
FAKE_CLI = textwrap.dedent("""
    import os, sys, time
    argv = sys.argv[1:]
    def arg(key):
        for i, a in enumerate(argv):
            if a == f"--{key}":
                return argv[i + 1]
    variant, stage = arg("model.init_args.hyperet.variant"), argv[0]
    for i in range(80):
        print(f"fake trial line {i}")
    if variant == "broken":
        print("error: invalid HyperET variant 'broken'")
        sys.exit(3)
    if variant == "slow" and os.environ.get("FAKE_SLOW") == "1":
        with open(os.environ["FAKE_PIDS"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(300)
    from mlflow import MlflowClient
    client, run_id = MlflowClient(), arg("trainer.logger.init_args.run_id")
    sizes = {"diagonal": 256, "banded": 1256}
    if stage == "fit" and variant in sizes:
        for key, value in {"hyperet/variant": variant, "params/hyperet": sizes[variant], "params/trainable": 1000 +
                           sizes[variant], "params/hyperet_n": 64, "params/hyperet_adapted_modules": 4,
                           "hyperet/band_width": 2 if variant == "banded" else None}.items():
            client.log_param(run_id, key, value)
    elif stage == "fit":
        client.log_param(run_id, "hyperet", None)
        client.log_param(run_id, "params/trainable", 1000)
    seed = int(arg("seed_everything") or 0)
    value = {"diagonal": 60.0, "banded": 55.0}.get(variant, 50.0) + 2.0 * seed
    client.log_metric(run_id, f"{'val' if stage == 'fit' else 'test'}/Avg", value)
    client.log_metric(run_id, "test/NAT" if stage == "test" else "val/topic/physics", value - 1)
""")


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def base_config(tmp_path: Path) -> Path:
    return _write(tmp_path / "base.yaml", {"model": {"init_args": {"hyperet": {"variant": "diagonal"}}}})


@pytest.fixture
def uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite MLflow store (and Optuna storage beside it) in a temporary working dir."""
    monkeypatch.chdir(tmp_path)
    value = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", value)
    return value


def _fake_sweep(tmp_path: Path, base_config: Path, variants: list, **extra) -> Path:
    (tmp_path / "fake_cli.py").write_text(FAKE_CLI)
    content = {
        "experiment": "fake",
        "configs": [str(base_config)],
        "command": ["python", str(tmp_path / "fake_cli.py")],
    }
    content |= {"test": False, "axes": {VARIANT: variants}} | extra
    return _write(tmp_path / "fake.yaml", content)


def _trials(tmp_path: Path, url: str | None = None) -> pd.DataFrame:
    import optuna

    from lit_hyperet.optuna_store import open_storage

    storage = open_storage(url or f"sqlite:///{tmp_path}/optuna.db")
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    return study.trials_dataframe(attrs=("number", "state", "params", "user_attrs"))


def _runs(uri: str, experiment: str = "fake") -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`sweep.role` = 'trial'", order_by=["attributes.start_time"])
    return {r.info.run_id: r for r in runs}


def _sweep_process(argv: list[str], **env: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lit_hyperet", "sweep", *argv]
    return subprocess.Popen(cmd, env=os.environ | env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_pid(path: Path, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text().split()[0])
        time.sleep(0.2)
    raise AssertionError("the trial did not start")


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


# ------------------------------------------------------------------------------------------------ the grid


def test_grid_exclude_include_seeds_and_spread_order(tmp_path: Path, base_config: Path) -> None:
    sweep_file = _write(
        tmp_path / "grid.yaml",
        {
            "configs": [str(base_config)],
            "axes": {VARIANT: ["diagonal", "banded"], SPACE: ["euclidean", "hyperbolic_no_mobius", "hyperbolic"]},
            "exclude": [{VARIANT: "banded", SPACE: "euclidean"}],
            "include": [{"name": "baseline", "model.init_args.hyperet": None}],
            "seeds": [0, 1],
        },
    )
    trials = expand(load_sweep(sweep_file, ["trainer.max_steps=5"]))
    names = [t.name for t in trials]
    assert len(trials) == (2 * 3 - 1 + 1) * 2 and len(set(names)) == len(names)
    assert "variant=banded,space=euclidean,seed=0" not in names
    # every configuration at seed 0 before any at seed 1; consecutive configurations differ on every axis
    assert names[0] == "baseline,seed=0" and names[6] == "baseline,seed=1"
    assert names[1:3] == ["variant=diagonal,space=euclidean,seed=0", "variant=banded,space=hyperbolic_no_mobius,seed=0"]
    assert {t.seed for t in trials[:6]} == {0}
    banded = trials[names.index("variant=banded,space=hyperbolic,seed=1")]
    assert dict(banded.assignments)[VARIANT] == "banded" and dict(banded.assignments)["seed_everything"] == 1
    assert dict(banded.assignments)["trainer.max_steps"] == 5
    assert banded.output_dir == "outputs/sweeps/grid/variant-banded_space-hyperbolic_seed-1"
    assert all(set(dir_name(t.name)) <= set("abcdefghijklmnopqrstuvwxyz0123456789._-") for t in trials)


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
    assert [t.name for t in trials] == [
        "baseline,vision=clip",
        "baseline,vision=siglip",
        "encoder=clip,config=null",
        "encoder=siglip,config=banded",
        "encoder=clip,config=banded",
    ]
    siglip = trials[3]
    assert siglip.configs[-1] == str(delta)
    assert dict(siglip.assignments)["model.init_args.model.init_args.vision"] == "siglip"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"configs": ["base.yaml"], "axis": {}}, "axis: unknown key"),
        ({"configs": ["missing.yaml"]}, "configs[0]: config file 'missing.yaml' not found"),
        ({"configs": ["base.yaml"], "axes": {VARIANT: []}}, f"axes.{VARIANT}: expected a non-empty list"),
        ({"configs": ["base.yaml"], "axes": {VARIANT: ["a"]}, "exclude": [{SPACE: "x"}]}, "exclude: 'model.init"),
        ({"configs": ["base.yaml"], "axes": {"encoder": ["clip"]}}, "axes.encoder[0]: expected a mapping"),
        ({"configs": ["base.yaml"], "seeds": ["a"]}, "seeds: expected a list of integers"),
        ({"configs": ["base.yaml"], "pruner": "hyperband"}, "pruner: expected one of none, median, got 'hyperband'"),
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
            "test": True,
            "env": {"OMP_NUM_THREADS": "1"},
        },
    )
    strategy = _write(tmp_path / "ddp.yaml", {"trainer": {"strategy": "ddp"}})
    argv = [str(sweep_file), "--dry-run", "--override", "trainer.max_steps=5", "trainer.devices=8"]
    assert main([*argv, "--config", str(strategy)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8
    for line in lines:
        fit, _, test = (part.removeprefix("OMP_NUM_THREADS=1 ") for part in line.partition(" && "))
        argv = shlex.split(fit)
        assert argv[:4] == [sys.executable, "-m", "lit_hyperet", "fit"]
        assert argv[4:8] == ["--config", str(base_config), "--config", str(strategy)]
        assert argv[argv.index("--trainer.max_steps") + 1] == "5" and argv[argv.index("--trainer.devices") + 1] == "8"
        assert shlex.split(test)[3] == "test" and "--ckpt_path" in test
    assert "--model.init_args.hyperet null" in lines[0]


def test_dry_run_says_when_the_test_stage_is_decided_at_run_time(tmp_path: Path, base_config: Path, capsys) -> None:
    sweep_file = _write(tmp_path / "auto.yaml", {"configs": [str(base_config)], "axes": {VARIANT: ["diagonal"]}})
    assert main([str(sweep_file), "--dry-run"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert " && " not in line and line.endswith("# test: auto (a test stage follows when the data has a test split)")


# ------------------------------------------------------------------------------------------------ running


def test_failure_resume_max_trials_and_report(tmp_path: Path, base_config: Path, uri: str, capsys) -> None:
    include = [{"name": "baseline", "model.init_args.hyperet": None}]
    sweep_file = _fake_sweep(tmp_path, base_config, ["broken", "banded"], include=include, seeds=[0, 1])
    assert main([str(sweep_file), "--max-trials", "2"]) == 1  # a trial failed, the sweep went on
    first = _trials(tmp_path)
    assert list(first["params_config"]) == ["baseline", "variant=broken"]  # spread over the grid, not two seeds
    assert list(first["state"]) == ["COMPLETE", "FAIL"]
    runs = _runs(uri)
    broken, ok = (runs[run_id] for run_id in first["user_attrs_mlflow_run_id"][::-1])
    assert broken.info.status == "FAILED" and "fit exited with code 3" in broken.data.tags["sweep.error"]
    assert "invalid HyperET variant 'broken'" in broken.data.tags["sweep.log_tail"]
    assert "fake trial line 79" in broken.data.tags["sweep.log_tail"]
    assert "fake trial line 20" not in broken.data.tags["sweep.log_tail"]  # only the last lines
    assert ok.info.status == "FINISHED" and ok.data.tags["axis.model.init_args.hyperet"] == "null"
    assert ok.data.tags["optuna.trial_number"] == "0" and ok.data.tags["sweep.outcome"] == "ok"
    # resume: the finished point is skipped, the failed one is queued again, the rest run
    capsys.readouterr()
    assert main([str(sweep_file)]) == 1
    assert "6 trials, 1 done, 5 queued" in capsys.readouterr().out
    again = _trials(tmp_path)
    assert len(again) == 7 and (again["state"] == "COMPLETE").sum() == 4
    assert list(again[again["params_config"] == "variant=broken"]["state"]) == ["FAIL", "FAIL", "FAIL"]
    # the report: one row per configuration, seeds grouped, deltas against the baseline, failures counted
    out = tmp_path / "outputs/sweeps/fake"
    table = pd.read_csv(out / "ablation.csv").set_index("configuration")
    assert list(table.index) == ["baseline", "variant=broken", "variant=banded"]
    banded = table.loc["variant=banded"]
    assert (banded["variant"], banded["d"], banded["n"], banded["HyperET params"]) == ("banded", 2, 64, 1256)
    assert banded["val/Avg mean"] == pytest.approx(56.0) and banded["val/Avg std"] == pytest.approx(1.41421, 1e-4)
    assert banded["Δparams"] == 1256 and banded["Δ main"] == pytest.approx(5.0)
    assert table.loc["variant=broken", "failed"] == 2 and table.loc["variant=broken", "completed"] == 0
    assert "val/topic/physics mean" not in table  # only val/<name> and test/<name>
    md = (out / "ablation.md").read_text()
    assert "| variant=banded | banded | 2 | — | — | — | — | 64 | 4 | 1,256 | 2,256 | +1,256 | 56.00 ± 1.41 |" in md
    assert "6 trials, 4 completed, 0 pruned, 2 failed" in md and "| 0/2 (2 failed) |" in md
    from mlflow import MlflowClient

    from lit_hyperet.optuna_store import open_storage
    from lit_hyperet.sweep.report import build_report, chart_figure
    from lit_hyperet.sweep.study import open_study

    sweep = load_sweep(sweep_file)
    trials = expand(sweep)
    study = open_study(sweep, trials, open_storage(f"sqlite:///{tmp_path}/optuna.db"), create=False)
    ax = chart_figure(build_report(sweep, trials, study, MlflowClient(uri))).axes[0]
    assert ax.get_xlim()[0] == 0 and ax.get_title() == "fake: val/Avg"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["baseline", "banded"]
    assert [p.get_width() for p in ax.patches] == pytest.approx([51.0, 56.0])


@pytest.mark.parametrize("journal", [False, True], ids=["sqlite", "journal"])
def test_sigterm_stops_the_trial_and_sigkill_resumes(
    tmp_path: Path, base_config: Path, uri: str, journal: bool
) -> None:
    sweep_file = _fake_sweep(tmp_path, base_config, ["slow"])
    url = f"journal:{tmp_path}/optuna.log" if journal else None
    argv = [str(sweep_file), "--heartbeat", "1", *(["--storage", url] if url else [])]
    pids = tmp_path / "pids.txt"
    sweep = _sweep_process(argv, FAKE_SLOW="1", FAKE_PIDS=str(pids))
    trial_pid = _wait_for_pid(pids)
    sweep.send_signal(signal.SIGTERM)
    assert sweep.wait(timeout=30) == 128 + signal.SIGTERM
    assert _gone(trial_pid)
    (state,) = _trials(tmp_path, url)["state"]
    (run,) = _runs(uri).values()
    assert state == "FAIL" and run.info.status == "KILLED" and run.data.tags["sweep.outcome"] == "killed"
    # SIGKILL: no handler runs; the trial dies with its sweep, the heartbeat fails the Optuna trial, and the next
    # run queues it again and marks the MLflow run killed
    pids.unlink()
    sweep = _sweep_process(argv, FAKE_SLOW="1", FAKE_PIDS=str(pids))
    trial_pid = _wait_for_pid(pids)
    sweep.kill()
    sweep.wait()
    assert _gone(trial_pid)
    time.sleep(2.5)  # the heartbeat's grace period
    assert main(argv) == 0
    assert list(_trials(tmp_path, url)["state"]) == ["FAIL", "FAIL", "COMPLETE"]
    statuses = [r.info.status for r in _runs(uri).values()]
    assert statuses == ["KILLED", "KILLED", "FINISHED"]


def test_submitit_workers_share_the_queue(tmp_path: Path, base_config: Path, uri: str) -> None:
    """Two `sweep --worker` processes (submitted by submitit's local executor) drain one sqlite study."""
    sweep_file = _fake_sweep(tmp_path, base_config, ["diagonal", "banded"], seeds=[0, 1])
    assert main([str(sweep_file), "--launcher", "local", "--workers", "2"]) == 0
    frame = _trials(tmp_path)
    assert list(frame["state"]) == ["COMPLETE"] * 4
    points = list(zip(frame["params_config"], frame["params_seed"], strict=True))
    assert len(set(points)) == 4  # every grid point once, none twice
    assert len(_runs(uri)) == 4
    assert len(list((tmp_path / "outputs/sweeps/fake/submitit").glob("*_result.pkl"))) == 2
    assert (tmp_path / "outputs/sweeps/fake/ablation.md").is_file()
    assert main([str(sweep_file), "--report"]) == 0


# A stand-in trial that trains a few Lightning steps and validates every 2, with the sweep's pruning callback.
PRUNED_CLI = textwrap.dedent("""
    import json, sys
    from lightning.pytorch import Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.loggers import MLFlowLogger
    from lit_hyperet.class_paths import import_class
    argv = sys.argv[1:]
    value = {"good": 60.0, "bad": 10.0}[argv[argv.index("--model.init_args.hyperet.variant") + 1]]
    spec = json.loads(next(a for a in argv if a.startswith("--trainer.callbacks+=")).split("=", 1)[1])
    callback = import_class(spec["class_path"])(**spec["init_args"])

    class Model(BoringModel):
        def on_validation_epoch_end(self):
            self.log("val/Avg", value)

    run_id = argv[argv.index("--trainer.logger.init_args.run_id") + 1]
    trainer = Trainer(max_steps=6, val_check_interval=2, callbacks=[callback], logger=MLFlowLogger(run_id=run_id),
                      enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0,
                      limit_val_batches=1)
    trainer.fit(Model())
    print("stopped at step", trainer.global_step)
""")


def test_pruning_stops_a_trial_that_falls_behind(tmp_path: Path, base_config: Path, uri: str) -> None:
    (tmp_path / "pruned_cli.py").write_text(PRUNED_CLI)
    sweep_file = _write(
        tmp_path / "prune.yaml",
        {
            "experiment": "fake",
            "configs": [str(base_config)],
            "command": ["python", str(tmp_path / "pruned_cli.py")],
            "test": False,
            "metric": "val/Avg",
            "pruner": "median",
            "axes": {VARIANT: ["good", "bad"]},
        },
    )
    assert main([str(sweep_file)]) == 0
    frame = _trials(tmp_path)
    assert list(frame["state"]) == ["COMPLETE", "PRUNED"]
    assert frame["user_attrs_pruned_at_step"][1] == 2  # at the first validation
    assert "stopped at step 2" in (tmp_path / "outputs/sweeps/prune/variant-bad/fit.log").read_text()
    bad = _runs(uri)[frame["user_attrs_mlflow_run_id"][1]]
    assert bad.info.status == "KILLED" and bad.data.tags["sweep.outcome"] == "pruned"
    table = pd.read_csv(tmp_path / "outputs/sweeps/prune/ablation.csv").set_index("configuration")
    assert table.loc["variant=bad", "pruned"] == 1 and pd.isna(table.loc["variant=bad", "val/Avg mean"])
    assert "1 completed, 1 pruned, 0 failed" in (tmp_path / "outputs/sweeps/prune/ablation.md").read_text()


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_demo_sweep_end_to_end(tmp_path: Path, uri: str, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    """Two real trials at once through `python -m lit_hyperet fit` (and `test` where the data has a test split)."""
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
            "pruner": "median",
            "axes": {VARIANT: ["banded"]},
            "include": [{"name": "baseline", "model.init_args.hyperet": None, "data.init_args.test_split": None}],
        },
    )
    assert main([str(sweep_file), "--override", "trainer.max_steps=1", "--jobs", "2"]) == 0
    runs = {r.data.tags["sweep.trial"]: r for r in _runs(uri, "e2e").values()}
    banded, baseline = runs["variant=banded"], runs["baseline"]
    assert banded.info.status == baseline.info.status == "FINISHED"
    assert banded.data.params["hyperet/variant"] == "banded" and banded.data.params["params/hyperet"] == "1256"
    assert banded.data.params["params/hyperet_n"] == "64"
    assert len(banded.data.tags["config_hash"]) == 12  # the hash the CLI computed of the config it resolved
    assert "val/Avg" in banded.data.metrics and "test/Avg" in banded.data.metrics  # fit, then test
    assert "val/Avg" in baseline.data.metrics and "test/Avg" not in baseline.data.metrics  # no test split
    assert (tmp_path / "outputs/sweeps/e2e/variant-banded/checkpoints/last.ckpt").is_file()
    md = (tmp_path / "outputs/sweeps/e2e/ablation.md").read_text()
    assert "| variant=banded | banded | 2 |" in md and "| baseline | baseline (no HyperET) |" in md
