"""The command line: every config parses, CPU configs run, MLflow records runs, resume. (DDP and FSDP2 runs:
tests/test_distributed.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.demo_cli import demo_args

from lit_hyperet.__main__ import main
from lit_hyperet.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DEMO = str(CONFIGS / "demo.yaml")
SCIENCEQA_DELTAS = sorted(p for p in (CONFIGS / "scienceqa").glob("*.yaml") if p.name != "base.yaml")


def config_sets() -> list[list[Path]]:
    """Every YAML under configs/, each in the combination it is meant to be used in."""
    sets = [[CONFIGS / "demo.yaml"], [CONFIGS / "alignment_demo.yaml"], [CONFIGS / "memvp_demo.yaml"]]
    memvp = [CONFIGS / "scienceqa_memvp" / name for name in ("base.yaml", "13b.yaml", "qkv.yaml")]
    sets += [memvp[:1], memvp]
    sets += [[CONFIGS / "scienceqa" / "base.yaml", delta] for delta in SCIENCEQA_DELTAS]
    diagonal = CONFIGS / "scienceqa" / "diagonal.yaml"
    sets += [
        [CONFIGS / "scienceqa" / "base.yaml", p, diagonal]
        for p in sorted((CONFIGS / "scienceqa" / "encoders").glob("*.yaml"))
    ]
    sets += [[p] for p in sorted((CONFIGS / "llava").glob("*.yaml"))]
    sets += [[CONFIGS / "demo.yaml", p] for p in sorted((CONFIGS / "strategy").glob("*.yaml"))]
    stage1 = CONFIGS / "alignment" / "blip2_stage1.yaml"
    for data in ("coco_karpathy", "flickr30k"):
        sets.append([stage1, CONFIGS / "alignment" / f"{data}.yaml"])
    coco = [stage1, CONFIGS / "alignment" / "coco_karpathy.yaml"]
    sets += [coco + [CONFIGS / "alignment" / "retrieval_finetune.yaml"], coco + [CONFIGS / "strategy" / "ddp.yaml"]]
    return sets


def test_config_sets_cover_every_yaml() -> None:
    covered = {p for group in config_sets() for p in group}
    assert covered == set(CONFIGS.rglob("*.yaml"))


@pytest.mark.parametrize("configs", config_sets(), ids=lambda c: "+".join(p.stem for p in c))
def test_every_config_parses_against_the_cli(configs: list[Path], capsys: pytest.CaptureFixture) -> None:
    args = ["fit"] + [a for p in configs for a in ("--config", str(p))] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code in (None, 0)
    module = "HyperbolicAlignmentModule" if "alignment" in str(configs[0]) else "HyperETLitModule"
    assert f"class_path: lit_hyperet.{module}" in capsys.readouterr().out


def test_help_lists_tools_and_lightning_commands(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in (
        "fit",
        "validate",
        "test",
        "predict",
        "make-tiny-model",
        "make-demo-data",
        "scienceqa-score",
        "export",
        "import-memvp-checkpoint",
        "sweep",
        "radius",
    ):
        assert command in out


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_subcommand_help_lists_every_hyperet_and_lora_option(subcommand: str, capsys: pytest.CaptureFixture) -> None:
    import dataclasses

    from lit_hyperet.hyperet import HyperETConfig
    from lit_hyperet.models.llava import LoraSettings

    with pytest.raises(SystemExit):
        cli_main([subcommand, "--help"])
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m lit_hyperet [options] {subcommand}")
    for prefix, cls in (("hyperet", HyperETConfig), ("lora", LoraSettings)):
        for field in dataclasses.fields(cls):
            assert f"  --model.init_args.{prefix}.{field.name}  " in out
    assert "  --model.init_args.hyperet.variant  diagonal | block_diagonal | banded | full (default diagonal)" in out


@pytest.mark.parametrize(
    ("subcommand", "extra"),
    [
        ("fit", []),
        ("validate", []),
        ("test", []),
        ("predict", []),
        ("fit", ["--config", "strategy/single_device.yaml"]),
    ],
    ids=["fit", "validate", "test", "predict", "fit+single_device"],
)
def test_demo_runs_with_fast_dev_run(
    subcommand: str,
    extra: list[str],
    tiny_model_dir: Path,
    demo_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every CPU-runnable config (the demo, alone and with the single-device strategy; DDP has its own test)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    extra = [str(CONFIGS / a) if a.endswith(".yaml") else a for a in extra]
    args = [subcommand, *demo_args(tiny_model_dir, demo_data_dir, tmp_path / "out"), *extra]
    args += ["--trainer.fast_dev_run", "true"]
    assert main(args) == 0
    if subcommand == "predict":
        import json

        predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
        assert predictions and all(isinstance(v, str) for v in predictions.values())


@pytest.mark.parametrize("protocol", ["answer_prefix", "generate"])
def test_validation_accuracy_equals_the_offline_scorer_on_predictions(
    protocol: str, tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`val/Avg` logged by the module equals `scienceqa-score` on what `predict` generated for the same split (both in
    percent: the scorer rounds to two decimals)."""
    import json

    import mlflow

    from lit_hyperet.tasks.scienceqa.scoring import main as score_main

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "out"
    common = [*demo_args(tiny_model_dir, demo_data_dir, out), "--data.init_args.eval_protocol", protocol]
    cli_main(["fit", *common, "--trainer.max_steps", "40", "--trainer.val_check_interval", "40"])
    last = str(out / "checkpoints" / "last.ckpt")
    cli_main(["validate", *common, "--ckpt_path", last])
    cli_main(["predict", *common, "--data.init_args.predict_split", "val", "--ckpt_path", last])

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("lit_hyperet_demo")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    logged = runs[1].data.metrics  # the validate run
    scores = tmp_path / "scores.json"
    prefix = ["--answer-prefix", "The answer is"] if protocol == "answer_prefix" else []
    problems = str(demo_data_dir / "problems.json")
    predictions = str(out / "predictions.json")
    args = ["--problems", problems, "--predictions", predictions, "--split", "val", "--json", str(scores), *prefix]
    assert score_main(args) == 0
    offline = json.loads(scores.read_text())
    texts = json.loads((out / "predictions.json").read_text())
    assert len(texts) == offline["count"]
    if protocol == "generate":
        assert any(len(t.split()) > 1 for t in texts.values())  # free text, not one token
    assert offline["Avg"] > 0  # 40 steps teach the image questions: the comparison is not 0 == 0
    for category in ("Avg", "IMG", "TXT", "NAT", "G1-6"):
        assert abs(logged[f"val/{category}"] - offline[category]) < 0.006, category  # both in percent


