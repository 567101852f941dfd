"""HyperET on fused q/k/v projections (SAM, BLIP-2): slice by slice, equal to the separate-projection case."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from lit_hyperet.hyperet import (
    DEFAULT_TARGETS,
    FusedHyperETWeight,
    HyperETConfig,
    HyperETWeight,
    adapted_module_names,
    adapted_modules,
    apply_hyperet,
    hyperet_parameters,
    hyperet_report,
    merge_hyperet,
    summarize_report,
)
from lit_hyperet.models.tiny_configs import vision_config
from lit_hyperet.structured import banded_parameter_count
from lit_hyperet.user_errors import ConfigError

VARIANT_KWARGS = {
    "diagonal": {},
    "block_diagonal": {"block_size": 4},
    "banded": {"band_width": 2},
    "full": {},
}
SPACES = ("hyperbolic", "hyperbolic_no_mobius", "euclidean")
N = 16


def attention_block(**linears: nn.Linear) -> nn.Module:
    """``encoder.layers.0.self_attn.<name>`` for each given Linear (a name the default targets match)."""
    attn = nn.ModuleDict(linears)
    return nn.ModuleDict({"encoder": nn.ModuleDict({"layers": nn.ModuleList([nn.ModuleDict({"self_attn": attn})])})})


def separate_and_fused(seed: int = 0) -> tuple[dict[str, nn.Linear], nn.Linear]:
    """Separate q/k/v Linears (float64, row norms from 0.5 to 300 so that clamps fire on some rows) and the fused
    Linear holding their weights and biases stacked as ``[q; k; v]``."""
    gen = torch.Generator().manual_seed(seed)
    separate = {}
    for name in ("q", "k", "v"):
        linear = nn.Linear(N, N).double()
        with torch.no_grad():
            w = torch.randn(N, N, generator=gen, dtype=torch.float64)
            norms = torch.linspace(0.5, 300.0, N, dtype=torch.float64)[torch.randperm(N, generator=gen)]
            linear.weight.copy_(w / w.norm(dim=-1, keepdim=True) * norms[:, None])
            linear.bias.copy_(torch.randn(N, generator=gen, dtype=torch.float64))
        separate[name] = linear
    fused = nn.Linear(N, 3 * N).double()
    with torch.no_grad():
        fused.weight.copy_(torch.cat([separate[s].weight for s in ("q", "k", "v")]))
        fused.bias.copy_(torch.cat([separate[s].bias for s in ("q", "k", "v")]))
    return separate, fused


def set_non_identity(model: nn.Module, seed: int) -> None:
    """Move every HyperET parameter of ``model`` off its initial value (nothing else)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in hyperet_parameters(model):
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def fused_parametrization(linear: nn.Linear) -> FusedHyperETWeight:
    (hw,) = list(linear.parametrizations.weight)
    assert isinstance(hw, FusedHyperETWeight)
    return hw


# ----------------------------------------------------------------------------- equal to the separate case


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("variant", list(VARIANT_KWARGS))
def test_fused_slices_equal_the_separate_projections(space: str, variant: str) -> None:
    config = HyperETConfig(variant=variant, space=space, **VARIANT_KWARGS[variant])
    separate, fused = separate_and_fused()
    w0 = fused.weight.detach().clone()
    bias = fused.bias.detach().clone()
    sep_model = attention_block(q_proj=separate["q"], k_proj=separate["k"], v_proj=separate["v"])
    names = apply_hyperet(sep_model, config)
    assert names == ["encoder.layers.0.self_attn.q_proj", "encoder.layers.0.self_attn.v_proj"]
    set_non_identity(sep_model, seed=1)
    fused_model = attention_block(qkv=fused)
    assert apply_hyperet(fused_model, config) == ["encoder.layers.0.self_attn.qkv"]
    hw = fused_parametrization(fused)
    with torch.no_grad():  # the same M per slice as the separate projections
        for s in ("q", "v"):
            for (_, mine), (_, theirs) in zip(
                hw.slices[s].named_parameters(), separate[s].parametrizations.weight[0].named_parameters(), strict=True
            ):
                mine.copy_(theirs)
        assert not torch.equal(hw.slices["q"].matrix.dense(), torch.eye(N, dtype=torch.float64))

    weight = fused.weight
    clamped = hw.slices["q"].clamp_fraction(w0[:N]) + hw.slices["v"].clamp_fraction(w0[2 * N :])
    assert (clamped > 0) == (space != "euclidean")  # the clamped chain really ran where there is one
    assert torch.allclose(weight[:N], separate["q"].weight, atol=1e-13, rtol=0)
    assert torch.allclose(weight[2 * N :], separate["v"].weight, atol=1e-13, rtol=0)
    assert torch.equal(weight[N : 2 * N], w0[N : 2 * N])  # k: W0's block, bit for bit
    assert torch.equal(fused.parametrizations.weight.original, w0)  # W0 itself untouched
    assert torch.equal(fused.bias, bias)
    x = torch.randn(3, N, dtype=torch.float64)
    out = fused(x)
    assert torch.allclose(out[:, :N], separate["q"](x), atol=1e-10, rtol=0)
    assert torch.equal(out[:, N : 2 * N], nn.functional.linear(x, w0[N : 2 * N], bias[N : 2 * N]))
    assert torch.allclose(out[:, 2 * N :], separate["v"](x), atol=1e-10, rtol=0)


