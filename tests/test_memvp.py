"""The MemVP family: FFN memory on an unmodified LLaMA, CLIP adapters, HyperET on its tower, its data path, trainable
counts at the real 7B / 13B shapes, cached generation, and the demo config through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from lit_hyperet.hyperet import HyperETConfig, adapted_module_names
from lit_hyperet.models.memvp import MemVPModel, TinyMemVP, build_memvp, count_parameters
from lit_hyperet.models.memvp.sources import memvp_image_processor
from lit_hyperet.models.tiny_configs import TEXT_WIDTH, VISION_LAYERS, VISION_WIDTH

SLOTS = 24


@pytest.fixture
def memvp_dir(tiny_memvp_dir: Path) -> Path:
    return tiny_memvp_dir


def tiny(memvp_dir: Path, hyperet: HyperETConfig | None = None, **settings: object) -> tuple[TinyMemVP, MemVPModel]:
    source = TinyMemVP(str(memvp_dir), memvp={"slots": SLOTS, **settings})
    return source, source.build(hyperet=hyperet)


def prompts(source: TinyMemVP) -> dict[str, torch.Tensor]:
    tokenizer = source.load_processor().tokenizer
    texts = ["Question: What colour is the circle?\nResponse:", "Question: Which word rhymes?\nResponse:The"]
    return dict(tokenizer(texts, return_tensors="pt", padding=True, padding_side="left"))


# ------------------------------------------------------------------------------------------------ the model


def test_zero_memory_gives_the_plain_llama_logits(memvp_dir: Path) -> None:
    """V = 0 (projector zeroed) and E2 = 0: the memory adds nothing, so the logits are the LLaMA's own."""
    source, model = tiny(memvp_dir)
    model.eval()
    inputs = prompts(source)
    images, mask = torch.rand(1, 3, 32, 32), torch.tensor([True, False])
    plain = LlamaForCausalLM.from_pretrained(memvp_dir).eval()
    with torch.no_grad():
        expected = plain(**inputs).logits
        for p in model.adapter_proj.parameters():
            p.zero_()
        assert torch.equal(model(**inputs, pixel_values=images, image_mask=mask).logits, expected)
        model.adapter_emb2.normal_()  # a non-zero value memory changes them
        assert not torch.allclose(model(**inputs, pixel_values=images, image_mask=mask).logits, expected)


def test_text_only_samples_get_e1_and_e2_and_image_samples_their_features(memvp_dir: Path) -> None:
    _, model = tiny(memvp_dir)
    model.set_memory(3, torch.rand(2, 3, 32, 32), torch.tensor([True, False, True]))
    keys, values = model.memory.keys, model.memory.values
    assert torch.equal(keys[1], model.adapter_emb1[0]) and torch.equal(values[1], model.adapter_emb2[0])
    patches = model.num_patches
    assert not torch.allclose(keys[0, :patches], model.adapter_emb1[0, :patches])
    assert not torch.allclose(keys[0, :patches], keys[2, :patches])  # each image sample its own features
    assert torch.equal(keys[0, patches:], model.adapter_emb1[0, patches:])  # padded slots: pure learned pairs


def test_a_batch_without_images_still_runs_the_tower(memvp_dir: Path) -> None:
    """Every rank calls the tower's collectives: a zero image whose features count 0 times."""
    source, model = tiny(memvp_dir)
    calls = []
    model.vision_tower.register_forward_hook(lambda *_: calls.append(1))
    inputs = prompts(source)
    out = model(**inputs, labels=inputs["input_ids"], use_cache=False)
    out.loss.backward()
    assert calls == [1]
    assert model.adapter_proj.fc2.weight.grad is not None and not model.adapter_proj.fc2.weight.grad.any()
    assert model.adapter_emb2.grad.abs().sum() > 0  # (E1 gets none while E2 is still 0)


