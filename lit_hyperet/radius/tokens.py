"""What is measured: a model's visual tokens (LLaVA or MemVP) and the radius quantities of each token.

**Tokens.** A vision-tower hidden layer (patch tokens, CLS optional) and, on request, the projector output. Which
leading tokens are not patches comes from the tower type (:func:`lit_hyperet.encoders.prefix_tokens`: CLIP and DINOv2
have one CLS, SigLIP none, DINOv2-with-registers a CLS plus registers); for an unknown tower it is the sequence length
minus ``(image_size // patch_size)²``. The projector output is computed exactly as the model feeds its LLM
(:class:`VisionView`): for LLaVA the config's ``vision_feature_layer`` and ``vision_feature_select_strategy``, then
``multi_modal_projector``; for MemVP the tower's ``feature_layer`` without CLS, ``post_layernorm`` and ``adapter_proj``
(before MemVP's 0.01 scale).

**Quantities.** For a token feature ``f`` (a Euclidean vector, treated as a tangent vector at the origin) mapped into
the Poincaré ball (curvature ``-c``) as ``x = exp0(f)``:

* ``rad`` — the hyperbolic radius ``Rad(exp0(f)) = (2/√c)·artanh(√c‖exp0(f)‖)``, computed through
  ``geometry.radius(geometry.exp0(f, c), c)`` in float64. It equals ``2‖f‖`` exactly, for every ``c``.
* ``ball_norm`` — the Euclidean norm of the ball point ``‖exp0(f)‖ = tanh(√c‖f‖)/√c``: what the released HyperET
  visualisation scripts report per token (with ``c = 0.01``); it saturates at ``1/√c``.
* ``norm_radius`` — the 0–1 normalised radius ``√c·‖exp0(f)‖ = tanh(√c‖f‖)``: ``ball_norm`` divided by the ball's
  radius ``1/√c``.

geoopt clamps ``artanh`` near 1, so the ``rad`` chain saturates once ``√c‖f‖`` exceeds about 8.4 in float64
(``‖f‖ ≳ 84`` at ``c = 0.01``; in float32 already from ``‖f‖ ≈ 50``). Tokens where the chain departs from ``2‖f‖``
by more than :data:`SATURATION_RTOL` get the closed form ``2‖f‖`` instead, and are counted (``saturated``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lit_hyperet import geometry
from lit_hyperet.encoders import prefix_tokens
from lit_hyperet.user_errors import ConfigError

# ------------------------------------------------------------------------------------------------ quantities

QUANTITIES: tuple[str, ...] = ("rad", "ball_norm", "norm_radius")
#: Formula of each reported quantity (written into JSON summaries, CSV headers' documentation and CLI help).
FORMULAS: dict[str, str] = {
    "rad": "Rad(exp0(f)) = (2/sqrt(c)) * artanh(sqrt(c) * ||exp0(f)||) = 2 * ||f|| (hyperbolic radius, any c)",
    "ball_norm": "||exp0(f)|| = tanh(sqrt(c) * ||f||) / sqrt(c) (Euclidean norm of the ball point; released scripts; "
    "saturates at 1/sqrt(c))",
    "norm_radius": "sqrt(c) * ||exp0(f)|| = tanh(sqrt(c) * ||f||) in [0, 1) (ball_norm divided by the ball radius "
    "1/sqrt(c))",
}
NORMALISATION = (
    "norm_radius = sqrt(c) * ||exp0(f)|| = tanh(sqrt(c) * ||f||): the Euclidean norm of the ball point divided by the "
    "ball's radius 1/sqrt(c), so 0 is the origin and 1 the boundary"
)
IDENTITY = "Rad(exp0(f)) = 2 * ||f|| exactly (independent of c); 'rad' is the hyperbolic radius, not ||exp0(f)||"
SATURATION_RTOL = 1e-6


def token_quantities(features: torch.Tensor, c: float = 0.01) -> tuple[dict[str, torch.Tensor], int]:
    """``rad``, ``ball_norm`` and ``norm_radius`` of each feature vector (last dim reduced), in float64.

    Returns the quantities (each of shape ``features.shape[:-1]``) and the number of tokens whose ``rad`` chain
    saturated and was replaced by the closed form ``2‖f‖`` (see the module docstring).
    """
    if not c > 0:
        raise ConfigError(f"curvature c must be > 0, got {c}")
    f = features.detach().to(torch.float64)
    ball = geometry.exp0(f, c)
    chain = geometry.radius(ball, c)
    closed = 2 * f.norm(dim=-1)
    saturated = (chain - closed).abs() > SATURATION_RTOL * closed.clamp_min(1e-12)
    rad = torch.where(saturated, closed, chain)
    ball_norm = ball.norm(dim=-1)
    quantities = {"rad": rad, "ball_norm": ball_norm, "norm_radius": math.sqrt(c) * ball_norm}
    return quantities, int(saturated.sum())


# ------------------------------------------------------------------------------------------------ tokens

SOURCES: tuple[str, ...] = ("vision", "projector")


@dataclass(frozen=True)
class TokenSelection:
    """What the vision-tower radii are computed on.

    Args:
        layer: index into the tower's ``hidden_states`` (0 = embeddings; negative counts from the end); a list
            concatenates layers like LLaVA does; ``None`` takes the model config's ``vision_feature_layer``.
        include_cls: keep the CLS token with the patch tokens (register tokens are never kept; towers without a CLS,
            like SigLIP, have nothing to add).
        projector: also compute the projector output's tokens (source ``projector``).
    """

    layer: int | list[int] | None = None
    include_cls: bool = False
    projector: bool = False


@dataclass
class VisionView:
    """What the radius reads of a model: its vision tower, the hidden state(s) it feeds the LLM, whether the CLS is
    dropped before the projector (``default``) or kept (``full``), and the projector on those features."""

    tower: nn.Module
    feature_layer: int | list[int]
    select_strategy: str
    project: Callable[[torch.Tensor], torch.Tensor]


def vision_view(model: nn.Module) -> VisionView:
    """The :class:`VisionView` of a (peft-wrapped) ``LlavaForConditionalGeneration`` or a ``MemVPModel``."""
    from lit_hyperet.models.memvp.model import MemVPModel  # the tools know the families

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if isinstance(base, MemVPModel):
        tower = base.vision_tower
        return VisionView(tower, base.feature_layer, "default", lambda f: base.adapter_proj(tower.post_layernorm(f)))
    if not hasattr(base, "model") or not hasattr(base.model, "vision_tower"):
        raise TypeError(
            f"expected a (peft-wrapped) LlavaForConditionalGeneration or a MemVPModel, got {type(base).__name__}"
        )
    config = base.config
    return VisionView(
        base.model.vision_tower,
        config.vision_feature_layer,
        config.vision_feature_select_strategy,
        base.model.multi_modal_projector,
    )


def num_prefix_tokens(vision_config, seq_len: int) -> int:
    """Leading non-patch tokens (CLS, registers) of a tower's hidden states."""
    try:
        return prefix_tokens(vision_config)
    except ValueError:
        image_size, patch_size = getattr(vision_config, "image_size", None), getattr(vision_config, "patch_size", None)
        if not image_size or not patch_size:
            raise
        extra = seq_len - (int(image_size) // int(patch_size)) ** 2
        if extra < 0:
            raise ValueError(f"{vision_config.model_type}: {seq_len} tokens < patch count for {image_size}px") from None
        return extra


def resolved_layer(model: nn.Module, selection: TokenSelection) -> int | list[int]:
    """The layer(s) the vision radii use: ``selection.layer`` or the layer the model feeds its LLM."""
    layer = selection.layer if selection.layer is not None else vision_view(model).feature_layer
    return list(layer) if isinstance(layer, (list, tuple)) else int(layer)


def _pick(hidden_states: tuple[torch.Tensor, ...], layer: int | list[int]) -> torch.Tensor:
    layers = layer if isinstance(layer, list) else [layer]
    n = len(hidden_states)
    for i in layers:
        if not -n <= i < n:
            raise ConfigError(f"vision layer {i} out of range: the tower has {n} hidden states (embeddings + blocks)")
    return torch.cat([hidden_states[i] for i in layers], dim=-1)


def interpolates(tower: nn.Module) -> bool:
    """Whether the tower's forward takes ``interpolate_pos_encoding`` (CLIP, SigLIP, BLIP-2's tower)."""
    return "interpolate_pos_encoding" in inspect.signature(tower.forward).parameters


@torch.no_grad()
def token_features(llava: nn.Module, pixel_values: torch.Tensor, selection: TokenSelection) -> dict[str, torch.Tensor]:
    """``{"vision": [N, T, D], "projector": [N, T', D_llm]}`` (projector only when asked) for ``N`` images."""
    view = vision_view(llava)
    tower = view.tower
    param = next(tower.parameters())
    # interpolation is the identity at the tower's own resolution; other sizes need it
    extra = {"interpolate_pos_encoding": True} if interpolates(tower) else {}
    pixels = pixel_values.to(device=param.device, dtype=param.dtype)
    out = tower(pixels, output_hidden_states=True, return_dict=True, **extra)
    # Spatial maps (B, H, W, C), as SAM's encoder emits, become H·W tokens in row-major order, as LLaVA reads them.
    hidden = tuple(h.flatten(1, 2) if h.dim() == 4 else h for h in out.hidden_states)
    selected = _pick(hidden, resolved_layer(llava, selection))
    prefix = num_prefix_tokens(tower.config, selected.shape[1])
    patches = selected[:, prefix:]
    if selection.include_cls and prefix >= 1:
        patches = torch.cat([selected[:, :1], patches], dim=1)
    result = {"vision": patches}
    if selection.projector:
        feed = _pick(hidden, resolved_layer(llava, TokenSelection()))
        if view.select_strategy == "default":
            feed = feed[:, 1:]
        result["projector"] = view.project(feed)
    return result
