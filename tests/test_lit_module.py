"""HyperETLitModule: training, trainable-only checkpoints, reload, and export round trip (hand-built batches)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from lit_hyperet.checkpoints import CheckpointError
from lit_hyperet.hyperet import HyperETConfig
from lit_hyperet.lit_module import HyperETLitModule
from lit_hyperet.models.llava import LoraSettings, TinyLlava


def make_module(model_dir: Path, **kwargs) -> HyperETLitModule:
    defaults = dict(
        model=TinyLlava(path=str(model_dir)),
        hyperet=HyperETConfig(variant="block_diagonal", block_size=4),
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        hyperet_lr=1e-2,
        projector_lr=1e-3,
        lora_lr=1e-3,
    )
    defaults.update(kwargs)
    return HyperETLitModule(**defaults)


def hand_built_batches(processor, n: int = 4) -> DataLoader:
    """Image + prompt + answer; labels mark only the answer tokens."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    batches = []
    for i in range(n):
        images = [Image.new("RGB", (32, 32), colours[(i + j) % 4]) for j in range(2)]
        letters = ["ABCD"[(i + j) % 4] for j in range(2)]
        prompts = ["<image>\nWhat colour is the image? ASSISTANT:" for _ in range(2)]
        answers = [f" The answer is {letter}.</s>" for letter in letters]
        enc = processor(
            text=[p + a for p, a in zip(prompts, answers, strict=True)],
            images=images,
            return_tensors="pt",
            padding=True,
        )
        prompt_len = processor(text=prompts[:1], images=images[:1], return_tensors="pt")["input_ids"].shape[1]
        labels = enc["input_ids"].clone()
        labels[:, :prompt_len] = -100
        labels[enc["attention_mask"] == 0] = -100
        batches.append({**enc, "labels": labels})
    return DataLoader(batches, batch_size=None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    root = tmp_path_factory.mktemp("lit")
    module = make_module(tiny_model_dir)
    batches = hand_built_batches(module.processor)
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer = Trainer(
        accelerator="cpu",
        max_steps=4,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=0)],
    )
    trainer.fit(module, train_dataloaders=batches)
    return module, before, root / "ckpt" / "last.ckpt", batches


def test_only_trainable_parameters_change(trained) -> None:
    module, before, _, _ = trained
    trainable = module.trainable_state_keys()
    assert trainable and all(
        ("lora_" in k) or ("multi_modal_projector" in k) or ("parametrizations.weight.0" in k) for k in trainable
    )
    changed = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any("parametrizations.weight.0" in n for n in changed)  # HyperET matrices moved
    for n, p in module.named_parameters():
        if n not in trainable:
            assert torch.equal(p, before[n]), n


def test_checkpoint_holds_only_trainable_tensors_and_loads_weights_only(trained, tiny_model_dir: Path) -> None:
    module, _, ckpt_path, _ = trained
    checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu")
    assert set(checkpoint["state_dict"]) == module.trainable_state_keys()
    model_bytes = (tiny_model_dir / "model.safetensors").stat().st_size
    assert ckpt_path.stat().st_size < model_bytes / 3
    hp = checkpoint["hyper_parameters"]
    assert hp["model"]["class_path"] == "lit_hyperet.models.llava.sources.TinyLlava"
    assert hp["hyperet"]["variant"] == "block_diagonal"


def test_load_from_checkpoint_restores_trainable_tensors(trained) -> None:
    module, _, ckpt_path, _ = trained
    reloaded = HyperETLitModule.load_from_checkpoint(ckpt_path, map_location="cpu")
    ref = dict(module.named_parameters())
    for n, p in reloaded.named_parameters():
        assert torch.equal(p, ref[n]), n


def test_checkpoint_with_wrong_keys_is_rejected(trained) -> None:
    module, _, ckpt_path, _ = trained
    state = torch.load(ckpt_path, weights_only=True, map_location="cpu")["state_dict"]
    state.pop(next(iter(state)))
    fresh = make_module(Path(module.source.path))
    with pytest.raises(CheckpointError, match="missing"):
        fresh.load_state_dict(state)


def test_export_round_trip_gives_the_same_logits(trained, tmp_path: Path) -> None:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from lit_hyperet.__main__ import main

    module, _, ckpt_path, batches = trained
    out = tmp_path / "exported"
    assert main(["export", "--ckpt", str(ckpt_path), "--out", str(out)]) == 0
    plain = LlavaForConditionalGeneration.from_pretrained(out).eval()
    AutoProcessor.from_pretrained(out)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert not any("lora" in n for n, _ in plain.named_parameters())
    batch = {k: v for k, v in next(iter(batches)).items() if k != "labels"}
    module.eval()
    with torch.no_grad():
        expected = module.llava(**batch).logits
        got = plain(**batch).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_bf16_mixed_training_step_is_finite(tiny_model_dir: Path, tmp_path: Path) -> None:
    module = make_module(tiny_model_dir, hyperet=HyperETConfig(variant="banded", band_width=1))
    batches = hand_built_batches(module.processor, n=2)
    losses = []

    class Record(ModelCheckpoint):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=True,
        callbacks=[Record(dirpath=tmp_path, save_top_k=0)],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=batches)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