def test_trainable_parameters_are_exactly_memvp_parts_and_hyperet(memvp_dir: Path) -> None:
    source, model = tiny(memvp_dir, hyperet=HyperETConfig())
    groups = source.trainable_groups(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for params in groups.values() for n, _ in params}
    counts = count_parameters(model)
    projector = VISION_WIDTH * 128 + 128 + 128 * TEXT_WIDTH + TEXT_WIDTH
    assert counts["projector"] == projector
    assert counts["memory"] == 2 * SLOTS * TEXT_WIDTH
    assert counts["vision_adapters"] == VISION_LAYERS * 2 * VISION_WIDTH * 12
    assert counts["hyperet"] == VISION_LAYERS * 2 * VISION_WIDTH  # diagonal on q and v of every block
    assert counts["trainable"] == projector + 2 * SLOTS * TEXT_WIDTH + VISION_LAYERS * (24 + 2) * VISION_WIDTH
    assert not any(p.requires_grad for p in model.language_model.parameters())


@pytest.mark.parametrize(
    ("variant", "space"),
    [
        ("diagonal", "hyperbolic"),
        ("block_diagonal", "hyperbolic_no_mobius"),
        ("banded", "euclidean"),
        ("full", "hyperbolic"),
    ],
)
def test_hyperet_on_every_clip_block_and_the_last_gets_no_gradient(memvp_dir: Path, variant: str, space: str) -> None:
    """The released placement: q and v of all blocks adapted; features come from the penultimate block."""
    source, model = tiny(memvp_dir, hyperet=HyperETConfig(variant=variant, space=space))
    adapted = adapted_module_names(model)
    assert sorted(adapted) == [
        f"vision_tower.encoder.layers.{i}.self_attn.{p}" for i in range(VISION_LAYERS) for p in ("q_proj", "v_proj")
    ]
    inputs = prompts(source)
    model(**inputs, pixel_values=torch.rand(2, 3, 32, 32), labels=inputs["input_ids"], use_cache=False).loss.backward()
    grads = {n: p.grad for n, p in source.trainable_groups(model)["hyperet"]}
    last = f"layers.{VISION_LAYERS - 1}."
    assert all(g is None for n, g in grads.items() if last in n)
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if last not in n)


def test_generation_with_the_kv_cache_equals_recomputing_without_it(memvp_dir: Path) -> None:
    source, model = tiny(memvp_dir)
    model.eval()
    with torch.no_grad():
        model.adapter_emb2.normal_(std=0.5)  # a memory that matters
    inputs = prompts(source)
    images, mask = torch.rand(1, 3, 32, 32), torch.tensor([True, False])
    kwargs = dict(**inputs, pixel_values=images, image_mask=mask, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    for search in ({"num_beams": 1}, {"num_beams": 3}):
        cached = model.generate(**kwargs, **search)
        assert torch.equal(cached, model.generate(**kwargs, **search, use_cache=False)), search
    # the memory is read at every decode step: without E2 the continuation changes
    with torch.no_grad():
        model.adapter_emb2.zero_()
    assert not torch.equal(model.generate(**kwargs), cached)


@pytest.mark.parametrize(
    ("hidden", "layers", "ffn", "slots", "expected"),
    [(4096, 32, 11008, 320, 3_870_848), (5120, 40, 13824, 400, 5_477_504)],
)
def test_trainable_counts_at_the_real_7b_and_13b_shapes(
    hidden: int, layers: int, ffn: int, slots: int, expected: int
) -> None:
    """CLIP ViT-L/14 at 224 px + LLaMA-7B / 13B on the meta device: MemVP's reported counts."""
    clip = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
    )
    llama = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 128,
    )
    with torch.device("meta"):
        llm, tower = LlamaForCausalLM(llama), CLIPVisionModel(clip)
    for modality, extra in ((False, 0), (True, 2 * hidden)):
        model = build_memvp(MemVPModel(llm, tower, slots=slots, modality_embedding=modality))
        assert count_parameters(model)["trainable"] == expected + extra
        for layer in tower.encoder.layers:  # detach this model's hooks' adapters for the next build
            layer.mlp._forward_hooks.clear()
        for layer in llm.model.layers:
            layer.mlp._forward_hooks.clear()
    # euclidean: the count does not depend on the space, and meta tensors allow no data-dependent branching
    model = build_memvp(MemVPModel(llm, tower, slots=slots), hyperet=HyperETConfig(space="euclidean"))
    assert count_parameters(model)["hyperet"] == 49_152
    assert count_parameters(model)["trainable"] == expected + 49_152


