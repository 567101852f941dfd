"""Where a BLIP-2 image–text retrieval model comes from: a local HF dir (e.g. a downloaded
``Salesforce/blip2-itm-vit-g``) or a generated tiny model.

Each source returns a plain ``Blip2ForImageTextRetrieval`` (nothing frozen) and its ``Blip2Processor`` (image
processor + BERT tokenizer); no ``trust_remote_code``. Init args are plain and type-hinted for LightningCLI YAML.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

from transformers import AutoConfig, Blip2Config, Blip2ForImageTextRetrieval, Blip2Processor

from lit_hyperet.models.blip2.tiny import make_tiny_blip2_itm
from lit_hyperet.models.loading import ModelSource, generate_once, load_complete, require_config, torch_dtype
from lit_hyperet.user_errors import ConfigError

WHAT = "BLIP-2 retrieval dir"


class Blip2RetrievalSource(ModelSource):
    """Base of the sources of ``Blip2ForImageTextRetrieval`` models (what ``HyperbolicAlignmentModule`` takes)."""

    @abstractmethod
    def load_model(self) -> Blip2ForImageTextRetrieval:
        """The plain retrieval model; every parameter keeps ``requires_grad=True``."""

    @abstractmethod
    def load_processor(self) -> Blip2Processor:
        """Its processor: image processor + the Q-Former's BERT tokenizer."""


class PretrainedBlip2Retrieval(Blip2RetrievalSource):
    """A local Hugging Face BLIP-2 retrieval dir: ``config.json`` of ``model_type`` ``blip-2``, the weights of
    ``Blip2ForImageTextRetrieval`` (vision tower, query tokens, Q-Former with its text embeddings, projections, ITM
    head; a captioning checkpoint such as ``blip2-opt-2.7b`` lacks the text side and is refused) and a
    ``Blip2Processor``.

    Args:
        path: the model dir.
        dtype: ``float32``, ``bfloat16`` or ``float16`` for the loaded weights (transformers keeps the Q-Former and
            the query tokens in float32 whatever this says).
    """

    def __init__(self, path: str, dtype: str = "float32") -> None:
        torch_dtype(dtype)
        self.path = path
        self.dtype = dtype

    def load_config(self) -> Blip2Config:
        path = require_config(self.path, WHAT)
        config = AutoConfig.from_pretrained(path)
        if not isinstance(config, Blip2Config):
            raise ConfigError(f"{str(path)!r} holds a {config.model_type!r} model, expected 'blip-2'")
        if not config.qformer_config.use_qformer_text_input:
            raise ConfigError(f"{str(path)!r}: its Q-Former has no text input (use_qformer_text_input false)")
        return config

    def load_model(self) -> Blip2ForImageTextRetrieval:
        config = self.load_config()
        return load_complete(Blip2ForImageTextRetrieval, self.path, WHAT, config=config, dtype=torch_dtype(self.dtype))

    def load_processor(self) -> Blip2Processor:
        path = require_config(self.path, WHAT)
        processor = Blip2Processor.from_pretrained(path)
        vocab = self.load_config().qformer_config.vocab_size
        if len(processor.tokenizer) > vocab:
            raise ConfigError(
                f"{str(path)!r}: its tokenizer has {len(processor.tokenizer)} tokens, the Q-Former {vocab} embeddings"
            )
        return processor

    def describe(self) -> dict[str, str]:
        return {"source": type(self).__name__, "path": str(self.path), "dtype": self.dtype}


class TinyBlip2Retrieval(Blip2RetrievalSource):
    """A generated tiny BLIP-2 retrieval model: written by ``make-tiny-model --family blip2-itm`` code when ``path``
    holds no model, then loaded like :class:`PretrainedBlip2Retrieval` (``float32``).

    Args:
        path: where the tiny model lives (created when missing).
        seed: weight seed used when the model is generated.
    """

    def __init__(self, path: str = "outputs/tiny_blip2_itm", seed: int = 0) -> None:
        self.path = path
        self.seed = seed

    def ensure(self) -> Path:
        """Generate the model at ``path`` unless one is there (atomically: no rank sees a half-written dir)."""
        path = generate_once(self.path, lambda out: make_tiny_blip2_itm(out, self.seed))
        found = AutoConfig.from_pretrained(path).model_type
        if found != "blip-2":
            raise ConfigError(f"{str(path)!r} holds a tiny {found!r} model, not a BLIP-2 retrieval model")
        return path

    def _pretrained(self) -> PretrainedBlip2Retrieval:
        return PretrainedBlip2Retrieval(str(self.ensure()))

    def load_model(self) -> Blip2ForImageTextRetrieval:
        return self._pretrained().load_model()

    def load_processor(self) -> Blip2Processor:
        return self._pretrained().load_processor()

    def describe(self) -> dict[str, str]:
        return {"source": type(self).__name__, "path": str(self.path), "seed": str(self.seed)}
