"""Texts encoded once at dataset construction read back exactly as a fresh encode; images are processed per fetch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from lit_hyperet.data.conversation import IGNORE_INDEX, Conversation, ConversationEncoder, EncodedSample
from lit_hyperet.data.dataset import ConversationDataset
from lit_hyperet.data.errors import DataError
from lit_hyperet.data.images import ImageRef
from lit_hyperet.data.token_store import TokenStore

TURNS = [("What colour is it?", "It is red."), ("And the answer?", "The answer is C.")]


def conversation(cid: str, image: ImageRef | None, turns=TURNS) -> Conversation:
    messages = []
    for user, reply in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return Conversation(id=cid, messages=messages, image=image, source="store.json")


@pytest.fixture
def images(tmp_path: Path) -> list[ImageRef]:
    refs = []
    for i, (size, colour) in enumerate([((50, 70), (200, 30, 30)), ((90, 40), (30, 200, 30))]):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", size, colour).save(path)
        refs.append(ImageRef(path=path, source="store.json", record=f"id img{i}"))
    return refs


@pytest.mark.parametrize("mode", ["train", "generate"])
def test_dataset_items_equal_a_fresh_encode(tiny_model_dir: Path, images: list[ImageRef], mode: str) -> None:
    encoder = ConversationEncoder(AutoProcessor.from_pretrained(tiny_model_dir), answer_prefix="The answer is")
    convs = [
        conversation("a", images[0]),
        conversation("b", None),
        conversation("c", images[1], TURNS[1:]),
        conversation("d", None, TURNS[:1] * 3),
    ]
    dataset = ConversationDataset(convs, encoder, mode=mode, protocol="generate")
    assert len(dataset) == len(convs)
    for i, conv in enumerate(convs):
        fresh, item = encoder.encode(conv), dataset[i]
        assert item["input_ids"].dtype == torch.long
        if mode == "train":
            assert item["input_ids"].tolist() == fresh.input_ids
            assert item["labels"].tolist() == fresh.labels
        else:
            assert item["input_ids"].tolist() == fresh.input_ids[: fresh.prompt_length]
        if conv.image is None:
            assert item["pixel_values"] is None
            continue
        # the LlavaProcessor itself, on the rendered text and the image, gives the same ids and pixels
        text = "".join(piece for piece, _ in encoder.pieces(conv))
        bos = encoder.tokenizer.bos_token
        by_processor = encoder.processor(
            images=[conv.image.open()], text=[text], add_special_tokens=not text.startswith(bos), return_tensors="pt"
        )
        assert fresh.input_ids == by_processor["input_ids"][0].tolist()
        assert torch.equal(item["pixel_values"], by_processor["pixel_values"])
        assert torch.equal(fresh.pixel_values, by_processor["pixel_values"])
        assert fresh.input_ids.count(encoder.processor.image_token_id) == encoder.num_image_tokens > 1


def test_store_keeps_one_code_per_text_token_and_one_per_image(tiny_model_dir: Path, images: list[ImageRef]) -> None:
    encoder = ConversationEncoder(AutoProcessor.from_pretrained(tiny_model_dir), answer_prefix="The answer is")
    samples = [encoder.encode_text(conversation("a", images[0])), encoder.encode_text(conversation("b", None))]
    store = TokenStore(encoder.processor.image_token_id)
    for sample in samples:
        store.append(sample)
    store.freeze()
    n_img = encoder.num_image_tokens
    assert store.num_codes == sum(len(s.input_ids) for s in samples) - (n_img - 1)
    for sample, text in zip(samples, (store[0], store[1]), strict=True):
        assert text.input_ids.tolist() == sample.input_ids and text.labels.tolist() == sample.labels
        assert (text.prompt_length, text.answer_prefix_length) == (sample.prompt_length, sample.answer_prefix_length)
    with pytest.raises(RuntimeError, match="after freeze"):
        store.append(samples[0])


def test_store_refuses_labels_that_are_not_the_token_or_ignored() -> None:
    store = TokenStore(image_token_id=None)
    bad = EncodedSample(input_ids=[5, 6], labels=[IGNORE_INDEX, 7], prompt_length=1, answer_prefix_length=None)
    with pytest.raises(ValueError, match="label 7 is neither the token 6"):
        store.append(bad)


def test_image_processed_to_another_size_is_an_error(tiny_model_dir: Path, images: list[ImageRef]) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    processor.image_processor.do_center_crop = False  # a 50x70 image keeps its aspect ratio: not square
    encoder = ConversationEncoder(processor)
    dataset = ConversationDataset([conversation("a", images[0])], encoder)
    with pytest.raises(DataError, match=r"store.json: id a: field 'image': the image processor gave a \("):
        dataset[0]