def test_all_three_slices_adapted_and_k_alone() -> None:
    separate, fused = separate_and_fused()
    w0 = fused.weight.detach().clone()
    model = attention_block(qkv=fused)
    apply_hyperet(model, HyperETConfig(fused_slices=["k"]))
    assert list(fused_parametrization(fused).slices) == ["k"]
    set_non_identity(model, seed=2)
    assert torch.equal(fused.weight[:N], w0[:N]) and torch.equal(fused.weight[2 * N :], w0[2 * N :])
    assert not torch.equal(fused.weight[N : 2 * N], w0[N : 2 * N])
    merge_hyperet(model)
    apply_hyperet(model, HyperETConfig(fused_slices=["q", "k", "v"]))
    assert list(fused_parametrization(fused).slices) == ["q", "k", "v"]


# ----------------------------------------------------------------------------- parameter counts


def expected_count(variant: str, n: int) -> int:
    """Per adapted n×n weight, the formulas of the design notes."""
    if variant == "diagonal":
        return n
    if variant == "block_diagonal":
        return n * VARIANT_KWARGS["block_diagonal"]["block_size"]
    if variant == "banded":
        d = VARIANT_KWARGS["banded"]["band_width"]
        assert banded_parameter_count(n, d) == (2 * d + 1) * n - d * (d + 1)
        return (2 * d + 1) * n - d * (d + 1)
    return n * n


@pytest.mark.parametrize("variant", list(VARIANT_KWARGS))
@pytest.mark.parametrize("slices", [["q", "v"], ["q", "k", "v"], ["v"]])
def test_parameter_counts_are_exact(variant: str, slices: list[str]) -> None:
    config = HyperETConfig(variant=variant, fused_slices=slices, **VARIANT_KWARGS[variant])
    separate, fused = separate_and_fused()
    model = attention_block(qkv=fused)
    apply_hyperet(model, config)
    count = sum(p.numel() for _, p in hyperet_parameters(model))
    assert count == len(slices) * expected_count(variant, N)
    if slices == ["q", "v"]:  # exactly the separate-projection count
        sep_model = attention_block(q_proj=separate["q"], k_proj=separate["k"], v_proj=separate["v"])
        apply_hyperet(sep_model, config)
        assert count == sum(p.numel() for _, p in hyperet_parameters(sep_model))
    report = hyperet_report(model)
    assert list(report) == [f"encoder.layers.0.self_attn.qkv[{s}]" for s in slices]
    assert all(entry["params"] == expected_count(variant, N) for entry in report.values())
    assert summarize_report(report)["params"] == count


# ----------------------------------------------------------------------------- names, report, merge


