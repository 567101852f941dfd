"""Config and command-line mistakes end with exit 2 and a line or two naming the key and the closest valid choice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_hyperet.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) <= 2, lines
    return lines


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            ["--model.init_args.hyperet.varient", "diagonal"],
            "model.init_args.hyperet.varient: HyperETConfig has no such option "
            "(did you mean model.init_args.hyperet.variant?)",
        ),
        (
            ["--model.init_args.hyperet.variant", "diagonl"],
            "model.init_args.hyperet.variant: 'diagonl' is not one of diagonal, block_diagonal, banded, full "
            "(did you mean diagonal?)",
        ),
        (
            ["--data.init_args.batch_siz", "4"],
            "data.init_args.batch_siz: ScienceQADataModule has no such option "
            "(did you mean data.init_args.batch_size?)",
        ),
        (["--trainer.max_step", "3"], "unknown option --trainer.max_step (did you mean --trainer.max_steps?)"),
        (
            ["--model.init_args.model.init_args.vison", "clip"],
            "model.init_args.model.init_args.vison: TinyLlava has no such option "
            "(did you mean model.init_args.model.init_args.vision?)",
        ),
        (
            ["--model.init_args.optimizer.init_args.lrr", "0.1"],
            "model.init_args.optimizer.init_args.lrr: AdamW has no such option "
            "(did you mean model.init_args.optimizer.init_args.lr?)",
        ),
        (
            ["--trainer.precision", "16-mixd"],
            "trainer.precision: '16-mixd' is not one of transformer-engine, transformer-engine-float16, 16-true, "
            "16-mixed, bf16-true, bf16-mixed, 32-true, 64-true, 64, 32, 16, bf16 (did you mean 16-mixed?)",
        ),
        (
            ["--trainer.logger.init_args.run_nam", "x"],
            "trainer.logger.init_args.run_nam: MLFlowLogger has no such option "
            "(did you mean trainer.logger.init_args.run_name?)",
        ),
    ],
)
def test_a_mistyped_key_or_value_names_it_and_the_closest_choice(
    override: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _error(capsys, ["fit", "--config", DEMO, *override])
    assert lines[0] == f"error: {expected}"
    assert lines[1].strip() == "see: python -m lit_hyperet fit --help"


def test_a_mistyped_key_in_a_config_file_is_reported_the_same_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load(Path(DEMO).read_text())
    config["model"]["init_args"]["lora"]["rank"] = config["model"]["init_args"]["lora"].pop("r")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    lines = _error(capsys, ["validate", "--config", str(path)])
    assert lines[0].startswith("error: model.init_args.lora.rank: LoraSettings has no such option")


def test_a_missing_config_file_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    lines = _error(capsys, ["test", "--config", str(tmp_path / "nowhere.yaml")])
    assert "nowhere.yaml" in lines[0] and "does not exist" in lines[0]


def test_the_full_report_on_request(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIT_HYPERET_TRACEBACK", "1")
    with pytest.raises(SystemExit):
        main(["fit", "--config", DEMO, "--model.init_args.hyperet.varient", "diagonal"])
    err = capsys.readouterr().err
    assert "usage: python -m lit_hyperet" in err and "Option 'varient' is not accepted" in err


def test_an_option_that_cannot_work_ends_with_its_message_not_a_traceback(
    tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path
) -> None:
    from helpers.demo_cli import demo_args

    args = ["fit", *demo_args(tiny_model_dir, demo_data_dir, tmp_path / "out"), "--trainer.max_steps", "1"]
    args += ["--model.init_args.hyperet.variant", "block_diagonal", "--model.init_args.hyperet.num_blocks", "3"]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONPATH": str(ROOT / "tests"),
    }
    done = subprocess.run([sys.executable, "-m", "lit_hyperet", *args], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert err[-1].startswith("error: hyperet.num_blocks 3 does not divide 64; use one of 1, 2, 4")
    assert "Traceback" not in done.stderr


def test_tool_commands_report_user_errors_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "out")]) == 2
    assert main(["radius", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "radius")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines and len(lines) == 2
    assert "missing.ckpt" in lines[0] and "missing.yaml" in lines[1]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["--model.init_args.hyperet.curvature", "-1"], "error: hyperet.curvature must be > 0, got -1.0"),
        (["--data.init_args.prompt_format", "QCM-X"], "error: unknown prompt format 'QCM-X'; expected '<IN>-<OUT>'"),
        (
            ["--data.init_args.eval_protocol", "answer_prefix", "--data.init_args.prompt_format", "QCM-LA"],
            "error: data.eval_protocol='answer_prefix' needs an output format that starts with the answer",
        ),
    ],
)
def test_a_value_refused_while_building_the_classes_is_reported_as_itself(
    override: list[str],
    expected: str,
    tiny_model_dir: Path,
    demo_data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from helpers.demo_cli import demo_args

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["fit", *demo_args(tiny_model_dir, demo_data_dir, tmp_path / "out"), *override]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(expected)
