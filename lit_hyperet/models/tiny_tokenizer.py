"""The tiny models' tokenizers: a small byte-level BPE tokenizer trained offline on a built-in ScienceQA/LLaVA-flavoured
corpus (tiny LLaVA), and a BERT WordPiece tokenizer over a fixed caption vocabulary (tiny BLIP-2 Q-Former)."""

from __future__ import annotations

import itertools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import BertTokenizer, PreTrainedTokenizerFast

UNK, BOS, EOS, PAD, IMAGE = "<unk>", "<s>", "</s>", "<pad>", "<image>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, IMAGE)  # ids 0..4 in this order
VOCAB_SIZE = 1024
ANSWER_LETTERS = ("A", "B", "C", "D", "E")

_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
_SHAPES = ("circle", "square", "triangle")
_COUNT_WORDS = ("one", "two", "three", "four", "five")
_POSITIONS = ("left", "right", "top", "bottom")

_SENTENCES = (
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: <image>\nWhat is in the image? ASSISTANT: The image shows a red circle.</s>",
    "Question: Which word would you find on a dictionary page?",
    "Context: N/A",
    "Options: (A) yes (B) no",
    "Answer with the option's letter from the given choices directly.",
    "Which of these states is farthest north?",
    "Which tense does the sentence use?",
    "Which type of sentence is this?",
    "What is the capital of the state?",
    "Which animal's feet are also adapted for grabbing prey?",
    "Select the solid. Select the liquid. Select the gas.",
    "Identify the question that the experiment can best answer.",
    "Will these magnets attract or repel each other?",
    "Think about the magnetic force between the magnets in each pair.",
    "Compare the motion of the two objects. Which object was moving at a higher speed?",
    "Lecture: A magnet is an object that attracts some metals.",
    "Solution: Look at the picture. The object on the left is larger than the object on the right.",
    "Hint: Read the text and look at the image.",
    "The lecture explains the science. The solution explains the answer.",
    "Subject: natural science, social science, language science.",
    "Grade: grade1 grade2 grade3 grade4 grade5 grade6 grade7 grade8 grade9 grade10 grade11 grade12.",
    "Topic: physics, chemistry, biology, geography, grammar, writing, vocabulary, economics, history.",
    "Skill: classify, compare, identify, infer, read a map, use a dictionary.",
    "This is true. This is false. Yes or no? True or false?",
    "Is the following statement true or false? The sun is a star.",
    "The image shows a map of the United States. The colour of each state is shown.",
    "The colour and the color of an object are the same thing.",
    "How many objects are in the image? There are three objects in the image.",
    "What shape is the object? What colour is the object? What color is the shape?",
    "Where is the object? The object is at the top left of the image.",
    "Animals, plants, rocks, minerals, weather, climate, water, air, light, sound, heat and energy.",
    "Students learn about the world in school. A teacher asks a question and a student gives an answer.",
    "The cat is sleeping on the mat. The dog runs in the park. Birds fly in the sky.",
    "Please describe the picture in detail. Give a short answer. Explain your reasoning step by step.",
    "Because, therefore, however, and, or, but, if, then, than, with, without, before, after, during.",
    "First, second, third, next, last, more, less, most, least, many, few, some, all, none, each, every.",
    "It was a sunny day. The temperature was high. The force pushed the box across the floor.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Years: 1776, 1865, 1969, 2001, 2024.",
    "The quick brown fox jumps over the lazy dog. People live in houses, cities, towns and countries.",
    "She said that he would come back later, but they did not know when it could happen.",
    "We have been working on this project for a long time, and now we can see how it has changed.",
    "There was a small river near the old house where the children used to play every summer.",
    "Good morning! Thank you very much. You are welcome. Please help me with this problem.",
    "Water boils at a high temperature and freezes at a low temperature. Ice is solid water.",
    "A plant needs sunlight, water and air to grow. Its leaves make food from light.",
    "The Earth moves around the Sun. The Moon moves around the Earth. Stars shine at night.",
)


