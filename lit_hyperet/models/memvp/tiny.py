"""``make-tiny-model --family memvp``: a random-initialised tiny LLaMA (with tokenizer) and CLIP vision tower, saved
so that ``from_pretrained`` loads each (the LLaMA at ``out``, the tower at ``out/vision``); MemVP's own parameters
are created when the model is built."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPVisionModel, LlamaForCausalLM

from lit_hyperet.models import tiny_configs
from lit_hyperet.models.llava.tiny import TEXT_INIT_STD
from lit_hyperet.models.tiny_tokenizer import build_tiny_tokenizer

VISION_SUBDIR = "vision"


def make_tiny_memvp(out: str | Path, seed: int = 0) -> Path:
    """Write the tiny pair to ``out``: the tiny LLaVA's LLM and CLIP tower sizes (Llama 2 layers × 128, CLIP 2 layers
    × 64 at 32 px in 8 px patches: 16 patch tokens), the LLM drawn with std ``TEXT_INIT_STD`` like the tiny LLaVA's."""
    out = Path(out)
    tokenizer = build_tiny_tokenizer()
    text_config = tiny_configs.llama_config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=TEXT_INIT_STD,
    )
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG state
        torch.manual_seed(seed)
        llm = LlamaForCausalLM(text_config)
        vision = CLIPVisionModel(tiny_configs.vision_config("clip"))
    llm.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    llm.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    vision.save_pretrained(out / VISION_SUBDIR, safe_serialization=True)
    return out
