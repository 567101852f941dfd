"""The trainable BLIP-2 of image–text alignment, and its embeddings through transformers' own submodules.

Frozen: the vision tower (optionally with HyperET on its attention projections) and, unless image–text matching is
trained, the ITM head. Trainable: the query tokens, the Q-Former, its text embeddings and the two projections (plus
the ITM head when asked). The embeddings are read from the submodules exactly as ``Blip2ForImageTextRetrieval``'s ITC
forward does, but before its L2 normalisation: per-query image embeddings ``(B, Q, D)`` and text ``[CLS]``
embeddings ``(T, D)``; the ITM logits exactly as its ``use_image_text_matching_head`` forward does, from vision
features computed once (the tower is not run again for every pair).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2ForImageTextRetrieval

from lit_hyperet.hyperet import HyperETConfig, apply_hyperet, hyperet_parameters
from lit_hyperet.models.loading import ModelSource, NamedParams, parameter_counts
from lit_hyperet.user_errors import ConfigError

#: Submodules (attribute names of ``Blip2ForImageTextRetrieval``) that alignment trains.
QFORMER_PARTS = ("query_tokens", "embeddings", "qformer", "vision_projection", "text_projection")
#: Trained only with image–text matching.
ITM_PARTS = ("itm_head",)
#: Submodules the functions below call directly (never the model's own ``forward``): each is an FSDP2 unit under
#: ``FSDP2Strategy`` (:func:`lit_hyperet.sharding.shard_parts`). ``query_tokens``, a bare parameter read directly,
#: stays a replicated tensor.
CALLED_PARTS = ("vision_model", "qformer", "embeddings", "vision_projection", "text_projection", "itm_head")
GROUPS = ("hyperet", "qformer")


def _qformer_params(model: Blip2ForImageTextRetrieval, parts: tuple[str, ...] = QFORMER_PARTS) -> NamedParams:
    out: NamedParams = []
    for part in parts:
        value = getattr(model, part)
        if isinstance(value, nn.Parameter):
            out.append((part, value))
        else:
            out += [(f"{part}.{n}", p) for n, p in value.named_parameters()]
    return out


def _groups(model: Blip2ForImageTextRetrieval) -> dict[str, NamedParams]:
    hyperet = [(f"vision_model.{n}", p) for n, p in hyperet_parameters(model.vision_model)]
    return {"hyperet": hyperet, "qformer": _qformer_params(model, QFORMER_PARTS + ITM_PARTS)}


def trainable_groups(model: Blip2ForImageTextRetrieval) -> dict[str, NamedParams]:
    """Trainable parameters by group, ``{"hyperet", "qformer"}`` -> ``[(name relative to model, param)]``."""
    return {group: [(n, p) for n, p in params if p.requires_grad] for group, params in _groups(model).items()}


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``total`` and ``trainable`` parameter counts plus the trainable count of each group."""
    return parameter_counts(model, trainable_groups(model))


def build_blip2_retrieval(
    source: ModelSource,
    hyperet: HyperETConfig | None = None,
    train_itm: bool = False,
    gradient_checkpointing: bool = False,
) -> Blip2ForImageTextRetrieval:
    """``source``'s model with the vision tower frozen, the ITM head frozen unless ``train_itm``, the Q-Former side
    trainable, and HyperET (when given) applied to the vision tower only: ``hyperet.targets`` are matched against
    names inside it (``encoder.layers.N.self_attn.qkv``, a fused projection whose q and v slices the default adapts),
    so a pattern can never freeze Q-Former weights. The trainable set is checked to be exactly Q-Former side (+ ITM
    head) + HyperET. ``gradient_checkpointing``: transformers' non-reentrant activation checkpointing of the layers."""
    model = source.load_model()
    if not isinstance(model, Blip2ForImageTextRetrieval):
        raise ConfigError(f"{type(source).__name__} gave a {type(model).__name__}, not a Blip2ForImageTextRetrieval")
    model.requires_grad_(False)
    if gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    if hyperet is not None:
        apply_hyperet(model.vision_model, hyperet)
    trained = _qformer_params(model, QFORMER_PARTS + (ITM_PARTS if train_itm else ()))
    trained += _groups(model)["hyperet"]
    for _, p in trained:
        p.requires_grad_(True)
    expected = {id(p) for _, p in trained}
    extra = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in expected]
    if extra:
        raise RuntimeError(f"trainable set is wrong: unexpected trainable {extra[:10]}")
    return model