def _generated_lines() -> list[str]:
    """Demo-data-style prompts and answers over every colour, shape, count, position and answer letter."""
    lines = []
    for colour, shape in itertools.product(_COLOURS, _SHAPES):
        lines.append(f"Question: What colour is the {shape}? Context: The image shows a {colour} {shape}.")
        lines.append(f"Question: What shape is the {colour} object? Options: (A) circle (B) square (C) triangle")
    for i, word in enumerate(_COUNT_WORDS, start=1):
        lines.append(f"Question: How many objects are in the image? There are {word} objects. ({i}) {i} {word}")
    for position, shape in itertools.product(_POSITIONS, _SHAPES):
        lines.append(f"Which {shape} is at the {position}? The {shape} is on the {position} side of the image.")
    system = " ".join(_SENTENCES[:2])
    for i, (colour, shape) in enumerate(zip(_COLOURS, itertools.cycle(_SHAPES))):
        letter = ANSWER_LETTERS[i % len(ANSWER_LETTERS)]
        lines.append(
            f"{system} USER: <image>\nQuestion: What colour is the {shape}?\nContext: N/A\n"
            f"Options: (A) {colour} (B) {_COLOURS[i - 1]}\nAnswer with the option's letter from the given choices "
            f"directly. ASSISTANT: The answer is {letter}.</s>USER: Why? ASSISTANT: The {shape} is {colour}.</s>"
        )
    for letter in ANSWER_LETTERS:
        for _ in range(8):
            lines.append(f"ASSISTANT: The answer is {letter}.</s>")
        lines.append(f"Options: (A) one (B) two (C) three (D) four (E) five LECTURE: N/A. The answer is {letter}.")
    return lines


def corpus() -> list[str]:
    """The training corpus (fixed order, so training is deterministic)."""
    return [*_SENTENCES, *_generated_lines()]


def build_tiny_tokenizer(vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE tokenizer; BOS is prepended to every encoded text, ``<image>`` is a special token.

    Raises ``RuntimeError`` if " A" … " E" are not single tokens or "The answer is" does not tokenize as a prefix of
    "The answer is A." (answer-prefix evaluation relies on both).
    """
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        image_token=IMAGE,
        padding_side="right",
        model_max_length=2048,
    )
    _check_answer_tokens(tokenizer)
    return tokenizer


def _check_answer_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    for letter in ANSWER_LETTERS:
        ids = tokenizer.encode(f" {letter}", add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"tiny tokenizer: ' {letter}' is {len(ids)} tokens, expected 1")
    prefix = tokenizer.encode("The answer is")
    full = tokenizer.encode("The answer is A.")
    if full[: len(prefix)] != prefix:
        raise RuntimeError("tiny tokenizer: 'The answer is' does not tokenize as a prefix of 'The answer is A.'")


BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 in this order ([PAD] = 0)
#: Words of synthetic shape captions ("a shape" … "a red square on the left") and common caption words.
CAPTION_WORDS = (
    *("a", "an", "the", "on", "in", "at", "of", "to", "and", "with", "is", "are", "there", "one", "two", "three"),
    *("shape", "shapes", "object", "objects", "image", "picture", "photo", "background", "small", "large", "big"),
    *("left", "right", "top", "bottom", "center", "centre", "middle", "upper", "lower", "corner", "side"),
    *_COLOURS,
    *("black", "white", "gray", "grey", "pink", "brown", "cyan", "magenta", "colour", "color", "coloured", "colored"),
    *_SHAPES,
    *("rectangle", "star", "diamond", "cross", "ellipse", "hexagon", "disk", "dot", "square", "circles", "squares"),
    *("triangles", "man", "woman", "person", "people", "dog", "cat", "sitting", "standing", "next", "near"),
    *(".", ",", "!", "?", "'", "-"),
)


def caption_vocabulary() -> dict[str, int]:
    """Token -> id: the BERT special tokens first, then :data:`CAPTION_WORDS` (each once, lower case)."""
    tokens = list(dict.fromkeys([*BERT_SPECIAL_TOKENS, *(w.lower() for w in CAPTION_WORDS)]))
    return {token: i for i, token in enumerate(tokens)}


def build_tiny_caption_tokenizer(model_max_length: int = 64) -> BertTokenizer:
    """A lower-casing BERT WordPiece tokenizer (``[CLS] … [SEP]``, ``[PAD]`` = 0) over :func:`caption_vocabulary`,
    built from the vocabulary in memory (``BertTokenizer(vocab=dict)``; a vocab file path can silently give a
    tokenizer that maps every word to ``[UNK]``). Raises ``RuntimeError`` if a caption word comes out as ``[UNK]``."""
    tokenizer = BertTokenizer(vocab=caption_vocabulary(), do_lower_case=True, model_max_length=model_max_length)
    unknown = [w for w in CAPTION_WORDS if tokenizer.unk_token_id in tokenizer.encode(w, add_special_tokens=False)]
    if unknown:
        raise RuntimeError(f"tiny caption tokenizer maps {unknown[:10]} to [UNK]")
    return tokenizer
