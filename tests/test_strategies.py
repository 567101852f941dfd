"""FSDP wrapping: which modules become units (CPU), and a real FSDP run when CUDA is present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lit_hyperet.hyperet import HyperETConfig
from lit_hyperet.model import LoraSettings, TinyLlava, build_llava
from lit_hyperet.strategies import HyperETWrapPolicy, TransformerLayerPolicy
from lit_hyperet.structured import StructuredMatrix


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> nn.Module:
    return build_llava(
        TinyLlava(path=str(tiny_model_dir)),
        hyperet=HyperETConfig(variant="banded", band_width=1),
        lora=LoraSettings(r=4),
        train_projector=True,
    )


def test_wrap_policy_units_are_layers_and_trainable_leaves(model: nn.Module) -> None:
    policy = HyperETWrapPolicy()
    units = {name: module for name, module in model.named_modules() if policy(module, False, 0)}
    kinds = {type(m).__name__ for m in units.values()}
    assert {"LlamaDecoderLayer", "CLIPEncoderLayer"} <= kinds
    n_text = model.get_base_model().config.text_config.num_hidden_layers
    n_vision = model.get_base_model().config.vision_config.num_hidden_layers
    assert sum(type(m).__name__ == "LlamaDecoderLayer" for m in units.values()) == n_text
    assert sum(type(m).__name__ == "CLIPEncoderLayer" for m in units.values()) == n_vision
    # every trainable parameter lives in a unit whose own parameters are all trainable
    for name, param in model.named_parameters():
        if param.requires_grad:
            owner = name.rsplit(".", 1)[0]
            assert owner in units, name
            assert all(p.requires_grad for p in units[owner].parameters(recurse=False))
    assert any(isinstance(m, StructuredMatrix) for m in units.values())
    assert any(".lora_A." in n for n in units) and any(".lora_B." in n for n in units)
    assert any("multi_modal_projector.linear_1" in n for n in units)
    # frozen Linears (e.g. the base q_proj of a LoRA layer, the lm_head) are not units of their own
    assert not any(n.endswith("base_layer") or n.endswith("lm_head") for n in units)
    assert policy(model, True, 0)  # always recurse


def test_activation_checkpointing_policy_matches_only_layers(model: nn.Module) -> None:
    policy = TransformerLayerPolicy()
    matched = {type(m).__name__ for m in model.modules() if policy(m, False, 0)}
    assert matched == {"LlamaDecoderLayer", "CLIPEncoderLayer"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP needs CUDA (Lightning's FSDPStrategy refuses CPU)")
def test_fsdp_fit_runs_on_gpu(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    from lit_hyperet.cli import cli_main

    cli_main(
        [
            "fit",
            "--config",
            "configs/demo.yaml",
            "--config",
            "configs/strategy/fsdp.yaml",
            "--trainer.devices",
            "1",
            "--trainer.max_steps",
            "4",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.logger",
            "false",
            "--model.init_args.model.init_args.path",
            str(tiny_model_dir),
            "--data.init_args.data_dir",
            str(demo_data_dir),
            "--checkpoint.dirpath",
            str(tmp_path / "ckpt"),
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint["state_dict"] and all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
