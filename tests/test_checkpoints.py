"""Checkpoints are data: no loader runs code a checkpoint names, what the user configured wins over what a checkpoint
stored, and an unusable checkpoint ends in one line naming the file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import demo_cli

from lit_hyperet.__main__ import main
from lit_hyperet.checkpoints import CheckpointError
from lit_hyperet.class_paths import SpecError
from lit_hyperet.cli import cli_main
from lit_hyperet.lit_module import HyperETLitModule

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])


def demo_args(tiny_model_dir: Path, demo_data_dir: Path, out: Path) -> list[str]:
    return [*demo_cli.demo_args(tiny_model_dir, demo_data_dir, out), "--trainer.limit_val_batches", "0"]


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, demo_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of a 2-step demo fit (diagonal HyperET, LoRA r 8)."""
    out = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
        mp.setattr(sys, "argv", sys.argv[:1])
        assert main(["fit", *demo_args(tiny_model_dir, demo_data_dir, out), "--trainer.max_steps", "2"]) == 0
    return out / "checkpoints" / "last.ckpt"


def crafted(trained: Path, out: Path, entry: str, spec: dict[str, Any]) -> Path:
    """The trained checkpoint with one stored hyper-parameter replaced: plain data, loads with weights_only."""
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["hyper_parameters"][entry] = spec
    path = out / f"crafted_{entry}.ckpt"
    torch.save(checkpoint, path)
    torch.load(path, weights_only=True)  # passes torch's own safety check
    return path


def last_error_line(capsys: pytest.CaptureFixture) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines, "nothing on stderr"
    return lines[-1]


