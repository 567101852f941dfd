"""HyperET core: structured matrices, the three spaces, the identity, registration, merge and report."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from lit_hyperet.hyperet import (
    HyperETConfig,
    HyperETWeight,
    apply_hyperet,
    hyperbolic_weight,
    hyperet_parameters,
    hyperet_report,
    merge_hyperet,
)
from lit_hyperet.models.tiny_configs import llama_config, llava_config, vision_config
from lit_hyperet.structured import BandedMatrix, BlockDiagonalMatrix, DiagonalMatrix, FullMatrix

VARIANT_KWARGS = {
    "diagonal": {},
    "block_diagonal": {"block_size": 4},
    "banded": {"band_width": 2},
    "full": {},
}


def perturb(module: nn.Module, scale: float = 0.1, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


# ----------------------------------------------------------------------------- structured matrices


def dense_reference(matrix: nn.Module) -> torch.Tensor:
    """The n×n matrix built independently of the forward."""
    if isinstance(matrix, DiagonalMatrix):
        return torch.diag(matrix.diag)
    if isinstance(matrix, BlockDiagonalMatrix):
        return torch.block_diag(*matrix.blocks)
    if isinstance(matrix, BandedMatrix):
        return sum(torch.diag(v, k) for k, v in matrix.diagonals().items())
    return matrix.weight


@pytest.mark.parametrize("variant", list(VARIANT_KWARGS))
def test_structured_forward_equals_dense_reference(variant: str) -> None:
    matrix = HyperETConfig(variant=variant, **VARIANT_KWARGS[variant]).build_matrix(16).double()
    assert torch.equal(matrix.dense(), torch.eye(16, dtype=torch.float64))  # identity-initialised
    perturb(matrix)
    x = torch.randn(7, 16, dtype=torch.float64)
    ref = dense_reference(matrix)
    assert torch.allclose(matrix(x), x @ ref.T, atol=1e-13, rtol=0)
    assert torch.allclose(matrix.dense(), ref, atol=1e-13, rtol=0)


def test_banded_reference_has_the_band_structure() -> None:
    matrix = BandedMatrix(9, 2)
    perturb(matrix)
    dense = dense_reference(matrix)
    i, j = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")
    assert (dense[(i - j).abs() > 2] == 0).all() and (dense[(i - j).abs() <= 2] != 0).all()


def test_parameter_counts_for_n_1024() -> None:
    assert DiagonalMatrix(1024).num_parameters() == 1024
    assert BlockDiagonalMatrix(1024, 4).num_parameters() == 4096
    assert BandedMatrix(1024, 2).num_parameters() == 5114
    assert FullMatrix(1024).num_parameters() == 1_048_576


@pytest.mark.parametrize(
    ("variant", "expected"),
    [("diagonal", 49_152), ("block_diagonal", 196_608), ("banded", 245_472), ("full", 50_331_648)],
)
def test_parameter_counts_for_q_and_v_of_24_clip_l_blocks(variant: str, expected: int) -> None:
    from transformers import CLIPVisionModel

    config = vision_config("clip", hidden_size=1024, intermediate_size=8, num_hidden_layers=24, num_attention_heads=16)
    with torch.device("meta"):
        tower = CLIPVisionModel(config)
    # euclidean: the count does not depend on the space, and meta tensors need no data-dependent branching
    names = apply_hyperet(tower, HyperETConfig(variant=variant, space="euclidean", **VARIANT_KWARGS[variant]))
    assert len(names) == 48
    assert sum(p.numel() for _, p in hyperet_parameters(tower)) == expected


def test_block_size_that_does_not_divide_names_both_numbers() -> None:
    with pytest.raises(ValueError, match=r"block_size 5 .* 1024"):
        HyperETConfig(variant="block_diagonal", block_size=5).build_matrix(1024)
    with pytest.raises(ValueError, match=r"num_blocks 3 .* 1024"):
        HyperETConfig(variant="block_diagonal", num_blocks=3).build_matrix(1024)
    assert HyperETConfig(variant="block_diagonal", num_blocks=256).build_matrix(1024).block_size == 4


def test_config_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="diagonal, block_diagonal, banded, full"):
        HyperETConfig(variant="lowrank")
    with pytest.raises(ValueError, match="hyperbolic, hyperbolic_no_mobius, euclidean"):
        HyperETConfig(space="spherical")


# ----------------------------------------------------------------------------- the identity


@pytest.mark.parametrize("variant", list(VARIANT_KWARGS))
@pytest.mark.parametrize("fast_path", [False, True])
def test_identity_hyperbolic_equals_euclidean_for_unit_rows(variant: str, fast_path: bool) -> None:
    torch.manual_seed(0)
    n = 32
    w0 = torch.randn(48, n, dtype=torch.float64) / math.sqrt(n)  # row norms ≈ 1, like CLIP weights
    hw = HyperETWeight(n, HyperETConfig(variant=variant, fast_path=fast_path, **VARIANT_KWARGS[variant])).double()
    perturb(hw.matrix, scale=0.3)
    assert not torch.equal(hw.matrix.dense(), torch.eye(n, dtype=torch.float64))
    expected = w0 @ hw.matrix.dense().T
    assert (hw(w0) - expected).abs().max() < 1e-10
    assert hw.clamp_fraction(w0) == 0.0


@pytest.mark.parametrize("variant", list(VARIANT_KWARGS))
def test_identity_breaks_when_clamps_fire_and_report_says_so(variant: str) -> None:
    torch.manual_seed(0)
    n = 32
    linear = nn.Linear(n, n, bias=False).double()
    with torch.no_grad():
        linear.weight.mul_(torch.linspace(1, 400, n, dtype=torch.float64)[:, None])  # row norms up to ~100s
    model = nn.ModuleDict(
        {
            "encoder": nn.ModuleDict(
                {"layers": nn.ModuleList([nn.ModuleDict({"self_attn": nn.ModuleDict({"q_proj": linear})})])}
            )
        }
    )
    apply_hyperet(model, HyperETConfig(variant=variant, **VARIANT_KWARGS[variant]))
    perturb(model, scale=0.3)
    hw = linear.parametrizations.weight[0]
    w0 = linear.parametrizations.weight.original
    expected = w0 @ hw.matrix.dense().to(w0.dtype).T
    assert (linear.weight - expected).norm() / expected.norm() > 0.05
    # the fast path and the full clamped chain agree exactly on the clamped rows too
    assert torch.allclose(linear.weight, hyperbolic_weight(w0, hw.matrix, 0.01, fast_path=False), atol=1e-12)
    report = hyperet_report(model)["encoder.layers.0.self_attn.q_proj"]
    assert report["identity_deviation"] > 0.05
    assert 0.0 < report["clamp_fraction"] < 1.0


def test_spaces_differ_as_defined() -> None:
    torch.manual_seed(0)
    n = 16
    w0 = torch.randn(8, n, dtype=torch.float64) / 2
    weights = {}
    for space in ("hyperbolic", "hyperbolic_no_mobius", "euclidean"):
        hw = HyperETWeight(n, HyperETConfig(variant="full", space=space)).double()
        perturb(hw.matrix, scale=0.3, seed=1)
        weights[space] = hw(w0)
        ref = w0 @ hw.matrix.dense().T
    assert torch.allclose(weights["euclidean"], ref, atol=1e-14)
    assert torch.allclose(weights["hyperbolic"], ref, atol=1e-12)
    from lit_hyperet.geometry import exp0, log0

    no_mobius = log0(exp0(w0, 0.01) @ hw.matrix.dense().T, 0.01)
    assert torch.allclose(weights["hyperbolic_no_mobius"], no_mobius, atol=1e-12)
    assert (weights["hyperbolic_no_mobius"] - ref).abs().max() > 1e-5  # geometry without Möbius is not the identity


# ----------------------------------------------------------------------------- towers and models


def tiny_tower(kind: str) -> nn.Module:
    from transformers import CLIPVisionModel, Dinov2Model, SiglipVisionModel

    config = vision_config(kind, hidden_size=32, intermediate_size=64, num_attention_heads=2)
    torch.manual_seed(0)
    model_class = {"clip": CLIPVisionModel, "siglip": SiglipVisionModel, "dinov2": Dinov2Model}[kind]
    return model_class(config).eval()


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2"])
def test_default_targets_adapt_q_and_v_of_every_tower(kind: str) -> None:
    tower = tiny_tower(kind)
    pixels = torch.randn(2, 3, 32, 32)
    before = tower(pixel_values=pixels).last_hidden_state
    grads_before = {n: p.requires_grad for n, p in tower.named_parameters()}
    names = apply_hyperet(tower, HyperETConfig(variant="banded", band_width=1))
    assert len(names) == 4 and all(n.rsplit(".", 1)[-1] in ("q_proj", "v_proj", "query", "value") for n in names)
    for n, requires in grads_before.items():  # other parameters untouched
        if not any(n.startswith(a + ".") for a in names):
            assert dict(tower.named_parameters())[n].requires_grad == requires
    assert torch.allclose(tower(pixel_values=pixels).last_hidden_state, before, atol=1e-6)


def test_optimizer_step_changes_only_hyperet_parameters_and_merge_keeps_outputs() -> None:
    tower = tiny_tower("clip")
    tower.requires_grad_(False)
    apply_hyperet(tower, HyperETConfig(variant="block_diagonal", num_blocks=8, learn_curvature=True))
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in hyperet_parameters(tower)}
    assert all(p.dim() == 1 for n, p in hyperet_parameters(tower) if "curvature" in n)
    snapshot = {n: p.detach().clone() for n, p in tower.named_parameters()}
    opt = torch.optim.AdamW([p for p in tower.parameters() if p.requires_grad], lr=1e-2)
    pixels = torch.randn(2, 3, 32, 32)
    for _ in range(2):
        tower(pixel_values=pixels).last_hidden_state.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    for n, p in tower.named_parameters():
        if n in trainable and "curvature" not in n:
            assert not torch.equal(p, snapshot[n]), n
        elif n not in trainable:
            assert torch.equal(p, snapshot[n]), n  # W0 and everything else bit-identical
    adapted = tower(pixel_values=pixels).last_hidden_state
    merge_hyperet(tower)
    assert not any(parametrize.is_parametrized(m) for m in tower.modules())
    assert torch.allclose(tower(pixel_values=pixels).last_hidden_state, adapted, atol=1e-6)


def test_learnable_curvature_gets_gradient_when_the_chain_runs() -> None:
    hw = HyperETWeight(8, HyperETConfig(learn_curvature=True, fast_path=False))
    perturb(hw.matrix, scale=0.3)
    w0 = torch.randn(4, 8) * 30  # clamps fire: the weight depends on c
    hw(w0).sum().backward()
    assert hw.curvature_raw.grad is not None and hw.curvature_raw.grad.abs().item() > 0
    assert float(hw.curvature().detach()) == pytest.approx(0.01)


def test_whole_llava_adapts_only_the_vision_tower() -> None:
    from transformers import LlavaForConditionalGeneration

    config = llava_config(
        vision_config("clip", hidden_size=32, intermediate_size=64, num_attention_heads=2),
        llama_config(vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=2),
        image_token_index=63,
    )
    model = LlavaForConditionalGeneration(config)
    names = apply_hyperet(model, HyperETConfig())
    assert len(names) == 4
    assert all("vision_tower" in n and "language_model" not in n for n in names)


def test_no_match_lists_candidates() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"match no nn.Linear; candidates \(1\): 0"):
        apply_hyperet(model, HyperETConfig())


@pytest.mark.parametrize("variant", list(VARIANT_KWARGS))
def test_bf16_autocast_finite_for_row_norms_1e_minus6_to_1e3(variant: str) -> None:
    torch.manual_seed(0)
    n = 32
    linear = nn.Linear(n, n)
    with torch.no_grad():
        norms = torch.logspace(-6, 3, n)
        linear.weight.copy_(linear.weight / linear.weight.norm(dim=-1, keepdim=True) * norms[:, None])
    model = nn.ModuleDict(
        {
            "encoder": nn.ModuleDict(
                {"layers": nn.ModuleList([nn.ModuleDict({"self_attn": nn.ModuleDict({"v_proj": linear})})])}
            )
        }
    )
    apply_hyperet(model, HyperETConfig(variant=variant, **VARIANT_KWARGS[variant]))
    perturb(model, scale=0.2)
    x = torch.randn(5, n)
    for space in ("hyperbolic", "hyperbolic_no_mobius", "euclidean"):
        linear.parametrizations.weight[0].space = space
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = linear(x)
        out.float().pow(2).mean().backward()
        assert torch.isfinite(out.float()).all(), space
        for _, p in hyperet_parameters(model):
            assert p.grad is not None and torch.isfinite(p.grad).all(), space
            p.grad = None
