"""``MemVPModel``: MemVP (Jie et al., ICML 2024) on an unmodified ``LlamaForCausalLM`` and ``CLIPVisionModel``.

Visual features (the tower's hidden state ``feature_layer``, ``post_layernorm`` on the patch tokens, CLS dropped) go
through the projector, are scaled by ``visual_scale`` and zero-padded to ``slots`` rows: ``V``. Every LLaMA FFN gets
the keys ``V + E1`` and values ``V + E2`` (:mod:`lit_hyperet.models.memvp.layers`); no visual token enters the input
sequence. A text-only sample has ``V = 0``, so its keys and values are exactly ``E1`` and ``E2``, as in MemVP.

Images: ``pixel_values`` holds the images of the batch's image samples in sample order and ``image_mask`` (``[B]``
bool) says which samples they belong to (the batch contract of :mod:`lit_hyperet.data.collate`). A batch without any
image still runs the tower, on one zero image whose features are multiplied by 0, so every process of a distributed
run calls the same collectives.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionModel, LlamaForCausalLM

from lit_hyperet.models.memvp.layers import (
    MemoryState,
    Projector,
    VisionAdapter,
    attach_ffn_memory,
    attach_vision_adapter,
)
from lit_hyperet.user_errors import ConfigError


class MemVPModel(nn.Module):
    """A LLaMA and a CLIP vision tower joined by MemVP's FFN memory and CLIP adapters (see the module docstring).

    Args:
        language_model: the ``LlamaForCausalLM`` (any decoder whose layers have ``.mlp`` on the post-attention norm).
        vision_tower: a ``CLIPVisionModel`` (``embeddings``, ``encoder.layers[i].mlp``, ``post_layernorm``).
        slots: memory rows (MemVP's ``emb``: 320 for LLaMA-7B, 400 for 13B); at least the tower's patch count.
        projector_hidden: the projector's hidden width (128).
        adapter_dim: the CLIP adapters' bottleneck (12).
        adapter_scale: the CLIP adapters' output scale (0.1).
        memory_scale: the FFN memory's output scale ``s`` (0.1).
        visual_scale: the scale of the projected features (0.01).
        dropout: dropout of the CLIP adapters and the FFN memory (0.1).
        feature_layer: hidden-state index of the tower used (-2: the penultimate block, as MemVP's ``resblocks[:-1]``).
        modality_embedding: keep MemVP's unused, trainable ``adapter_modality_embedding`` (Embedding(2, d)), for
            checkpoints that hold it.
    """

    def __init__(
        self,
        language_model: LlamaForCausalLM,
        vision_tower: CLIPVisionModel,
        slots: int = 320,
        projector_hidden: int = 128,
        adapter_dim: int = 12,
        adapter_scale: float = 0.1,
        memory_scale: float = 0.1,
        visual_scale: float = 0.01,
        dropout: float = 0.1,
        feature_layer: int = -2,
        modality_embedding: bool = False,
    ) -> None:
        super().__init__()
        vision, text = vision_tower.config, language_model.config
        self.num_patches = (vision.image_size // vision.patch_size) ** 2
        if slots < self.num_patches:
            raise ConfigError(f"MemVP slots {slots} < the vision tower's {self.num_patches} patch tokens")
        self.language_model, self.vision_tower = language_model, vision_tower
        self.visual_scale, self.feature_layer = visual_scale, feature_layer
        d = text.hidden_size
        device = language_model.get_input_embeddings().weight.device
        with torch.device(device):
            self.adapter_proj = Projector(vision.hidden_size, projector_hidden, d)
            self.adapter_emb1 = nn.Parameter(torch.randn(1, slots, d) * 0.02)
            self.adapter_emb2 = nn.Parameter(torch.zeros(1, slots, d))
            if modality_embedding:
                self.adapter_modality_embedding = nn.Embedding(2, d)
            adapters = [VisionAdapter(vision.hidden_size, adapter_dim, dropout) for _ in vision_tower.encoder.layers]
        for layer, adapter in zip(vision_tower.encoder.layers, adapters, strict=True):
            attach_vision_adapter(layer.mlp, adapter, adapter_scale)
        self.memory = MemoryState()
        for layer in language_model.model.layers:
            attach_ffn_memory(layer.mlp, self.memory, memory_scale, dropout)

    @property
    def config(self) -> Any:
        """The LLM's config (what generation and Lightning read)."""
        return self.language_model.config

    @property
    def generation_config(self) -> Any:
        return self.language_model.generation_config

    def visual_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, patches, d]``: the tower's ``feature_layer`` state, ``post_layernorm``, CLS dropped, projected and
        scaled by ``visual_scale``."""
        tower = self.vision_tower
        dtype = tower.embeddings.patch_embedding.weight.dtype
        hidden = tower(pixel_values.to(dtype), output_hidden_states=True).hidden_states[self.feature_layer]
        return self.adapter_proj(tower.post_layernorm(hidden[:, 1:])) * self.visual_scale

    def set_memory(
        self, batch: int, pixel_values: torch.Tensor | None = None, image_mask: torch.Tensor | None = None
    ) -> None:
        """Compute the batch's keys ``V + E1`` and values ``V + E2`` for the FFN hooks."""
        e1, e2 = self.adapter_emb1, self.adapter_emb2
        if image_mask is None:
            image_mask = torch.full((batch,), pixel_values is not None, dtype=torch.bool, device=e1.device)
        image_mask = image_mask.to(device=e1.device, dtype=torch.bool)
        count = int(image_mask.sum())
        if count != (0 if pixel_values is None else pixel_values.shape[0]) or image_mask.shape[0] != batch:
            raise ValueError(
                f"image_mask marks {count} of {image_mask.shape[0]} samples as images, but pixel_values holds "
                f"{0 if pixel_values is None else pixel_values.shape[0]} images for a batch of {batch}"
            )
        if pixel_values is None:  # run the tower anyway (a zero image, times 0): collectives line up across ranks
            tower = self.vision_tower.config
            pixel_values = torch.zeros(1, 3, tower.image_size, tower.image_size, device=e1.device)
        features = self.visual_features(pixel_values.to(e1.device))
        padded = nn.functional.pad(features, (0, 0, 0, e1.shape[1] - features.shape[1]))
        visual = torch.zeros(batch, *e1.shape[1:], dtype=features.dtype, device=e1.device)
        if count:
            visual = visual.index_put((image_mask.nonzero()[:, 0],), padded)
        else:
            visual = visual + padded[:1] * 0  # keeps the tower in the graph (gradients of 0 reach every rank alike)
        self.memory.set(visual + e1, visual + e2)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The LLM's forward (``labels``, ``use_cache``, … pass through) with the batch's memory set."""
        self.set_memory(input_ids.shape[0], pixel_values, image_mask)
        return self.language_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The LLM's ``generate`` (KV cache, greedy or beam search) with the memory set for every decode step."""
        self.set_memory(input_ids.shape[0], pixel_values, image_mask)
        return self.language_model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