def test_stored_model_spec_naming_a_command_is_refused_by_every_loader(
    trained: Path, tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "MARKER"
    spec = {"class_path": "subprocess.check_call", "init_args": {"args": ["touch", str(marker)]}}
    path = crafted(trained, tmp_path, "model", spec)

    assert main(["export", "--ckpt", str(path), "--out", str(tmp_path / "exported")]) == 2
    line = last_error_line(capsys)
    assert line.startswith(f"error: {path}: ") and "subprocess.check_call" in line
    with pytest.raises(CheckpointError, match="outside the allowed packages"):
        HyperETLitModule.load_from_checkpoint(path)
    args = demo_args(tiny_model_dir, demo_data_dir, tmp_path / "out")
    assert main(["test", *args, "--ckpt_path", str(path)]) == 2
    line = last_error_line(capsys)
    assert str(path) in line and "model.class_path" in line and "subprocess.check_call" in line
    assert main(["fit", *args, "--ckpt_path", str(path), "--trainer.max_steps", "3"]) == 2
    assert not marker.exists()


@pytest.mark.parametrize("entry", ["optimizer", "lr_scheduler"])
def test_stored_optimizer_or_scheduler_spec_naming_a_command_never_runs(
    entry: str, trained: Path, tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path
) -> None:
    """Loading for export, test or radius never builds an optimiser; resuming a fit builds the configured one."""
    marker = tmp_path / "MARKER"
    path = crafted(trained, tmp_path, entry, {"class_path": "os.system", "init_args": {"command": f"touch {marker}"}})

    assert main(["export", "--ckpt", str(path), "--out", str(tmp_path / "exported")]) == 0
    module = HyperETLitModule.load_from_checkpoint(path)
    with pytest.raises(SpecError, match="outside the allowed packages"):
        module.configure_optimizers()  # the stored spec, if anything ever asked for it
    args = demo_args(tiny_model_dir, demo_data_dir, tmp_path / "out")
    assert main(["test", *args, "--ckpt_path", str(path), "--trainer.limit_test_batches", "1"]) == 0
    assert main(["fit", *args, "--ckpt_path", str(path), "--trainer.max_steps", "3"]) == 0
    radius = ["radius", "--config", DEMO, "--ckpt", str(path), "--max-samples", "2", "--out", str(tmp_path / "r")]
    radius += ["--override", f"model.init_args.model.init_args.path={tiny_model_dir}"]
    assert main([*radius, "--override", f"data.init_args.data_dir={demo_data_dir}"]) == 0
    assert not marker.exists()


def test_stored_spec_naming_a_function_of_this_package_is_refused(trained: Path, tmp_path: Path) -> None:
    spec = {"class_path": "lit_hyperet.models.llava.tiny.make_tiny_model", "init_args": {"out": str(tmp_path / "x")}}
    with pytest.raises(CheckpointError, match="is not a class"):
        HyperETLitModule.load_from_checkpoint(crafted(trained, tmp_path, "model", spec))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        (
            ["--model.init_args.hyperet.variant", "banded"],
            "hyperet.variant: checkpoint 'diagonal', configured 'banded'",
        ),
        (["--model.init_args.lora.r", "4"], "lora.r: checkpoint 8, configured 4"),
        (["--model.init_args.hyperet", "null"], "hyperet"),
    ],
    ids=["variant", "lora_rank", "no_hyperet"],
)
def test_ckpt_path_with_a_different_layout_stops_with_the_differences(
    override: list[str],
    key: str,
    trained: Path,
    tiny_model_dir: Path,
    demo_data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    args = [*demo_args(tiny_model_dir, demo_data_dir, tmp_path / "out"), "--ckpt_path", str(trained), *override]
    for command in ("test", "fit"):
        assert main([command, *args]) == 2
        line = last_error_line(capsys)
        assert line.startswith(f"error: {trained}: trained with a different parameter layout") and key in line


def test_ckpt_path_keeps_what_the_user_configured_and_reports_the_difference(
    trained: Path, tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = [*demo_args(tiny_model_dir, demo_data_dir, tmp_path / "out"), "--ckpt_path", str(trained)]
    args += ["--model.init_args.max_new_tokens", "3", "--model.init_args.hyperet.curvature", "0.5"]
    cli = cli_main(["test", *args, "--trainer.limit_test_batches", "1"])
    assert cli.model.hparams.max_new_tokens == 3
    assert cli.model.hyperet_config.curvature == 0.5
    err = capsys.readouterr().err
    assert f"note: {trained} was trained with max_new_tokens=8; using the configured 3" in err
    assert "hyperet.curvature=0.01; using the configured 0.5" in err


def test_unusable_checkpoints_end_in_one_line_naming_the_file(
    trained: Path, tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = trained.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1.0)}, pickled)
    family = tmp_path / "family.ckpt"
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["hyper_parameters"]["queries"] = 32
    torch.save(checkpoint, family)
    keys = tmp_path / "keys.ckpt"
    checkpoint = torch.load(trained, weights_only=True)
    dropped = sorted(checkpoint["state_dict"])[0]
    del checkpoint["state_dict"][dropped]
    torch.save(checkpoint, keys)
    expected = {
        truncated: "not a readable PyTorch checkpoint",
        text: "not a readable PyTorch checkpoint",
        pickled: "holds objects other than tensors and plain data; refused: it names argparse.Namespace",
        family: "hyper-parameters ['queries'] are not arguments of HyperETLitModule",
        tmp_path / "missing.ckpt": "no such checkpoint file",
        keys: f"do not match the configured model's trainable parameters: missing ['{dropped}'] (1)",
    }
    args = demo_args(tiny_model_dir, demo_data_dir, tmp_path / "out")
    for path, message in expected.items():
        assert main(["export", "--ckpt", str(path), "--out", str(tmp_path / "exported")]) == 2
        err = capsys.readouterr().err
        line = err.strip().splitlines()[-1]
        assert "Traceback" not in err and line.startswith(f"error: {path}: ") and message in line, err[-2000:]
        assert main(["test", *args, "--ckpt_path", str(path)]) == 2
        assert message in last_error_line(capsys)
        if path == family:
            continue  # radius builds the model from its configs and reads only the tensors
        radius = ["radius", "--config", DEMO, "--ckpt", str(path), "--max-samples", "2", "--out", str(tmp_path / "r")]
        radius += ["--override", f"model.init_args.model.init_args.path={tiny_model_dir}"]
        assert main([*radius, "--override", f"data.init_args.data_dir={demo_data_dir}"]) == 2
        assert message in last_error_line(capsys)
