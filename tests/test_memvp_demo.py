"""``configs/memvp_demo.yaml`` through the CLI: the MemVP family trains, checkpoints only its trainable tensors,
resumes to where an uninterrupted run ends, and predicts from the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.demo_cli import MEMVP_DEMO, demo_args

from lit_hyperet.cli import cli_main


def test_memvp_demo_trains_resumes_and_predicts(
    tiny_memvp_dir: Path, demo_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def args(name: str) -> list[str]:
        out = tmp_path / name
        # the schedule's length fixed, so the run stopped at step 3 is the first half of the 6-step one
        schedule = ["--model.init_args.lr_scheduler.init_args.total_steps", "6"]
        return [
            *demo_args(tiny_memvp_dir, demo_data_dir, out, MEMVP_DEMO),
            *schedule,
            "--trainer.val_check_interval",
            "3",
            "--trainer.limit_val_batches",
            "1",
        ]

    cli_main(["fit", *args("whole"), "--trainer.max_steps", "6"])
    cli_main(["fit", *args("resumed"), "--trainer.max_steps", "3"])
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    cli_main(["fit", *args("resumed"), "--trainer.max_steps", "6", "--ckpt_path", str(last)])

    whole = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    resumed = torch.load(last, weights_only=True, map_location="cpu")
    assert whole["global_step"] == resumed["global_step"] == 6
    state = whole["state_dict"]
    assert state.keys() == resumed["state_dict"].keys()
    for key, tensor in state.items():
        torch.testing.assert_close(resumed["state_dict"][key], tensor, rtol=0, atol=0, msg=key)
    # only MemVP's trainable tensors: projector, E1 / E2, the CLIP adapters, HyperET (q, v of both blocks)
    kinds = {k.split(".parametrizations.")[0].rsplit(".", 1)[0] if "parametrizations" in k else k for k in state}
    assert "llava.adapter_emb1" in kinds and "llava.adapter_emb2" in kinds
    assert sum("adapter_mlp" in k for k in state) == 4 and sum("adapter_proj" in k for k in state) == 4
    assert sum(".parametrizations.weight." in k for k in state) == 4
    assert len(state) == 2 + 4 + 4 + 4
    assert not torch.equal(state["llava.adapter_emb2"], torch.zeros_like(state["llava.adapter_emb2"]))  # it trained

    cli_main(["predict", *args("whole"), "--data.init_args.predict_split", "val", "--ckpt_path", str(last)])
    predictions = json.loads((tmp_path / "whole" / "predictions.json").read_text())
    assert len(predictions) > 0 and all(isinstance(t, str) for t in predictions.values())


def test_the_recipe_config_trains_every_tensor_with_memvps_single_rate(tiny_memvp_dir: Path) -> None:
    """``configs/scienceqa_memvp/base.yaml`` on the tiny pair: one lr 1.125e-3 for every group, weight decay 0.02 on
    tensors of two or more dims (E1 / E2 included) and none on 1-D ones (biases)."""
    from helpers.demo_cli import ROOT

    recipe = str(ROOT / "configs" / "scienceqa_memvp" / "base.yaml")
    parts = "--model.init_args.model.init_args."
    cli = cli_main(
        [
            "--config",
            recipe,
            f"{parts}vision_path",
            str(tiny_memvp_dir / "vision"),
            f"{parts}llm_path",
            str(tiny_memvp_dir),
            f"{parts}memvp.slots",
            "24",
            "--model.init_args.lr_scheduler.init_args.total_steps",
            "100",
        ],
        run=False,
    )
    module = cli.model
    module.configure_model()
    optimizer = module.configure_optimizers()["optimizer"]
    names = {g["name"] for g in optimizer.param_groups}
    assert names == {"projector", "projector_no_decay", "memory", "vision_adapters", "hyperet_no_decay"}
    for group in optimizer.param_groups:
        assert group["initial_lr"] == 1.125e-3
        assert group["weight_decay"] == (0.0 if group["name"].endswith("_no_decay") else 0.02)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in module.llava.parameters() if p.requires_grad
    )


def test_radius_reads_the_memvp_tower_and_projector(tiny_memvp_dir: Path, demo_data_dir: Path, tmp_path: Path) -> None:
    """The radius command on the MemVP demo config: per-image radii of the tower's tokens and the projector's."""
    import csv

    import yaml
    from helpers.demo_cli import MEMVP_DEMO

    from lit_hyperet.radius import main as radius_main

    overrides = [f"model.init_args.model.init_args.path={tiny_memvp_dir}", f"data.init_args.data_dir={demo_data_dir}"]
    runs = tmp_path / "runs.yaml"
    runs.write_text(yaml.safe_dump({"runs": [{"name": "memvp", "config": MEMVP_DEMO, "overrides": overrides}]}))
    out = tmp_path / "out"
    argv = ["--runs", str(runs), "--max-samples", "6", "--projector", "--with-accuracy", "--out", str(out)]
    assert radius_main([*argv, "--no-mlflow"]) == 0
    summary = json.loads((out / "radius_summary.json").read_text())
    run = summary["runs"]["memvp"]
    assert run["counts"]["samples_seen"] == 6 and run["counts"]["images"] > 0
    assert run["model"]["layer"] == -2 and run["model"]["vision_tower"] == "clip_vision_model"
    with (out / "radius_images.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == run["counts"]["images"] and float(rows[0]["projector_rad_mean"]) > 0
