"""LLaVA instruction data: reading the JSON formats and LlavaInstructDataModule batches (tiny model processor)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from lit_hyperet.data import LlavaInstructDataModule
from lit_hyperet.data.conversation import IGNORE_INDEX
from lit_hyperet.data.errors import DataError
from lit_hyperet.tasks.instruct.llava_json import read_llava_json

INSTRUCT = [
    {  # LLaVA-Instruct / 665k style: sub-folder path, <image> after the text, multi-turn
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "What are the colors of the bus in the image?\n<image>"},
            {"from": "gpt", "value": "The bus is red."},
            {"from": "human", "value": "Where is it?"},
            {"from": "gpt", "value": "On the street."},
        ],
    },
    {  # ShareGPT text-only record: no image key
        "id": "sharegpt_1",
        "conversations": [{"from": "human", "value": "Tell me a joke."}, {"from": "gpt", "value": "Why not?"}],
    },
    {
        "id": "gqa_5",
        "image": "gqa/images/5.jpg",
        "conversations": [{"from": "human", "value": "<image>\nIs it day?"}, {"from": "gpt", "value": "Yes"}],
    },
    {"id": 42, "conversations": [{"from": "human", "value": "Count to two."}, {"from": "gpt", "value": "One, two."}]},
]
PRETRAIN = [  # blip_laion_cc_sbu_558k style
    {
        "id": "004539375",
        "image": "00453/004539375.jpg",
        "conversations": [
            {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
            {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"},
        ],
    }
]
COLOURS = {"coco/train2017/000000033471.jpg": (220, 20, 20), "gqa/images/5.jpg": (20, 20, 220),
           "00453/004539375.jpg": (20, 200, 20)}  # fmt: skip


@pytest.fixture
def llava_dir(tmp_path: Path) -> Path:
    for name, colour in COLOURS.items():
        (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 40), colour).save(tmp_path / "images" / name)
    (tmp_path / "instruct.json").write_text(json.dumps(INSTRUCT))
    (tmp_path / "pretrain.json").write_text(json.dumps(PRETRAIN))
    return tmp_path


@pytest.fixture
def processor(tiny_model_dir: Path):
    return AutoProcessor.from_pretrained(tiny_model_dir)


def spans(labels: list[int]) -> list[list[int]]:
    out, current = [], []
    for label in [*labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            out, current = [*out, current], []
    return out


def test_read_llava_json_moves_image_and_keeps_turns(llava_dir: Path) -> None:
    convs = read_llava_json(llava_dir / "instruct.json", llava_dir / "images")
    assert [c.id for c in convs] == ["000000033471", "sharegpt_1", "gqa_5", "42"]
    first = convs[0]
    assert first.messages == [
        {"role": "user", "content": "What are the colors of the bus in the image?"},
        {"role": "assistant", "content": "The bus is red."},
        {"role": "user", "content": "Where is it?"},
        {"role": "assistant", "content": "On the street."},
    ]
    assert first.image.path == llava_dir / "images" / "coco" / "train2017" / "000000033471.jpg"
    assert convs[1].image is None and convs[3].image is None
    assert convs[2].messages[0]["content"] == "Is it day?"
    assert first.meta == {"id": "000000033471", "reference": "On the street.", "has_image": True}


def test_training_batch_mixes_text_and_image_samples_with_right_padding(llava_dir: Path, processor) -> None:
    dm = LlavaInstructDataModule(
        train_path=str(llava_dir / "instruct.json"), image_folder=str(llava_dir / "images"), batch_size=4
    )
    dm.set_processor(processor)
    dm.setup("fit")
    dataset = dm.datasets["train"]
    batch = next(iter(dm.train_dataloader()))
    pad = processor.tokenizer.pad_token_id
    order = {sid: i for i, sid in enumerate(c.id for c in dataset.conversations)}
    expected_images = []
    for row, sid in enumerate(batch["ids"]):
        item = dataset[order[sid]]
        n = len(item["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == item["input_ids"].tolist()  # right padding
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert set(batch["input_ids"][row, n:].tolist()) <= {pad}
        assert set(batch["labels"][row, n:].tolist()) <= {IGNORE_INDEX}
        replies = [m["content"] for m in dataset.conversations[order[sid]].messages[1::2]]
        decoded = [processor.tokenizer.decode(s, skip_special_tokens=False) for s in spans(batch["labels"][row])]
        assert decoded == [f" {r}</s>" for r in replies]
        if item["pixel_values"] is not None:
            expected_images.append(item["pixel_values"])
    assert len(expected_images) == 2  # the two image records; text-only rows contribute no image
    assert torch.equal(batch["pixel_values"], torch.cat(expected_images))
    image_rows = (batch["input_ids"] == processor.image_token_id).any(dim=1).tolist()
    assert [batch["ids"][i] for i, has in enumerate(image_rows) if has] == [
        sid for sid in batch["ids"] if sid in ("000000033471", "gqa_5")
    ]


def test_generation_batch_is_left_padded_prompt_with_meta(llava_dir: Path, processor) -> None:
    dm = LlavaInstructDataModule(
        val_path=str(llava_dir / "instruct.json"), image_folder=str(llava_dir / "images"), eval_batch_size=4
    )
    dm.set_processor(processor)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["ids"] == ["000000033471", "sharegpt_1", "gqa_5", "42"]  # not shuffled
    assert batch["references"] == ["On the street.", "Why not?", "Yes", "One, two."]
    assert [m["has_image"] for m in batch["meta"]] == [True, False, True, False]
    assert "labels" not in batch and batch["pixel_values"].shape[0] == 2
    width = batch["input_ids"].shape[1]
    for row in range(4):
        mask = batch["attention_mask"][row].tolist()
        n = sum(mask)
        assert mask == [0] * (width - n) + [1] * n  # left padding
        text = processor.tokenizer.decode(batch["input_ids"][row, width - n :], skip_special_tokens=False)
        assert text.startswith("<s>") and text.endswith(" ASSISTANT:")
    first = processor.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert first.endswith("ASSISTANT: The bus is red.USER: Where is it? ASSISTANT:")
    dm.setup("test")
    assert dm.test_dataloader() == []  # a role without a file
    metric = dm.build_metric()
    metric.update(["On the street.", "no"], batch["meta"][:2])
    assert metric.compute()["exact_match"].item() == 50.0  # percent


def test_pretraining_plain_template_learns_only_caption_and_newline(llava_dir: Path, processor) -> None:
    dm = LlavaInstructDataModule(
        train_path=str(llava_dir / "pretrain.json"), image_folder=str(llava_dir / "images"), template="plain"
    )
    dm.set_processor(processor)
    dm.setup("fit")
    item = dm.datasets["train"][0]
    tokenizer = processor.tokenizer
    caption = PRETRAIN[0]["conversations"][1]["value"]
    n_image = int((item["input_ids"] == processor.image_token_id).sum())
    assert n_image == 16
    assert tokenizer.decode(item["input_ids"], skip_special_tokens=False) == "<s>" + "<image>" * 16 + caption + "\n"
    assert [tokenizer.decode(s, skip_special_tokens=False) for s in spans(item["labels"].tolist())] == [caption + "\n"]
    assert item["pixel_values"].shape == (1, 3, 32, 32)


def test_plain_template_needs_one_pair_with_image(llava_dir: Path) -> None:
    with pytest.raises(DataError, match="instruct.json: id 000000033471: field 'conversations': the plain"):
        read_llava_json(llava_dir / "instruct.json", llava_dir / "images", template="plain")


def test_loader_options_are_configurable(llava_dir: Path, processor) -> None:
    dm = LlavaInstructDataModule(
        train_path=str(llava_dir / "instruct.json"),
        image_folder=str(llava_dir / "images"),
        num_workers=2,
        pin_memory=True,
        persistent_workers=True,
        batch_size=3,
    )
    dm.set_processor(processor)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert (loader.num_workers, loader.pin_memory, loader.persistent_workers, loader.batch_size) == (2, True, True, 3)
    plain = LlavaInstructDataModule(train_path=str(llava_dir / "instruct.json"), image_folder=str(llava_dir / "images"))
    plain.set_processor(processor)
    plain.setup("fit")
    assert plain.train_dataloader().num_workers == 0 and not plain.train_dataloader().persistent_workers


def test_setup_without_processor_is_a_clear_error(llava_dir: Path) -> None:
    dm = LlavaInstructDataModule(train_path=str(llava_dir / "instruct.json"))
    with pytest.raises(RuntimeError, match="no processor"):
        dm.setup("fit")
