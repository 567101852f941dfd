"""Random-weight LLaVA models built from a config (no downloads) and synthetic batches for the model benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers import LlavaConfig, LlavaForConditionalGeneration

from lit_hyperet.hyperet import HyperETConfig
from lit_hyperet.models import tiny_configs
from lit_hyperet.models.llava.build import LoraSettings, build_llava
from lit_hyperet.models.loading import ModelSource

IMAGE_TOKEN_ID = 3  # a reserved id below the vocabulary's random text ids
BOS, PAD = 1, 0


@dataclass(frozen=True)
class Shape:
    """Sizes of a config-built LLaVA (CLIP tower + Llama LLM) and of one batch."""

    vision_hidden: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    image_size: int = 224
    patch_size: int = 16
    llm_hidden: int = 512
    llm_layers: int = 2
    llm_heads: int = 8
    llm_intermediate: int = 1376
    vocab: int = 32000
    batch: int = 2
    text_tokens: int = 64

    @property
    def image_tokens(self) -> int:
        """Patch tokens fed to the LLM (the ``default`` strategy drops CLS)."""
        return (self.image_size // self.patch_size) ** 2


CLIP_B16 = Shape()  # CLIP ViT-B/16 tower at 224 px, 2-layer Llama (hidden 512)
TINY = Shape(
    vision_hidden=32,
    vision_layers=2,
    vision_heads=2,
    image_size=32,
    patch_size=8,
    llm_hidden=32,
    llm_layers=1,
    llm_heads=2,
    llm_intermediate=64,
    vocab=128,
    batch=1,
    text_tokens=8,
)
# LLaVA-1.5-7B: CLIP ViT-L/14 at 336 px (576 patch tokens) + Llama-2-7B (Vicuna-7B), vocabulary 32064.
LLAVA_7B = Shape(
    vision_hidden=1024,
    vision_layers=24,
    vision_heads=16,
    image_size=336,
    patch_size=14,
    llm_hidden=4096,
    llm_layers=32,
    llm_heads=32,
    llm_intermediate=11008,
    vocab=32064,
    batch=4,
    text_tokens=448,
)


def llava_config(shape: Shape) -> LlavaConfig:
    """A LLaVA-1.5-style config: penultimate vision layer, CLS dropped, ``mlp2x_gelu`` projector."""
    vision = tiny_configs.vision_config(
        "clip",
        hidden_size=shape.vision_hidden,
        intermediate_size=4 * shape.vision_hidden,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
    )
    text = tiny_configs.llama_config(
        vocab_size=shape.vocab,
        hidden_size=shape.llm_hidden,
        intermediate_size=shape.llm_intermediate,
        num_hidden_layers=shape.llm_layers,
        num_attention_heads=shape.llm_heads,
        max_position_embeddings=4096,
        bos_token_id=BOS,
        eos_token_id=2,
        pad_token_id=PAD,
    )
    return tiny_configs.llava_config(
        vision, text, image_token_index=IMAGE_TOKEN_ID, image_seq_length=shape.image_tokens
    )


class ConfigLlava(ModelSource):
    """A random-weight LLaVA built from :func:`llava_config` (seeded), optionally directly on a device and dtype."""

    def __init__(self, shape: Shape, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.shape, self.seed, self.device, self.dtype = shape, seed, device, dtype

    def load_model(self) -> LlavaForConditionalGeneration:
        torch.manual_seed(self.seed)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                model = LlavaForConditionalGeneration(llava_config(self.shape))
        finally:
            torch.set_default_dtype(previous)
        model.to(self.dtype)
        model.generation_config.pad_token_id = PAD
        return model.eval()

    def load_processor(self) -> Any:
        raise NotImplementedError("config-built benchmark models have no processor; batches are synthetic")

    def describe(self) -> dict[str, str]:
        return {"source": type(self).__name__, **{k: str(v) for k, v in asdict(self.shape).items()}}


def build(
    shape: Shape,
    hyperet: HyperETConfig | None,
    lora: bool = True,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """The training model of the suite: frozen LLaVA, HyperET (if given), trainable projector, LoRA on the LLM."""
    settings = LoraSettings(r=8, alpha=16, dropout=0.0) if lora else None
    return build_llava(
        ConfigLlava(shape, device=device, dtype=dtype), hyperet=hyperet, train_projector=True, lora=settings
    )


def batch(shape: Shape, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, Any]:
    """Synthetic training batch: ``<s> <image>×P text…`` with labels on the text tokens only."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(10, shape.vocab, (shape.batch, shape.text_tokens), generator=gen)
    image = torch.full((shape.batch, shape.image_tokens), IMAGE_TOKEN_ID)
    bos = torch.full((shape.batch, 1), BOS)
    input_ids = torch.cat([bos, image, text], dim=1)
    labels = input_ids.clone()
    labels[:, : 1 + shape.image_tokens] = -100
    pixels = torch.randn(shape.batch, 3, shape.image_size, shape.image_size, generator=gen)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "pixel_values": pixels.to(device=device, dtype=dtype),
        "labels": labels.to(device),
    }


def perturb_trainable(model: nn.Module, scale: float = 0.01, seed: int = 0) -> None:
    """Move every trainable tensor off its initial value (identity ``M``, zero LoRA ``B``) so merges change weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen).to(device=p.device, dtype=p.dtype))


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad``."""
    return [p for p in model.parameters() if p.requires_grad]


def adamw_step(model: nn.Module, params: list[nn.Parameter]) -> Callable[[dict[str, Any]], torch.Tensor]:
    """A training step on ``params``: forward on a batch of model inputs, backward, AdamW step, ``zero_grad`` of the
    whole model (which also drops gradients of parameters outside ``params``)."""
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step(inputs: dict[str, Any]) -> torch.Tensor:
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        return loss.detach()

    return step
