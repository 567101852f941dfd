"""Building the trainable LLaVA: trainable set, frozen weights, bf16 step, learning, LlavaFromParts, merge/export."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers.training import train_steps
from PIL import Image, ImageDraw
from torch import nn
from torch.nn.utils import parametrize
from transformers import (
    AutoProcessor,
    CLIPVisionModel,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from lit_hyperet.hyperet import HyperETConfig
from lit_hyperet.models.llava import (
    LlavaFromParts,
    LoraSettings,
    PretrainedLlava,
    TinyLlava,
    build_llava,
    count_parameters,
    merge_and_save,
    trainable_groups,
)
from lit_hyperet.models.tiny_configs import llama_config, vision_config
from lit_hyperet.models.tiny_tokenizer import build_tiny_tokenizer
from lit_hyperet.user_errors import ConfigError

LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


def _image(colour: str, shape: str) -> Image.Image:
    img = Image.new("RGB", (40, 40), "white")
    draw = ImageDraw.Draw(img)
    (draw.ellipse if shape == "circle" else draw.rectangle)((8, 8, 32, 32), fill=colour)
    return img


def _batch(processor) -> dict[str, torch.Tensor]:
    """Two rendered vicuna_v1 conversations with images; labels mask padding and image tokens."""
    samples = [("red", "circle", "A"), ("blue", "square", "B")]
    texts = [
        processor.apply_chat_template(
            [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"What shape is it? {s}"}]},
                {"role": "assistant", "content": f"The answer is {letter}."},
            ],
            tokenize=False,
        )
        for _, s, letter in samples
    ]
    batch = processor(text=texts, images=[_image(c, s) for c, s, _ in samples], padding=True, return_tensors="pt")
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    labels[batch["input_ids"] == processor.image_token_id] = -100
    return {**batch, "labels": labels}


def _hyperet_entries(variant: str, n: int, cfg: HyperETConfig) -> int:
    if variant == "diagonal":
        return n
    if variant == "block_diagonal":
        return n * cfg.block_size_for(n)
    if variant == "banded":
        d = cfg.band_width
        return (2 * d + 1) * n - d * (d + 1)
    return n * n


def _expected_lora(plain: nn.Module, lora: LoraSettings) -> int:
    return sum(
        lora.r * (m.in_features + m.out_features)
        for name, m in plain.named_modules()
        if isinstance(m, nn.Linear) and "language_model" in name and name.rsplit(".", 1)[-1] in lora.target_modules
    )


@pytest.mark.parametrize(
    ("variant", "lora", "train_projector"),
    [("diagonal", LORA, True), ("block_diagonal", None, False), ("banded", LORA, False), (None, LORA, True)],
)
def test_trainable_set_is_exactly_hyperet_projector_lora(
    tiny_model_dir: Path, variant: str | None, lora: LoraSettings | None, train_projector: bool
) -> None:
    hyperet = HyperETConfig(variant=variant) if variant else None
    model = build_llava(PretrainedLlava(str(tiny_model_dir)), hyperet, train_projector=train_projector, lora=lora)
    plain = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir)
    vision = plain.config.vision_config

    groups = trainable_groups(model)
    counts = count_parameters(model)
    expected = {
        "hyperet": 2 * vision.num_hidden_layers * _hyperet_entries(variant, vision.hidden_size, hyperet)
        if hyperet
        else 0,
        "projector": sum(p.numel() for p in plain.model.multi_modal_projector.parameters()) if train_projector else 0,
        "lora": _expected_lora(plain, lora) if lora else 0,
    }
    assert {k: counts[k] for k in expected} == expected
    assert counts["trainable"] == sum(expected.values())
    assert counts["total"] == sum(p.numel() for p in plain.parameters()) + expected["hyperet"] + expected["lora"]

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for params in groups.values() for n, _ in params}
    assert all(
        re.search(r"vision_tower\.encoder\.layers\.\d+\.self_attn\.[qv]_proj\.", n) for n, _ in groups["hyperet"]
    )
    assert all("language_model" in n for n, _ in groups["lora"])
    lora_modules = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    assert not [n for n in lora_modules if "vision_tower" in n or "multi_modal_projector" in n]
    assert len(lora_modules) == (7 * plain.config.text_config.num_hidden_layers if lora else 0)


def test_frozen_weights_stay_bit_identical(tiny_model_dir: Path) -> None:
    source = PretrainedLlava(str(tiny_model_dir))
    model = build_llava(source, HyperETConfig(), lora=LORA)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train_steps(model, _batch(source.load_processor()), steps=3)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], before) for n, before in frozen.items())
    changed = {n for n, before in trainable.items() if not torch.equal(params[n], before)}
    for group, named in trainable_groups(model).items():
        assert changed & {n for n, _ in named}, f"no {group} parameter changed"


def test_bf16_autocast_step_is_finite(tiny_model_dir: Path) -> None:
    source = PretrainedLlava(str(tiny_model_dir))
    model = build_llava(source, HyperETConfig(), lora=LORA, gradient_checkpointing=True)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**_batch(source.load_processor())).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    first_layer = [n for n in grads if "layers.0.self_attn" in n and "parametrizations" in n]
    assert first_layer and all(grads[n] is not None for n in first_layer)


@pytest.mark.parametrize("vision", ["clip", "siglip", "dinov2"])
def test_loss_goes_down(tiny_model_dirs: dict[str, Path], vision: str) -> None:
    torch.manual_seed(0)
    source = PretrainedLlava(str(tiny_model_dirs[vision]))
    model = build_llava(source, HyperETConfig(), lora=LORA)
    losses = train_steps(model, _batch(source.load_processor()), steps=10)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.fixture(scope="module")
def parts_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny CLIPVisionModel dir (+ image processor) and a tiny Llama dir (+ tokenizer), via save_pretrained."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    vision = CLIPVisionModel(vision_config("clip", hidden_size=32, intermediate_size=64, num_attention_heads=2))
    vision.save_pretrained(root / "vision")
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "vision"
    )
    # Like a Vicuna tokenizer: no pad token and no named image token (the vocab happens to hold "<image>").
    tiny = build_tiny_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tiny.backend_tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(root / "llm")
    llm_config = llama_config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_key_value_heads=2)
    LlamaForCausalLM(llm_config).save_pretrained(root / "llm")
    return root / "vision", root / "llm"


@pytest.mark.parametrize(("projector", "image_token"), [("mlp2x_gelu", "<image>"), ("linear", "<img>")])
def test_llava_from_parts_round_trip(
    parts_dirs: tuple[Path, Path], tmp_path: Path, projector: str, image_token: str
) -> None:
    vision_dir, llm_dir = parts_dirs
    source = LlavaFromParts(str(vision_dir), str(llm_dir), projector=projector, image_token=image_token)
    model, processor = source.load_model().eval(), source.load_processor()

    vision = CLIPVisionModel.from_pretrained(vision_dir)
    llm = LlamaForCausalLM.from_pretrained(llm_dir)
    tower = model.model.vision_tower.state_dict()
    assert tower.keys() == vision.state_dict().keys()
    assert all(torch.equal(tower[k], v) for k, v in vision.state_dict().items())
    assert torch.equal(model.model.language_model.layers[1].mlp.up_proj.weight, llm.model.layers[1].mlp.up_proj.weight)
    added = image_token == "<img>"  # "<image>" is in the tiny vocab already; "<img>" is added and embeddings resized
    assert model.get_input_embeddings().num_embeddings == len(processor.tokenizer) == llm.config.vocab_size + added
    assert model.lm_head.out_features == model.config.text_config.vocab_size == llm.config.vocab_size + added
    token_id = processor.tokenizer.convert_tokens_to_ids(image_token)
    assert model.config.image_token_index == processor.image_token_id == token_id
    assert processor.tokenizer.pad_token == "<unk>"  # LLaVA's choice for tokenizers without a pad token
    assert f"USER: {image_token}\n" in processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}], tokenize=False
    )

    batch = processor(text=f"{image_token}\nWhat shape?", images=_image("red", "circle"), return_tensors="pt")
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 16
    if projector == "linear":  # two Linears with identity between and the second initialised to the identity
        proj = model.model.multi_modal_projector
        x = torch.randn(3, 32)
        torch.testing.assert_close(proj(x), proj.linear_1(x))

    with torch.no_grad():
        logits = model(**batch).logits
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    reloaded_batch = AutoProcessor.from_pretrained(tmp_path)(
        text=f"{image_token}\nWhat shape?", images=_image("red", "circle"), return_tensors="pt"
    )
    assert torch.equal(reloaded_batch["input_ids"], batch["input_ids"])
    with torch.no_grad():
        assert torch.equal(reloaded(**reloaded_batch).logits, logits)


@pytest.mark.parametrize(
    ("hyperet", "lora"),
    [(HyperETConfig(), LORA), (HyperETConfig(variant="block_diagonal", space="euclidean"), None)],
    ids=["diagonal-hyperbolic+lora", "block-euclidean"],
)
def test_merge_and_save_gives_plain_model_with_same_logits(
    tiny_model_dir: Path, tmp_path: Path, hyperet: HyperETConfig, lora: LoraSettings | None
) -> None:
    torch.manual_seed(0)
    source = PretrainedLlava(str(tiny_model_dir))
    processor = source.load_processor()
    model = build_llava(source, hyperet, lora=lora).eval()
    with torch.no_grad():  # move M and LoRA B away from their identity / zero start so the check is not trivial
        for name, p in model.named_parameters():
            if p.requires_grad and ("parametrizations" in name or "lora_B" in name):
                p.add_(0.1 * torch.randn_like(p))
    batch = _batch(processor)
    batch.pop("labels")
    with torch.no_grad():
        adapted = model(**batch).logits
        original = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir)(**batch).logits
    assert not torch.allclose(adapted, original)

    out = merge_and_save(model, processor, tmp_path / "export")
    assert (out / "model.safetensors").is_file()
    reloaded = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert not any(parametrize.is_parametrized(m) for m in reloaded.modules())
    assert not any("lora" in n or "parametrizations" in n for n in reloaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, adapted, rtol=1e-4, atol=1e-4)
    assert isinstance(AutoProcessor.from_pretrained(out).tokenizer.chat_template, str)


def test_sources_describe_and_errors(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config.json"):
        PretrainedLlava(str(tmp_path / "missing")).load_model()
    with pytest.raises(ValueError, match="'full'"):
        PretrainedLlava(str(tiny_model_dirs["siglip"]), vision_feature_select_strategy="default").load_model()
    with pytest.raises(ValueError, match="dtype"):
        PretrainedLlava(str(tiny_model_dirs["clip"]), dtype="fp8")

    tiny = TinyLlava(str(tmp_path / "tiny"), vision="dinov2", seed=3)
    model = tiny.load_model()
    assert model.config.vision_config.model_type == "dinov2"
    assert tiny.load_processor().vision_feature_select_strategy == "default"
    assert all(isinstance(v, str) for v in tiny.describe().values())
    with pytest.raises(ValueError, match="dinov2"):
        TinyLlava(str(tmp_path / "tiny"), vision="clip").load_model()

    layer = PretrainedLlava(str(tiny_model_dirs["clip"]), dtype="bfloat16", vision_feature_layer=-1)
    loaded = layer.load_model()
    assert loaded.config.vision_feature_layer == -1 and loaded.dtype == torch.bfloat16
    assert layer.describe()["vision_feature_layer"] == "-1"
