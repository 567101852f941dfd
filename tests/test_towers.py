"""The DINOv3, SAM and BLIP-2 vision towers inside LLaVA: tiny models, image tokens, training, export, parts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers.training import train_steps
from PIL import Image, ImageDraw
from transformers import (
    AutoProcessor,
    Blip2Config,
    Blip2ForConditionalGeneration,
    DINOv3ViTModel,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    OPTConfig,
    PreTrainedTokenizerFast,
    SamConfig,
    SamModel,
)
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil
from transformers.utils import is_torchvision_available

from lit_hyperet.__main__ import main as cli_main
from lit_hyperet.encoders import prefix_tokens, vision_half
from lit_hyperet.hyperet import HyperETConfig, adapted_module_names
from lit_hyperet.models.llava import LlavaFromParts, LoraSettings, TinyLlava, build_llava, merge_and_save
from lit_hyperet.models.llava.build import trainable_groups
from lit_hyperet.models.tiny_configs import llama_config, vision_config
from lit_hyperet.models.tiny_tokenizer import build_tiny_tokenizer
from lit_hyperet.user_errors import ConfigError

TOWERS = ("dinov3", "sam", "blip2")
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)
#: What the default HyperET targets adapt in each tiny tower (2 layers): DINOv3's separate q and v projections, the
#: fused qkv of SAM and BLIP-2 (its q and v slices).
ADAPTED = {
    "dinov3": r"vision_tower\.model\.layer\.\d\.attention\.[qv]_proj$",
    "sam": r"vision_tower\.vision_encoder\.layers\.\d\.attn\.qkv$",
    "blip2": r"vision_tower\.encoder\.layers\.\d\.self_attn\.qkv$",
}
#: What each tiny tower looks like inside LLaVA: model_type, image processor, strategy, image tokens per image.
EXPECTED = {
    "dinov3": ("dinov3_vit", "ViTImageProcessorPil", "full", 1 + 4 + 16),  # CLS + 4 registers + 4 x 4 patches
    "sam": ("sam_vision_model", "SamImageProcessorPil", "full", 16),  # the 4 x 4 map, row-major
    "blip2": ("blip_2_vision_model", "BlipImageProcessorPil", "default", 16),  # CLS dropped
}
MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "labels")


def _image(colour: str, shape: str, size: tuple[int, int] = (40, 40)) -> Image.Image:
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    (draw.ellipse if shape == "circle" else draw.rectangle)((8, 8, size[0] - 8, size[1] - 8), fill=colour)
    return img


def _batch(processor) -> dict[str, torch.Tensor]:
    """Two rendered vicuna_v1 conversations with images (one not square); labels mask padding and image tokens."""
    samples = [("red", "circle", "A", (40, 40)), ("blue", "square", "B", (60, 36))]
    texts = [
        processor.apply_chat_template(
            [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"What shape is it? {s}"}]},
                {"role": "assistant", "content": f"The answer is {letter}."},
            ],
            tokenize=False,
        )
        for _, s, letter, _ in samples
    ]
    images = [_image(c, s, size) for c, s, _, size in samples]
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    labels[batch["input_ids"] == processor.image_token_id] = -100
    return {**batch, "labels": labels}


def _image_embeddings(model: LlavaForConditionalGeneration, batch: dict) -> torch.Tensor:
    """The LLM input embeddings at the image-token positions, ``[images, tokens, hidden]``."""
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")})
    finally:
        hook.remove()
    mask = batch["input_ids"] == model.config.image_token_index
    return seen["embeds"][mask].reshape(batch["input_ids"].shape[0], -1, seen["embeds"].shape[-1])


@pytest.fixture(scope="module")
def tower_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny LLaVA dirs with each new tower, written by the ``make-tiny-model`` command."""
    dirs = {}
    for tower in TOWERS:
        dirs[tower] = tmp_path_factory.mktemp(f"tiny_{tower}")
        assert cli_main(["make-tiny-model", "--out", str(dirs[tower]), "--vision", tower, "--seed", "0"]) == 0
    return dirs


def test_prefix_tokens_and_vision_halves() -> None:
    assert [prefix_tokens(vision_config(t)) for t in TOWERS] == [5, 0, 1]
    sam = SamConfig(vision_config=vision_config("sam").to_dict())
    assert vision_half(sam).model_type == "sam_vision_model"
    blip2 = Blip2Config(vision_config=vision_config("blip2").to_dict())
    assert vision_half(blip2).model_type == "blip_2_vision_model"
    assert vision_half(vision_config("dinov3")).model_type == "dinov3_vit"
    assert vision_config("dinov3").pos_embed_rescale is None  # a frozen tower: no train-mode RoPE augmentation