# ------------------------------------------------------------------------------------------------ the data path


def test_memvp_image_processor_squashes_with_imagenet_statistics() -> None:
    processor = memvp_image_processor(224)
    pixels = processor(images=[Image.new("RGB", (300, 120), (124, 116, 104))], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224)  # no crop: the whole image squashed
    expected = (torch.tensor([124, 116, 104]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    torch.testing.assert_close(pixels[0, :, 100, 100], expected, atol=1e-3, rtol=0)


def test_memvp_data_path_prompt_bos_first_captions_and_image_mask(memvp_dir: Path, demo_data_dir: Path) -> None:
    from lit_hyperet.data import ScienceQADataModule

    source = TinyMemVP(str(memvp_dir), memvp={"slots": SLOTS})
    processor = source.load_processor()
    tokenizer = processor.tokenizer
    dm = ScienceQADataModule(
        data_dir=str(demo_data_dir), prompt_style="memvp", use_caption=False, eval_use_caption=True,
        processor=processor, batch_size=8, eval_batch_size=8, max_samples=8,
    )  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert (batch["input_ids"][:, 0] == tokenizer.bos_token_id).all()
    for row, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
        text = tokenizer.decode(row[mask.bool()], skip_special_tokens=False)
        assert text.startswith("<s>Question: ") and "\nContext: " in text and "\nOptions: (A) " in text
        assert "<image>" not in text and "Context: a " not in text  # no image token, no caption in training
        learned = tokenizer.decode(labels[labels >= 0])
        assert (
            text.endswith("\nResponse:" + learned)
            and learned.startswith("The answer is ")
            and learned.endswith(".</s>")
        )
    has_image = {c.id: c.image is not None for c in dm.datasets["train"].conversations}
    image_samples = [has_image[i] for i in batch["ids"]]
    assert batch["image_mask"].tolist() == image_samples and batch["pixel_values"].shape[0] == sum(image_samples)
    val = next(iter(dm.val_dataloader()))
    texts = tokenizer.batch_decode(val["input_ids"], skip_special_tokens=True)
    assert all(t.endswith("\nResponse:The answer is") for t in texts)
    captioned = [t for t, m in zip(texts, val["image_mask"], strict=True) if m]
    assert captioned and all(
        " on a " in t or "a map" in t or " sky " in t for t in captioned
    )  # evaluation: captions on


def test_two_processes_with_a_text_only_rank_do_not_hang(memvp_dir: Path, tmp_path: Path) -> None:
    """FSDP2 over 2 gloo CPU processes: rank 1 never sees an image, and both ranks train and generate."""
    import os
    import subprocess
    import sys

    helper = Path(__file__).parent / "helpers" / "memvp_ranks.py"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, str(helper), str(memvp_dir), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for rank in (0, 1):
        record = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert all(torch.isfinite(torch.tensor(record["losses"]))) and record["generated"].shape[1] > 0


def test_make_tiny_model_writes_a_memvp_pair_the_source_loads(tmp_path: Path) -> None:
    from lit_hyperet.models.tiny_command import main

    assert main(["--out", str(tmp_path / "m"), "--family", "memvp", "--seed", "1"]) == 0
    source, model = tiny(tmp_path / "m")
    assert isinstance(model.vision_tower, CLIPVisionModel) and isinstance(model.language_model, LlamaForCausalLM)
    assert source.load_processor().tokenizer.bos_token == "<s>"


def test_memvp_mistakes_are_config_errors(memvp_dir: Path) -> None:
    from lit_hyperet.models.llava import LoraSettings
    from lit_hyperet.user_errors import ConfigError

    with pytest.raises(ConfigError, match="slot"):
        TinyMemVP(str(memvp_dir), memvp={"slot": 24})
    with pytest.raises(ConfigError, match="no LoRA"):
        TinyMemVP(str(memvp_dir), memvp={"slots": SLOTS}).build(lora=LoraSettings())
    with pytest.raises(ConfigError, match="patch tokens"):
        TinyMemVP(str(memvp_dir), memvp={"slots": 8}).load_model()