def test_parameter_and_report_names_say_the_slice() -> None:
    _, fused = separate_and_fused()
    model = attention_block(qkv=fused)
    apply_hyperet(model, HyperETConfig(variant="banded", band_width=1, learn_curvature=True))
    prefix = "encoder.layers.0.self_attn.qkv.parametrizations.weight.0.slices"
    names = [n for n, _ in hyperet_parameters(model)]
    assert names == [f"{prefix}.{s}.{p}" for s in ("q", "v") for p in ("curvature_raw", "matrix.bands")]
    assert {n for n, p in model.named_parameters() if p.requires_grad} - {"encoder.layers.0.self_attn.qkv.bias"} == set(
        names
    )
    assert adapted_module_names(model) == ["encoder.layers.0.self_attn.qkv"]
    ((name, module, hw),) = list(adapted_modules(model))
    assert module is fused and isinstance(hw, FusedHyperETWeight)
    set_non_identity(model, seed=3)
    report = hyperet_report(model)
    assert list(report) == ["encoder.layers.0.self_attn.qkv[q]", "encoder.layers.0.self_attn.qkv[v]"]
    for entry in report.values():
        assert set(entry) == {"params", "identity_deviation", "clamp_fraction"}
        assert entry["params"] == 1 + banded_parameter_count(N, 1)
        assert entry["identity_deviation"] > 0 and 0 < entry["clamp_fraction"] < 1  # rows up to norm 300 clamp
    summary = summarize_report(report)
    assert summary["adapted_modules"] == 2 and summary["params"] == 2 * (1 + banded_parameter_count(N, 1))


def test_learnable_curvature_is_per_slice() -> None:
    _, fused = separate_and_fused()
    model = attention_block(qkv=fused)
    apply_hyperet(model, HyperETConfig(learn_curvature=True, fast_path=False))
    hw = fused_parametrization(fused)
    set_non_identity(model, seed=4)
    fused(torch.randn(2, N, dtype=torch.float64)).sum().backward()
    for s in ("q", "v"):
        grad = hw.slices[s].curvature_raw.grad
        assert grad is not None and grad.abs().item() > 0
    assert hw.slices["q"].curvature_raw is not hw.slices["v"].curvature_raw


@pytest.mark.parametrize("variant", ["diagonal", "block_diagonal"])
def test_merge_keeps_outputs_and_leaves_a_plain_linear(variant: str) -> None:
    _, fused = separate_and_fused()
    w0_k = fused.weight[N : 2 * N].detach().clone()
    bias = fused.bias.detach().clone()
    model = attention_block(qkv=fused)
    apply_hyperet(model, HyperETConfig(variant=variant, **VARIANT_KWARGS[variant]))
    set_non_identity(model, seed=5)
    x = torch.randn(4, N, dtype=torch.float64)
    before = fused(x).detach()
    assert merge_hyperet(model) == ["encoder.layers.0.self_attn.qkv"]
    assert not parametrize.is_parametrized(fused) and type(fused) is nn.Linear
    assert fused.weight.is_contiguous() and not fused.weight.requires_grad
    assert torch.allclose(fused(x), before, atol=1e-12, rtol=0)
    assert torch.equal(fused.weight[N : 2 * N], w0_k) and torch.equal(fused.bias, bias)
    assert hyperet_parameters(model) == [] and hyperet_report(model) == {}


# ----------------------------------------------------------------------------- mistakes


@pytest.mark.parametrize("value", [[], ["x"], ["v", "q"], ["q", "q"], ["q", "K"], "qv", None])
def test_bad_fused_slices_is_a_config_error_naming_the_field(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"hyperet\.fused_slices .* q, k, v in that order"):
        HyperETConfig(fused_slices=value)


@pytest.mark.parametrize("slices", [["q"], ["k"], ["v"], ["q", "k"], ["q", "v"], ["k", "v"], ["q", "k", "v"]])
def test_every_ordered_subset_is_accepted(slices: list[str]) -> None:
    assert HyperETConfig(fused_slices=slices).fused_slices == slices


def test_default_fused_slices_are_q_and_v_and_not_shared() -> None:
    a, b = HyperETConfig(), HyperETConfig()
    assert a.fused_slices == ["q", "v"] and a.fused_slices is not b.fused_slices


@pytest.mark.parametrize(("name", "out_features"), [("qkv", 2 * N), ("qkv", 4 * N), ("in_proj", N)])
def test_fused_name_with_another_shape_is_a_config_error(name: str, out_features: int) -> None:
    q_proj = nn.Linear(N, N)
    model = attention_block(q_proj=q_proj, **{name: nn.Linear(N, out_features)})
    targets = r"self_attn\.(?:q_proj|qkv|in_proj)$"
    with pytest.raises(ConfigError, match=rf"self_attn\.{name} .* fused q/k/v .* {out_features}×{N}, not {3 * N}×{N}"):
        apply_hyperet(model, HyperETConfig(targets=targets))
    assert not parametrize.is_parametrized(q_proj)  # nothing registered before the error


