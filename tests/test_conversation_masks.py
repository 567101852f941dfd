"""Label masks, image-token placement/expansion and overflow handling of the conversation encoder (tiny model)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from lit_hyperet.data.conversation import IGNORE_INDEX, Conversation, ConversationEncoder
from lit_hyperet.data.dataset import ConversationDataset
from lit_hyperet.data.errors import DataError
from lit_hyperet.data.images import ImageRef

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# A chat template unlike vicuna_v1: other role markers, and "</s>\n" ends an assistant turn.
BRACKET_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{ '[USER] ' + m['content'] + '\\n' }}"
    "{%- else -%}{{ '[BOT] ' + m['content'] + '</s>\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '[BOT]' }}{%- endif -%}"
)
# renderer -> (ChatRenderer name, end-of-turn text after each reply)
RENDERERS = {
    "chat_template": ("chat_template", "</s>"),  # the tiny model's own (vicuna_v1 in Jinja)
    "fallback": ("vicuna_v1", "</s>"),  # no chat template anywhere: the project's vicuna_v1
    "vicuna_v1": ("vicuna_v1", "</s>"),  # asked for explicitly
    "bracket": ("chat_template", "</s>\n"),
}
SINGLE = [("What colour is the square?", "The answer is B.")]
MULTI = [
    ("What colour is the square?", "It is red."),
    ("And its shape?", "A square with\ntwo lines."),
    ("Which option?", "The answer is A."),
]


def make_processor(model_dir: Path, renderer: str):
    processor = AutoProcessor.from_pretrained(model_dir)
    if renderer == "fallback":
        processor.chat_template = None
        processor.tokenizer.chat_template = None
    elif renderer == "bracket":
        processor.chat_template = BRACKET_TEMPLATE
    return processor


def make_encoder(model_dir: Path, renderer: str) -> ConversationEncoder:
    encoder = ConversationEncoder(
        make_processor(model_dir, renderer),
        template="vicuna_v1" if renderer == "vicuna_v1" else "auto",
        answer_prefix="The answer is",
    )
    assert encoder.renderer.name == RENDERERS[renderer][0]
    return encoder


def conversation(turns, image: ImageRef | None = None, cid: str = "c1") -> Conversation:
    messages = []
    for user, reply in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return Conversation(id=cid, messages=messages, image=image, source="hand-written.json")


def label_spans(labels: list[int]) -> list[list[int]]:
    spans, current = [], []
    for label in labels:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])


@pytest.fixture
def image_file(tmp_path: Path) -> ImageRef:
    path = tmp_path / "coco" / "red.png"
    path.parent.mkdir()
    Image.new("RGB", (50, 70), (220, 20, 20)).save(path)
    return ImageRef(path=path, source="hand-written.json", record="id c1")


@pytest.mark.parametrize("renderer", list(RENDERERS))
@pytest.mark.parametrize("turns", [SINGLE, MULTI], ids=["single", "multi"])
@pytest.mark.parametrize("with_image", [False, True], ids=["text", "image"])
def test_unmasked_label_spans_are_exactly_the_replies(
    tiny_model_dir: Path, image_file: ImageRef, renderer: str, turns, with_image: bool
) -> None:
    encoder = make_encoder(tiny_model_dir, renderer)
    tokenizer = encoder.tokenizer
    sample = encoder.encode(conversation(turns, image_file if with_image else None))
    end_of_turn = RENDERERS[renderer][1]
    decoded = [tokenizer.decode(span, skip_special_tokens=False) for span in label_spans(sample.labels)]
    assert decoded == [f" {reply}{end_of_turn}" for _, reply in turns]
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        assert label in (IGNORE_INDEX, token)
    assert sample.input_ids[0] == tokenizer.bos_token_id and sample.labels[0] == IGNORE_INDEX
    image_id = encoder.processor.image_token_id
    assert all(label != image_id for label in sample.labels)
    assert (sample.pixel_values is not None) == with_image


@pytest.mark.parametrize("renderer", ["chat_template", "fallback"])
def test_vicuna_v1_text_and_generation_prompts(tiny_model_dir: Path, image_file: ImageRef, renderer: str) -> None:
    encoder = make_encoder(tiny_model_dir, renderer)
    tokenizer = encoder.tokenizer
    sample = encoder.encode(conversation(MULTI, image_file))
    n = encoder.num_image_tokens
    images = "<image>" * n
    # Hand-written from LLaVA's conv_vicuna_v1 (sep " ", sep2 "</s>"), <image> moved first in the first user turn.
    assert tokenizer.decode(sample.input_ids, skip_special_tokens=False) == (
        f"<s>{SYSTEM} USER: {images}\nWhat colour is the square? ASSISTANT: It is red.</s>"
        "USER: And its shape? ASSISTANT: A square with\ntwo lines.</s>"
        "USER: Which option? ASSISTANT: The answer is A.</s>"
    )
    prompt = tokenizer.decode(sample.input_ids[: sample.prompt_length], skip_special_tokens=False)
    assert prompt.endswith("USER: Which option? ASSISTANT:")
    prefixed = tokenizer.decode(sample.input_ids[: sample.answer_prefix_length], skip_special_tokens=False)
    assert prefixed == prompt + " The answer is"


def test_bracket_template_places_image_first_in_first_user_turn(tiny_model_dir: Path, image_file: ImageRef) -> None:
    encoder = make_encoder(tiny_model_dir, "bracket")
    sample = encoder.encode(conversation(MULTI, image_file))
    text = encoder.tokenizer.decode(sample.input_ids, skip_special_tokens=False)
    assert text.startswith("<s>[USER] " + "<image>" * encoder.num_image_tokens + "\nWhat colour is the square?\n[BOT]")
    assert text.count("<image>") == encoder.num_image_tokens


def test_image_expands_to_exactly_the_number_of_image_features(tiny_model_dir: Path, image_file: ImageRef) -> None:
    from transformers import LlavaForConditionalGeneration

    encoder = make_encoder(tiny_model_dir, "chat_template")
    sample = encoder.encode(conversation(MULTI, image_file))
    model = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        features = model.get_image_features(pixel_values=sample.pixel_values).pooler_output[0]
    positions = [i for i, t in enumerate(sample.input_ids) if t == encoder.processor.image_token_id]
    assert len(positions) == features.shape[0] == encoder.num_image_tokens
    assert positions == list(range(positions[0], positions[0] + len(positions)))  # one contiguous run
    first_reply = label_spans(sample.labels)[0]
    assert positions[-1] < sample.labels.index(first_reply[0])  # inside the first user turn
    ids = torch.tensor([sample.input_ids])
    with torch.no_grad():  # HF checks that image tokens and features agree
        out = model(input_ids=ids, pixel_values=sample.pixel_values, labels=torch.tensor([sample.labels]))
    assert torch.isfinite(out.loss)


def test_image_token_inside_message_text_is_rejected(tiny_model_dir: Path, image_file: ImageRef) -> None:
    encoder = make_encoder(tiny_model_dir, "chat_template")
    conv = conversation([("<image>\nWhat is it?", "A cat.")], image_file)
    with pytest.raises(DataError, match="hand-written.json: id c1: field 'conversations': turn 0 contains '<image>'"):
        encoder.encode(conv)


def test_unpaired_messages_are_rejected(tiny_model_dir: Path) -> None:
    encoder = make_encoder(tiny_model_dir, "chat_template")
    conv = Conversation(id="x9", messages=[{"role": "user", "content": "hi"}], source="f.json")
    with pytest.raises(DataError, match="f.json: id x9: field 'conversations'"):
        encoder.encode(conv)


# ----------------------------------------------------------------------------------------------------- overflow
def overflow_conversations() -> list[Conversation]:
    long_reply = "The answer is B. " + "The lecture explains the science. " * 12
    return [
        conversation(SINGLE, cid="short1"),
        conversation([("Explain.", long_reply.strip())], cid="long"),
        conversation(MULTI, cid="short2"),
    ]


def lengths(encoder: ConversationEncoder, convs: list[Conversation]) -> dict[str, tuple[int, int]]:
    out = {}
    for conv in convs:
        sample = encoder.encode(conv, load_image=False)
        out[conv.id] = (len(sample.input_ids), sample.prompt_length)
    return out


def test_overflow_error_names_file_and_id(tiny_model_dir: Path) -> None:
    encoder = make_encoder(tiny_model_dir, "chat_template")
    convs = overflow_conversations()
    sizes = lengths(encoder, convs)
    limit = max(sizes["short1"][0], sizes["short2"][0])
    assert sizes["long"][0] > limit
    with pytest.raises(DataError, match=rf"hand-written.json: id long: {sizes['long'][0]} tokens exceed max_length"):
        ConversationDataset(convs, encoder, mode="train", max_length=limit, on_overflow="error")


def test_overflow_skip_counts_logs_and_never_truncates(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    encoder = make_encoder(tiny_model_dir, "chat_template")
    convs = overflow_conversations()
    sizes = lengths(encoder, convs)
    limit = max(sizes["short1"][0], sizes["short2"][0])
    with caplog.at_level(logging.WARNING, logger="lit_hyperet.data.dataset"):
        dataset = ConversationDataset(convs, encoder, mode="train", max_length=limit, on_overflow="skip", name="t")
    assert (len(dataset), dataset.num_skipped, dataset.skipped_ids) == (2, 1, ["long"])
    assert "t: skipped 1 of 3 samples longer than max_length" in caplog.text and "long" in caplog.text
    item = dataset[1]
    assert item["id"] == "short2" and len(item["input_ids"]) == sizes["short2"][0]
    spans = label_spans(item["labels"].tolist())
    assert encoder.tokenizer.decode(spans[-1], skip_special_tokens=False) == " The answer is A.</s>"
    # Generation measures the prompt only: the long reply is not part of it, so nothing is skipped there.
    generate = ConversationDataset(convs, encoder, mode="generate", max_length=limit, on_overflow="skip")
    assert generate.num_skipped == 0 and sizes["long"][1] <= limit
    assert len(generate[1]["input_ids"]) == sizes["long"][1]
