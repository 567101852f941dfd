"""FSDP2 pieces in one process: reading parameters of a sharded model, generation, activation checkpointing, the
alignment model's units, replicated tensors and clipping, the strategy's refusals. (Multi-process runs:
tests/test_distributed.py.)"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.tensor import DTensor

from lit_hyperet.checkpoints import CheckpointError
from lit_hyperet.hyperet import hyperet_report
from lit_hyperet.models.llava import count_parameters
from lit_hyperet.sharding import (
    DEFAULT_LAYER_PATTERN,
    clip_gradients,
    is_layer,
    is_sharded,
    mixed_precision_policy,
    owning_units,
    replicated_parameters,
    shard_model,
    shard_parts,
)
from lit_hyperet.strategies import FSDP2Strategy

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")


def demo_cli(tiny_model_dir: Path, demo_data_dir: Path, *extra: str) -> Any:
    """The demo's module and datamodule, instantiated by LightningCLI without running."""
    from lit_hyperet.cli import cli_main

    args = ["--config", DEMO, "--model.init_args.model.init_args.path", str(tiny_model_dir)]
    args += ["--data.init_args.data_dir", str(demo_data_dir), "--trainer.logger", "false", *extra]
    return cli_main(args, run=False)


def first_batch(datamodule: Any, stage: str) -> dict[str, Any]:
    datamodule.setup(stage)
    loader = datamodule.train_dataloader() if stage == "fit" else datamodule.val_dataloader()
    return next(iter(loader))


def test_layer_units_are_the_transformer_blocks(tiny_model_dir: Path, demo_data_dir: Path) -> None:
    module = demo_cli(tiny_model_dir, demo_data_dir).model
    module.configure_model()
    kinds = {type(m).__name__ for m in module.llava.modules() if is_layer(m, DEFAULT_LAYER_PATTERN)}
    assert kinds == {"LlamaDecoderLayer", "CLIPEncoderLayer"}


