"""``make-tiny-model --family blip2-itm``: a random-initialised tiny BLIP-2 image–text retrieval model and processor.

``Blip2ForImageTextRetrieval`` (vision tower, query tokens, Q-Former, projections, ITM head) is saved with a
``Blip2Processor`` (BLIP's PIL-backed image processor, a BERT tokenizer over a fixed caption vocabulary) so that
``Blip2ForImageTextRetrieval.from_pretrained(out)`` and ``Blip2Processor.from_pretrained(out)`` load it. The same seed
gives the same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Blip2ForImageTextRetrieval, Blip2Processor
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from lit_hyperet.models import tiny_configs
from lit_hyperet.models.tiny_tokenizer import build_tiny_caption_tokenizer

FAMILY = "blip2-itm"


def make_tiny_blip2_itm(out: str | Path, seed: int = 0) -> Path:
    """Write a random-initialised tiny ``Blip2ForImageTextRetrieval`` and its ``Blip2Processor`` to ``out``.

    Vision: BLIP-2's tower, 2 layers, width 64, 32 px images in 8 px patches, weights drawn with std 0.02 (the
    config's default 1e-10 would make a frozen random tower emit near-constant features). Q-Former: 2 layers, width 64,
    cross-attention in every layer, text input on, 64 positions, weights and query tokens drawn with std 0.2
    (:data:`~lit_hyperet.models.tiny_configs.QFORMER_INIT_STD`); 8 query tokens; 32-wide contrastive embeddings
    (:func:`lit_hyperet.models.tiny_configs.blip2_config`). Tokenizer:
    :func:`~lit_hyperet.models.tiny_tokenizer.build_tiny_caption_tokenizer` (plus the ``<image>`` token
    ``Blip2Processor`` adds, which the retrieval path never uses).
    """
    out = Path(out)
    tokenizer = build_tiny_caption_tokenizer(model_max_length=tiny_configs.QFORMER_MAX_POSITIONS)
    config = tiny_configs.blip2_config(qformer=tiny_configs.qformer_config(pad_token_id=tokenizer.pad_token_id))
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG state
        torch.manual_seed(seed)
        model = Blip2ForImageTextRetrieval(config)
        # transformers zero-initialises the query tokens (checkpoints overwrite them): all queries would be equal.
        # BLIP-2's own code draws them like the Q-Former's weights.
        torch.nn.init.normal_(model.query_tokens, std=config.qformer_config.initializer_range)
    size = tiny_configs.IMAGE_SIZE
    image_processor = BlipImageProcessorPil(size={"height": size, "width": size})
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer)
    if len(processor.tokenizer) > config.qformer_config.vocab_size:
        raise RuntimeError(f"tiny caption tokenizer ({len(processor.tokenizer)}) exceeds the Q-Former vocabulary")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out
