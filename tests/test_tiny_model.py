"""The tiny LLaVA from ``make-tiny-model``: determinism, offline loading, image tokens, tokenizer, chat template."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from lit_hyperet.__main__ import main as cli_main
from lit_hyperet.chat_templates import VICUNA_V1_SYSTEM

PIL_PROCESSORS = {
    "clip": "CLIPImageProcessorPil",
    "siglip": "SiglipImageProcessorPil",
    "dinov2": "BitImageProcessorPil",
}


def _image(colour: str = "red", size: tuple[int, int] = (50, 70)) -> Image.Image:
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).ellipse((5, 5, size[0] - 5, size[1] - 5), fill=colour)
    return img


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_cli_make_tiny_model_is_deterministic(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    same, other = tmp_path / "seed0", tmp_path / "seed1"
    assert cli_main(["make-tiny-model", "--out", str(same), "--seed", "0"]) == 0
    assert str(same) in capsys.readouterr().out
    assert cli_main(["make-tiny-model", "--out", str(other), "--vision", "clip", "--seed", "1"]) == 0

    ref, again, changed = _weights(tiny_model_dir), _weights(same), _weights(other)
    assert ref.keys() == again.keys() == changed.keys()
    assert all(torch.equal(ref[k], again[k]) for k in ref)
    assert any(not torch.equal(ref[k], changed[k]) for k in ref)
    for name in ("tokenizer.json", "config.json", "processor_config.json", "chat_template.jinja"):
        assert (tiny_model_dir / name).read_bytes() == (same / name).read_bytes(), name


def test_loads_offline_with_tiny_sizes(tiny_model_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir)
    assert isinstance(processor, LlavaProcessor)
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"
    cfg = model.config
    assert cfg.vision_config.num_hidden_layers == 2 and cfg.vision_config.hidden_size <= 64
    assert (cfg.text_config.num_hidden_layers, cfg.text_config.hidden_size, cfg.text_config.num_attention_heads) == (
        2,
        128,
        4,
    )
    assert cfg.model_type == "llava" and cfg.text_config.model_type == "llama"
    assert isinstance(model.model.multi_modal_projector, LlavaMultiModalProjector)
    assert cfg.projector_hidden_act == "gelu"
    assert cfg.image_token_index == processor.tokenizer.convert_tokens_to_ids("<image>") == processor.image_token_id
    assert cfg.text_config.vocab_size == len(processor.tokenizer)
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("vision", ["clip", "siglip", "dinov2"])
def test_image_tokens_match_features_and_loss_is_finite(tiny_model_dirs: dict[str, Path], vision: str) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dirs[vision])
    model = LlavaForConditionalGeneration.from_pretrained(tiny_model_dirs[vision])
    assert type(processor.image_processor).__name__ == PIL_PROCESSORS[vision]
    assert model.config.vision_feature_select_strategy == ("full" if vision == "siglip" else "default")

    batch = processor(text="<image>\nhi", images=_image(), return_tensors="pt")
    n_tokens = int((batch["input_ids"] == model.config.image_token_index).sum())
    features = model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
    assert n_tokens == features[0].shape[0] == 16  # 32 px / 8 px patches, CLS dropped or absent
    assert features[0].shape[-1] == model.config.text_config.hidden_size

    labels = batch["input_ids"].masked_fill(batch["input_ids"] == model.config.image_token_index, -100)
    loss = model(**batch, labels=labels).loss
    assert torch.isfinite(loss)


def test_tokenizer_properties(tiny_model_dir: Path) -> None:
    tok = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    assert 300 <= len(tok) <= 1024
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>", "<pad>", "<image>")}
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == tuple(ids.values())[:4]
    assert len(set(ids.values())) == 5 and "<image>" in tok.all_special_tokens

    encoded = tok("<image>\nWhat colour is the circle?</s>").input_ids
    assert encoded[0] == tok.bos_token_id and encoded.count(tok.bos_token_id) == 1
    assert encoded[1] == ids["<image>"] and encoded[-1] == tok.eos_token_id
    for letter in "ABCDE":
        assert len(tok.encode(f" {letter}", add_special_tokens=False)) == 1, letter
    prefix, full = tok("The answer is").input_ids, tok("The answer is A.").input_ids
    assert full[: len(prefix)] == prefix
    assert tok.decode(full[len(prefix) :]) == " A."
    for word in ("red", "triangle", "bottom", "purple", "N/A", "lecture", "How many"):
        assert tok.decode(tok.encode(word, add_special_tokens=False)) == word


def _conversation() -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]},
        {"role": "assistant", "content": "The answer is A."},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": [{"type": "text", "text": "It is red."}]},
    ]


def test_chat_template_renders_vicuna_v1(tiny_model_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    expected = (
        f"{VICUNA_V1_SYSTEM} USER: <image>\nWhat colour is the circle? ASSISTANT: The answer is A.</s>"
        "USER: Why? ASSISTANT: It is red.</s>"
    )
    assert processor.apply_chat_template(_conversation(), tokenize=False) == expected
    assert processor.tokenizer.apply_chat_template(_conversation(), tokenize=False) == expected

    prompt = processor.apply_chat_template(_conversation()[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == f"{VICUNA_V1_SYSTEM} USER: <image>\nWhat colour is the circle? ASSISTANT:"
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert processor.apply_chat_template(plain, tokenize=False) == "Be brief. USER: hi "


def test_chat_template_assistant_mask_covers_replies(tiny_model_dir: Path) -> None:
    tok = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    out = tok.apply_chat_template(_conversation(), tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    # Exactly the replies and their </s>; a lone space token before a reply may fall outside (vocab-dependent).
    assert tok.decode(masked).replace(" ", "") == "TheanswerisA.</s>Itisred.</s>"
    assert tok.eos_token_id == out["input_ids"][-1] and out["assistant_masks"][-1] == 1