def vision_features(model: Blip2ForImageTextRetrieval, pixel_values: torch.Tensor) -> torch.Tensor:
    """The vision tower's last hidden state ``(B, N, W)``; position embeddings are interpolated when the images are
    not at the tower's own resolution (LAVIS' 364 px retrieval fine-tuning of a 224 px tower). The tower runs without
    autograd unless it has trainable (HyperET) parameters."""
    vision = model.vision_model
    tower_dtype = vision.embeddings.patch_embedding.weight.dtype
    track = torch.is_grad_enabled() and any(p.requires_grad for p in vision.parameters())
    interpolate = tuple(pixel_values.shape[-2:]) != (model.config.vision_config.image_size,) * 2
    with torch.set_grad_enabled(track):
        pixels = pixel_values.to(tower_dtype)
        return vision(pixel_values=pixels, interpolate_pos_encoding=interpolate).last_hidden_state


def image_query_embeddings(
    model: Blip2ForImageTextRetrieval, pixel_values: torch.Tensor | None = None, features: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-query image embeddings ``(B, Q, D)``, not normalised: vision tower (or its ``features`` when given) →
    Q-Former queries cross-attending to it → ``vision_projection``."""
    if features is None:
        features = vision_features(model, pixel_values)
    queries = model.query_tokens.expand(features.shape[0], -1, -1)
    mask = torch.ones(features.shape[:-1], dtype=torch.long, device=features.device)
    out = model.qformer(query_embeds=queries, encoder_hidden_states=features, encoder_attention_mask=mask)
    hidden = out.last_hidden_state.to(model.vision_projection.weight.dtype)
    return model.vision_projection(hidden)


def text_embeddings(
    model: Blip2ForImageTextRetrieval, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Text embeddings ``(T, D)``, not normalised: the Q-Former's text pass (no queries) → its first (``[CLS]``)
    token → ``text_projection``. ``input_ids`` hold no image placeholder tokens."""
    embedded = model.embeddings(input_ids=input_ids)
    out = model.qformer(query_embeds=embedded, query_length=0, attention_mask=attention_mask)
    cls = out.last_hidden_state[:, 0].to(model.text_projection.weight.dtype)
    return model.text_projection(cls)


def itm_logits(
    model: Blip2ForImageTextRetrieval, features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Image–text matching logits ``(B, 2)`` (no match, match) of ``B`` pairs: vision ``features`` of each pair's image
    (:func:`vision_features`) and its tokenised text, through the Q-Former's joint query + text pass and the model's
    own ``itm_head``, averaged over the queries: ``Blip2ForImageTextRetrieval(use_image_text_matching_head=True)``
    for a model without image placeholder tokens."""
    queries = model.query_tokens.expand(features.shape[0], -1, -1)
    query_mask = torch.ones(queries.shape[:-1], dtype=attention_mask.dtype, device=attention_mask.device)
    embedded = model.embeddings(input_ids=input_ids, query_embeds=queries)
    image_mask = torch.ones(features.shape[:-1], dtype=torch.long, device=features.device)
    out = model.qformer(
        query_embeds=embedded,
        query_length=queries.shape[1],
        attention_mask=torch.cat([query_mask, attention_mask], dim=1),
        encoder_hidden_states=features,
        encoder_attention_mask=image_mask,
    )
    hidden = out.last_hidden_state[:, : queries.shape[1]].to(model.itm_head.weight.dtype)
    return model.itm_head(hidden).mean(dim=1)