def test_sharded_model_report_and_generation_equal_the_unsharded_ones(
    one_process_group: Any, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    """Parameters read outside forward (HyperET report, parameter counts) and ``generate`` (which bypasses the root's
    forward) work on an FSDP2-sharded model and give the unsharded numbers."""
    cli = demo_cli(tiny_model_dir, demo_data_dir)
    module = cli.model
    module.configure_model()
    with torch.no_grad():  # move off the identity so the report has something to measure
        for name, p in module.named_parameters():
            if ".matrix." in name:
                p.mul_(1.5)
    reference = copy.deepcopy(module)
    module.eval()
    reference.eval()
    batch = first_batch(cli.datamodule, "validate")
    expected_texts = reference.generate_texts(batch)
    expected_report = hyperet_report(reference.llava)
    expected_counts = count_parameters(reference.llava)

    layers = shard_model(module.llava, one_process_group["data_parallel"], "32-true")
    assert layers == 4 and is_sharded(module.llava)
    assert any(isinstance(p, DTensor) for p in module.llava.parameters())
    assert module.hyperet_report() == expected_report
    assert all(r["identity_deviation"] >= 0 for r in expected_report.values())
    assert count_parameters(module.llava) == expected_counts
    assert module.generate_texts(batch) == expected_texts
    assert module.generate_texts(batch) == expected_texts  # parameters resharded and gathered again


def test_gathered_units_are_the_innermost_owners(
    one_process_group: Any, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    module = demo_cli(tiny_model_dir, demo_data_dir).model
    module.configure_model()
    shard_model(module.llava, one_process_group["data_parallel"], "32-true")
    names = [n for n, _ in module.llava.named_modules() if n.endswith("encoder.layers.1.self_attn.q_proj")]
    (unit,) = owning_units(module.llava, names)
    assert type(unit).__name__.endswith("CLIPEncoderLayer")
    (root,) = owning_units(module.llava, ["base_model.model.model.multi_modal_projector"])
    assert root is module.llava


def test_activation_checkpointing_on_padded_batches_matches_no_checkpointing(
    tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    """Same loss and gradients on a padded batch with transformers' own non-reentrant checkpointing (the module's
    ``gradient_checkpointing``) and with layers wrapped from outside (torch's ``checkpoint_wrapper``, as a strategy's
    checkpointing policy does), as without checkpointing; the layers really ran again in backward. Training runs
    without a KV cache, so a recompute cannot append to it a second time."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    def wrap_from_outside(module: Any) -> None:
        apply_activation_checkpointing(module.llava, check_fn=is_layer)

    variants = {
        "none": (demo_cli(tiny_model_dir, demo_data_dir).model, None),
        "transformers": (
            demo_cli(tiny_model_dir, demo_data_dir, "--model.init_args.gradient_checkpointing", "true").model,
            None,
        ),
        "outside": (demo_cli(tiny_model_dir, demo_data_dir).model, wrap_from_outside),
    }
    batch = first_batch(demo_cli(tiny_model_dir, demo_data_dir).datamodule, "fit")
    assert not batch["attention_mask"].all()  # padded
    results: dict[str, dict[str, Any]] = {}
    for kind, (module, wrap) in variants.items():
        module.configure_model()
        if results:
            module.load_state_dict(results["none"]["state"])
        if wrap is not None:
            wrap(module)
        module.train()
        calls: list[None] = []
        layer = next(m for m in module.llava.modules() if type(m).__name__ == "LlamaDecoderLayer")
        # self_attn runs inside the checkpointed region, so again on recompute
        handle = layer.self_attn.register_forward_pre_hook(lambda *_, seen=calls: seen.append(None))
        loss = module.training_step(batch, 0)
        loss.backward()
        handle.remove()
        trainable = {n.replace("_checkpoint_wrapped_module.", ""): p for n, p in module.named_parameters()}
        trainable = {n: p for n, p in trainable.items() if p.requires_grad}
        state = {n: p.detach().clone() for n, p in trainable.items()}
        grads = {n: p.grad.clone() for n, p in trainable.items() if p.grad is not None}
        results[kind] = {"loss": loss.detach(), "grads": grads, "state": state, "calls": len(calls)}
    reference = results.pop("none")
    assert reference["calls"] == 1 and reference["grads"]
    for kind, result in results.items():
        assert result["calls"] == 2, kind
        torch.testing.assert_close(result["loss"], reference["loss"], rtol=0, atol=0)
        assert result["grads"].keys() == reference["grads"].keys(), kind
        for name, grad in reference["grads"].items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-6, atol=1e-7, msg=f"{kind}: {name}")


def test_precision_policy_follows_trainer_precision() -> None:
    assert mixed_precision_policy("32-true") is None
    policy = mixed_precision_policy("bf16-mixed")
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32
    with pytest.raises(ValueError, match="bf16-mixed"):
        mixed_precision_policy("bf16-true")


def test_strategy_refuses_distributed_checkpoints_wrong_keys_and_other_optimiser_groups(
    tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="save_distributed_checkpoint"):
        FSDP2Strategy(save_distributed_checkpoint=True)
    strategy = FSDP2Strategy()
    module = demo_cli(tiny_model_dir, demo_data_dir).model
    module.configure_model()
    strategy._lightning_module = module
    (tmp_path / "sharded").mkdir()
    with pytest.raises(CheckpointError, match="directory"):
        strategy.load_checkpoint(tmp_path / "sharded")
    state = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    dropped = sorted(state)[0]
    del state[dropped]
    torch.save({"state_dict": state}, tmp_path / "partial.ckpt")
    with pytest.raises(CheckpointError, match=f"partial.ckpt: its tensors do not match .*missing .*{dropped}"):
        strategy.load_checkpoint(tmp_path / "partial.ckpt")
    # resuming: the optimiser groups must be this run's (torch would fail deep in its loader otherwise)
    state[dropped] = dict(module.named_parameters())[dropped].detach()
    params = list(state.values())
    strategy.optimizers = [
        torch.optim.AdamW([{"params": params[:1], "name": "a"}, {"params": params[1:], "name": "b"}])
    ]
    saved = [{"param_groups": [{"name": "a", "params": list(range(len(params)))}], "state": {}}]
    torch.save({"state_dict": state, "optimizer_states": saved}, tmp_path / "other_groups.ckpt")
    with pytest.raises(CheckpointError, match=r"other_groups.ckpt: its optimiser groups \[\['a'\]\] are not .*'b'"):
        strategy.load_checkpoint(tmp_path / "other_groups.ckpt")


def test_alignment_parts_are_units_and_the_rest_is_replicated(one_process_group: Any, tiny_blip2_dir: Path) -> None:
    """The BLIP-2 retrieval model sharded part by part gives the unsharded loss and gradients; the query tokens and
    the head's 0-dim scalars stay plain tensors, never in an optimiser group with DTensors; clipping over the mix
    equals torch's clipping of the unsharded module."""
    from helpers.alignment_standins import train_batch

    from lit_hyperet.alignment_module import HyperbolicAlignmentModule
    from lit_hyperet.hyperet import HyperETConfig
    from lit_hyperet.models.blip2 import CALLED_PARTS, TinyBlip2Retrieval

    constant = {"class_path": "torch.optim.lr_scheduler.ConstantLR", "init_args": {"factor": 1.0}}
    module = HyperbolicAlignmentModule(
        model=TinyBlip2Retrieval(path=str(tiny_blip2_dir)),
        space="poincare_distance",
        learn_curvature=True,
        hyperet=HyperETConfig(),
        lr_scheduler=constant,
    )
    module.configure_model()
    reference = copy.deepcopy(module)
    layers = shard_parts(module.blip2, one_process_group["data_parallel"], CALLED_PARTS)
    units = {n for n, m in module.blip2.named_modules() if isinstance(m, torch.distributed.fsdp.FSDPModule)}
    assert layers == 4 and units == {
        *CALLED_PARTS,
        *(f"{p}.encoder.layer{s}.{i}" for p, s in (("vision_model", "s"), ("qformer", "")) for i in (0, 1)),
    }
    replicated = ["blip2.query_tokens", "head.log_temperature", "head.log_curvature", "head.log_embedding_scale"]
    assert [n for n, _ in replicated_parameters(module)] == replicated

    batch = train_batch(module.processor, n=6)
    losses = []
    for m in (module, reference):
        m.eval()  # no dropout: the same numbers in both
        image, text = m(batch["pixel_values"], batch["captions"])
        loss = m.head(image, text).loss
        loss.backward()
        losses.append(loss.detach())
    assert torch.equal(*losses)
    expected = {n: p for n, p in reference.named_parameters() if p.requires_grad}
    for name, p in module.named_parameters():
        if p.requires_grad:
            grad = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            torch.testing.assert_close(grad, expected[name].grad, rtol=1e-4, atol=1e-5, msg=name)

    groups = module.configure_optimizers()["optimizer"].param_groups
    for group in groups:
        assert len({isinstance(p, DTensor) for p in group["params"]}) == 1, group["name"]
    (tokens,) = [g for g in groups if g["name"] == "qformer_replicated"]
    assert tokens["params"] == [module.blip2.query_tokens]
    # the same groups unsharded: a checkpoint resumes under any strategy
    unsharded = reference.configure_optimizers()["optimizer"].param_groups
    assert [g["name"] for g in unsharded] == [g["name"] for g in groups]
    assert [len(g["params"]) for g in unsharded] == [len(g["params"]) for g in groups]

    total = clip_gradients(module.parameters(), 0.05)
    expected_total = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)
    torch.testing.assert_close(total, expected_total)
    assert total > 0.05  # the clip did scale
    for name, p in module.named_parameters():
        if p.requires_grad:
            grad = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            torch.testing.assert_close(grad, expected[name].grad, rtol=1e-4, atol=1e-5, msg=name)