def test_torch_num_threads_is_applied(
    tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    cli_main([*demo_args(tiny_model_dir, demo_data_dir, tmp_path / "out"), "--torch_num_threads", "3"], run=False)
    assert calls == [3]
    cli_main(demo_args(tiny_model_dir, demo_data_dir, tmp_path / "out"), run=False)
    assert calls == [3, 1]  # configs/demo.yaml asks for one thread


def test_demo_logs_metrics_and_config_to_mlflow_and_resumes(
    tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "out"
    common = demo_args(tiny_model_dir, demo_data_dir, out) + [
        "--trainer.val_check_interval",
        "4",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.log_every_n_steps",
        "1",
    ]
    cli_main(["fit", *common, "--trainer.max_steps", "4"])
    last = out / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 4
    cli_main(["fit", *common, "--trainer.max_steps", "8", "--ckpt_path", str(last)])
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 8

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("lit_hyperet_demo")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    first = runs[0]
    for key in ("train/loss", "val/Avg", "val/IMG", "val/NAT", "hyperet/identity_deviation_max"):
        assert key in first.data.metrics, key
    assert int(first.data.params["params/trainable"]) > 0
    assert int(first.data.params["params/hyperet"]) == int(first.data.params["params/hyperet_adapted_modules"]) * 64
    artifacts = {a.path for a in client.list_artifacts(first.info.run_id)}
    assert "config.yaml" in artifacts
    config_text = mlflow.artifacts.load_text(f"runs:/{first.info.run_id}/config.yaml")
    assert "lit_hyperet.HyperETLitModule" in config_text and str(tiny_model_dir) in config_text
    steps = [m.step for m in client.get_metric_history(runs[1].info.run_id, "train/loss")]
    assert steps and min(steps) >= 4  # the resumed run continues the step count