@pytest.mark.parametrize("tower", TOWERS)
def test_tiny_model_loads_and_feeds_its_tokens_to_the_llm(tower_dirs: dict[str, Path], tower: str) -> None:
    model_type, processor_class, strategy, n_tokens = EXPECTED[tower]
    processor = AutoProcessor.from_pretrained(tower_dirs[tower])
    model = LlavaForConditionalGeneration.from_pretrained(tower_dirs[tower]).eval()
    assert model.config.vision_config.model_type == model_type
    assert type(processor.image_processor).__name__ == processor_class
    assert model.config.vision_feature_select_strategy == processor.vision_feature_select_strategy == strategy
    assert model.config.image_seq_length == n_tokens

    batch = _batch(processor)
    assert batch["pixel_values"].shape[-2:] == (32, 32)  # the tower's image_size, for the non-square image too
    assert ((batch["input_ids"] == processor.image_token_id).sum(dim=1) == n_tokens).all()
    loss = model(**batch).loss  # every processor output (SAM adds original / reshaped sizes) is accepted
    assert torch.isfinite(loss)

    # The image tokens carry the projected selected layer in order: SAM's (H, W) map row-major, DINOv3's CLS and
    # registers before its patches, BLIP-2's patches after the dropped CLS.
    with torch.no_grad():
        hidden = model.model.vision_tower(batch["pixel_values"], output_hidden_states=True).hidden_states[-2]
        if tower == "sam":
            assert hidden.shape == (2, 4, 4, 64)
            hidden = hidden.flatten(1, 2)
        if strategy == "default":
            hidden = hidden[:, 1:]
        expected = model.model.multi_modal_projector(hidden)
    assert expected.shape[1] == n_tokens
    torch.testing.assert_close(_image_embeddings(model, batch), expected)


@pytest.mark.parametrize("tower", TOWERS)
def test_trains_with_hyperet_and_lora_then_exports(tower_dirs: dict[str, Path], tower: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = TinyLlava(str(tower_dirs[tower]), vision=tower)
    processor = source.load_processor()
    model = build_llava(source, HyperETConfig(), lora=LORA)  # the default targets
    groups = trainable_groups(model)
    assert all(groups.values()), {g: len(p) for g, p in groups.items()}
    adapted_names = [name.removeprefix("base_model.model.model.") for name in adapted_module_names(model)]
    fused = tower != "dinov3"
    assert len(adapted_names) == (2 if fused else 4) and all(re.search(ADAPTED[tower], n) for n in adapted_names)
    # diagonal M per q and v (slices of a fused qkv, or separate projections) in each of the 2 layers: 2 × 2 × 64
    assert sum(p.numel() for _, p in groups["hyperet"]) == 2 * 2 * 64

    batch = {k: v for k, v in _batch(processor).items() if k in MODEL_KEYS}
    losses = train_steps(model, batch, steps=10)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses

    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        adapted = model(**inputs).logits
        original = LlavaForConditionalGeneration.from_pretrained(tower_dirs[tower])(**inputs).logits
    assert not torch.allclose(adapted, original)
    out = merge_and_save(model, processor, tmp_path / "export")
    reloaded = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert not any("lora" in n or "parametrizations" in n for n in reloaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, adapted, rtol=1e-4, atol=1e-4)
    assert type(AutoProcessor.from_pretrained(out).image_processor).__name__ == EXPECTED[tower][1]


def test_tiny_llava_refuses_another_tower(tower_dirs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="'sam_vision_model' tower, not 'blip2'"):
        TinyLlava(str(tower_dirs["sam"]), vision="blip2").load_model()


# ------------------------------------------------------------------------------------------------ LlavaFromParts
def _llm_dir(root: Path) -> Path:
    """A tiny Llama dir whose tokenizer has no pad token and no named image token (like Vicuna's)."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_tiny_tokenizer().backend_tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(root / "llm")
    config = llama_config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(root / "llm")
    return root / "llm"


def _hub_like_processor(path: Path, processor, image_processor_type: str) -> None:
    """Save ``processor`` under the class name the hub's checkpoints use (torchvision-backed when installed)."""
    processor.save_pretrained(path)
    config_file = path / "preprocessor_config.json"
    settings = json.loads(config_file.read_text())
    settings["image_processor_type"] = image_processor_type
    config_file.write_text(json.dumps(settings))


def _dinov3_dir(root: Path) -> tuple[Path, torch.nn.Module]:
    """A DINOv3ViTModel dir with the image-processor config DINOv3's checkpoints ship (torchvision-only class)."""
    config = vision_config("dinov3")
    config.pos_embed_rescale = 2.0  # as the released configs: LlavaFromParts must switch it off
    tower = DINOv3ViTModel(config)
    tower.save_pretrained(root / "dinov3")
    settings = {
        "image_processor_type": "DINOv3ViTImageProcessorFast",
        "size": {"height": 32, "width": 32},
        "resample": 2,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "do_center_crop": None,
        "crop_size": None,
    }
    (root / "dinov3" / "preprocessor_config.json").write_text(json.dumps(settings))
    return root / "dinov3", tower


def _sam_dir(root: Path) -> tuple[Path, torch.nn.Module]:
    """A full SamModel dir (image encoder, prompt encoder, mask decoder) with SAM's image-processor config."""
    config = SamConfig(
        vision_config=vision_config("sam").to_dict(),
        prompt_encoder_config={"hidden_size": 32, "image_size": 32, "patch_size": 8},
        mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
    )
    sam = SamModel(config)
    sam.save_pretrained(root / "sam")
    processor = SamImageProcessorPil(size={"longest_edge": 32}, pad_size={"height": 32, "width": 32})
    _hub_like_processor(root / "sam", processor, "SamImageProcessor")
    return root / "sam", sam.vision_encoder


def _blip2_dir(root: Path) -> tuple[Path, torch.nn.Module]:
    """A full Blip2ForConditionalGeneration dir (ViT, Q-Former, OPT) with BLIP's image-processor config."""
    text = OPTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64, vocab_size=100, word_embed_proj_dim=32
    )
    config = Blip2Config(
        vision_config=vision_config("blip2").to_dict(),
        qformer_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "encoder_hidden_size": 64,
        },
        text_config=text.to_dict(),
        num_query_tokens=4,
    )
    blip2 = Blip2ForConditionalGeneration(config)
    blip2.save_pretrained(root / "blip2")
    _hub_like_processor(root / "blip2", BlipImageProcessorPil(size={"height": 32, "width": 32}), "BlipImageProcessor")
    return root / "blip2", blip2.vision_model