def test_in_proj_is_fused_too() -> None:
    _, fused = separate_and_fused()
    model = attention_block(in_proj=fused)
    apply_hyperet(model, HyperETConfig(targets=r"in_proj$"))
    assert isinstance(fused_parametrization(fused), FusedHyperETWeight)


def test_a_qkv_name_only_matters_at_the_end() -> None:
    model = attention_block(qkv_out=nn.Linear(N, N))  # does not end in qkv: a separate weight
    apply_hyperet(model, HyperETConfig(targets="qkv_out$"))
    assert isinstance(model.encoder.layers[0].self_attn.qkv_out.parametrizations.weight[0], HyperETWeight)


# ----------------------------------------------------------------------------- real towers


def _tower(kind: str) -> nn.Module:
    """A tiny tower 32 wide (2 heads) from the shared tiny configs, seeded."""
    from transformers import Blip2VisionModel, DINOv3ViTModel, SamVisionModel

    model_class = {"sam": SamVisionModel, "blip2": Blip2VisionModel, "dinov3": DINOv3ViTModel}[kind]
    torch.manual_seed(0)
    return model_class(vision_config(kind, hidden_size=32, num_attention_heads=2)).eval()


def sam_vision_model() -> nn.Module:
    return _tower("sam")


def blip2_vision_model() -> nn.Module:
    return _tower("blip2")


TOWERS = {"sam": sam_vision_model, "blip2": blip2_vision_model}


def qkv_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.endswith("qkv")]


@pytest.mark.parametrize("kind", list(TOWERS))
def test_default_targets_adapt_the_fused_qkv_of_real_towers_and_only_m_gets_gradients(kind: str) -> None:
    tower = TOWERS[kind]()
    pixels = torch.randn(2, 3, 32, 32)
    before = tower(pixel_values=pixels).last_hidden_state
    tower.requires_grad_(False)
    biases = {n: m.bias.detach().clone() for n, m in tower.named_modules() if n.endswith("qkv")}
    names = apply_hyperet(tower, HyperETConfig())
    assert names == qkv_names(tower) and len(names) == 2
    assert all(re.search(r"layers\.\d+\.(?:attn|self_attn)\.qkv$", n) for n in names)
    assert torch.allclose(tower(pixel_values=pixels).last_hidden_state, before, atol=1e-6)  # identity at start

    tower(pixel_values=pixels).last_hidden_state.pow(2).mean().backward()
    m_params = dict(hyperet_parameters(tower))
    assert len(m_params) == 4 and all(".slices.q." in n or ".slices.v." in n for n in m_params)
    with_grad = {n for n, p in tower.named_parameters() if p.grad is not None}
    assert with_grad == set(m_params)
    assert all(m_params[n].grad.abs().sum() > 0 for n in m_params)
    for name in names:
        module = tower.get_submodule(name)
        assert module.parametrizations.weight.original.grad is None
        assert not module.parametrizations.weight.original.requires_grad
        assert torch.equal(module.bias, biases[name])
    report = hyperet_report(tower)
    assert list(report) == [f"{n}[{s}]" for n in names for s in ("q", "v")]
    assert all(entry["clamp_fraction"] == 0.0 for entry in report.values())


def test_trainable_only_state_round_trip_on_a_fused_tower() -> None:
    """What checkpoints hold (the trainable tensors) restores a fused tower's outputs on a freshly adapted copy."""
    tower = blip2_vision_model()
    fresh = copy.deepcopy(tower)
    for model in (tower, fresh):
        model.requires_grad_(False)
        apply_hyperet(model, HyperETConfig(variant="block_diagonal", block_size=4, learn_curvature=True))
    set_non_identity(tower, seed=6)
    state = {n: p.detach().clone() for n, p in tower.named_parameters() if p.requires_grad}
    assert set(state) == {n for n, _ in hyperet_parameters(tower)}
    result = fresh.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys).isdisjoint(state)
    pixels = torch.randn(1, 3, 32, 32)
    assert torch.equal(fresh(pixel_values=pixels).last_hidden_state, tower(pixel_values=pixels).last_hidden_state)