@pytest.mark.parametrize(
    ("tower", "make_dir"), [("dinov3", _dinov3_dir), ("sam", _sam_dir), ("blip2", _blip2_dir)], ids=TOWERS
)
def test_llava_from_parts(tmp_path: Path, tower: str, make_dir) -> None:
    torch.manual_seed(0)
    vision_dir, original = make_dir(tmp_path)
    strategy, n_tokens = EXPECTED[tower][2:]
    source = LlavaFromParts(str(vision_dir), str(_llm_dir(tmp_path)), vision_feature_select_strategy=strategy)
    model, processor = source.load_model().eval(), source.load_processor()

    tower_weights = model.model.vision_tower.state_dict()
    expected = {k.removeprefix("vision_encoder."): v for k, v in original.state_dict().items()}
    assert {k.removeprefix("vision_encoder.") for k in tower_weights} == expected.keys()
    assert all(torch.equal(v, expected[k.removeprefix("vision_encoder.")]) for k, v in tower_weights.items())
    assert model.config.vision_config.model_type == EXPECTED[tower][0]
    assert model.config.image_seq_length == n_tokens
    if tower == "dinov3":
        assert model.config.vision_config.pos_embed_rescale is None
        if not is_torchvision_available():
            assert type(processor.image_processor).__name__ == "ViTImageProcessorPil"

    batch = _batch(processor)
    assert ((batch["input_ids"] == processor.image_token_id).sum(dim=1) == n_tokens).all()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        logits = model(**inputs).logits
    model.save_pretrained(tmp_path / "llava")
    processor.save_pretrained(tmp_path / "llava")
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    again = AutoProcessor.from_pretrained(tmp_path / "llava")(
        text="<image>\nWhat shape?", images=_image("red", "circle"), return_tensors="pt"
    )
    assert int((again["input_ids"] == processor.image_token_id).sum()) == n_tokens
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, logits)


@pytest.mark.parametrize(("tower", "make_dir"), [("dinov3", _dinov3_dir), ("sam", _sam_dir)], ids=["dinov3", "sam"])
def test_llava_from_parts_refuses_default_without_a_single_cls(tmp_path: Path, tower: str, make_dir) -> None:
    vision_dir, _ = make_dir(tmp_path)
    source = LlavaFromParts(str(vision_dir), str(tmp_path / "llm"), vision_feature_select_strategy="default")
    with pytest.raises(ConfigError, match="use 'full'"):
        source.vision_config()