@pytest.mark.filterwarnings("ignore:FSDP2-wrapped module .* returned a view tensor")
@pytest.mark.parametrize("kind", list(TOWERS))
def test_fsdp2_units_of_fused_towers(one_process_group: Any, kind: str) -> None:
    """FSDP2 shards the fused towers layer by layer; the report read through ``gathered`` and the forward give the
    unsharded numbers, and M gets its gradients."""
    from torch.distributed.tensor import DTensor

    from lit_hyperet.sharding import gathered, owning_units, shard_model

    tower = TOWERS[kind]()
    tower.requires_grad_(False)
    apply_hyperet(tower, HyperETConfig(variant="banded", band_width=1))
    set_non_identity(tower, seed=7)
    reference = copy.deepcopy(tower)
    pixels = torch.randn(1, 3, 32, 32)
    expected = reference(pixel_values=pixels).last_hidden_state
    expected_report = hyperet_report(reference)

    assert shard_model(tower, one_process_group["data_parallel"], "32-true") == 2
    assert any(isinstance(p, DTensor) for _, p in hyperet_parameters(tower))
    names = adapted_module_names(tower)
    assert len(owning_units(tower, names)) == 2
    with gathered(tower, names):
        assert hyperet_report(tower) == expected_report
    out = tower(pixel_values=pixels).last_hidden_state
    assert torch.allclose(out, expected, atol=1e-6)
    out.pow(2).mean().backward()
    assert all(p.grad is not None for _, p in hyperet_parameters(tower))


# ----------------------------------------------------------------------------- default targets elsewhere


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def default_matches(model: nn.Module) -> list[str]:
    pattern = re.compile(DEFAULT_TARGETS)
    return [n for n in linear_names(model) if pattern.search(n)]


def test_default_targets_adapt_dinov3_q_and_v_only() -> None:
    tower = _tower("dinov3")
    pixels = torch.randn(1, 3, 32, 32)
    before = tower(pixel_values=pixels).last_hidden_state
    names = apply_hyperet(tower, HyperETConfig())
    assert names == [f"model.layer.{i}.attention.{p}" for i in range(2) for p in ("v_proj", "q_proj")]
    assert all(isinstance(m.parametrizations.weight[0], HyperETWeight) for _, m, _ in adapted_modules(tower))
    assert torch.allclose(tower(pixel_values=pixels).last_hidden_state, before, atol=1e-6)


def test_default_targets_match_no_llama_or_qformer_linear() -> None:
    from transformers import Blip2QFormerConfig, Blip2QFormerModel, LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    )
    qformer = Blip2QFormerModel(
        Blip2QFormerConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, encoder_hidden_size=32
        )
    )
    for model in (llama, qformer):
        assert linear_names(model) and default_matches(model) == []
        with pytest.raises(ConfigError, match="match no nn.Linear"):
            apply_hyperet(model, HyperETConfig())


def test_default_targets_in_whole_sam_and_blip2_models_are_the_vision_qkv() -> None:
    """A whole SamModel (its mask decoder has q/v projections) and a whole BLIP-2 (Q-Former and OPT language model):
    only the vision encoder's fused projections match."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, OPTConfig, SamConfig, SamModel

    sam = SamModel(
        SamConfig(
            vision_config=sam_vision_model().config.to_dict(),
            prompt_encoder_config={
                "hidden_size": 16,
                "image_size": 32,
                "patch_size": 8,
                "image_embedding_size": 4,
                "mask_input_channels": 4,
            },
            mask_decoder_config={"hidden_size": 16, "mlp_dim": 32, "num_attention_heads": 2, "iou_head_hidden_dim": 16},
        )
    )
    opt = OPTConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=2,
        word_embed_proj_dim=32,
        max_position_embeddings=64,
    )
    blip2 = Blip2ForConditionalGeneration(
        Blip2Config(
            vision_config=blip2_vision_model().config.to_dict(),
            qformer_config={
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "encoder_hidden_size": 32,
            },
            text_config=opt.to_dict(),
            num_query_tokens=4,
        )
    )
    assert default_matches(sam) == ["vision_encoder.layers.0.attn.qkv", "vision_encoder.layers.1.attn.qkv"]
    assert any("mask_decoder" in n and n.endswith("q_proj") for n in linear_names(sam))
    assert default_matches(blip2) == [f"vision_model.encoder.layers.{i}.self_attn.qkv" for i in range(2)]
    assert any(n.startswith("qformer.") and n.endswith("query") for n in linear_names(blip2))
    assert any(n.startswith("language_model.") and n.endswith("q_proj") for n in linear_names(blip2))
