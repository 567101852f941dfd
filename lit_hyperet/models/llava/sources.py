"""Where a LLaVA model comes from: a local HF LLaVA dir, a vision dir + an LLM dir, or a generated tiny model.

Each source returns a plain ``LlavaForConditionalGeneration`` (nothing frozen) and a matching ``LlavaProcessor``; the
classes take plain, type-hinted init args so they read well as ``class_path`` / ``init_args`` in LightningCLI YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from transformers import (
    AddedToken,
    AutoConfig,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from lit_hyperet.chat_templates import vicuna_v1_chat_template
from lit_hyperet.encoders import check_select_strategy, disable_train_augmentations, prefix_tokens, vision_half
from lit_hyperet.models import tiny_configs
from lit_hyperet.models.llava.tiny import Vision, make_tiny_model
from lit_hyperet.models.llava.towers import load_image_processor
from lit_hyperet.models.loading import (
    LanguageModelSource,
    NamedParams,
    generate_once,
    load_complete,
    require_config,
    torch_dtype,
)
from lit_hyperet.user_errors import ConfigError

if TYPE_CHECKING:
    from lit_hyperet.hyperet_config import HyperETConfig

#: Full models (``lit_hyperet.encoders.FULL_MODELS``) whose checkpoints name their vision half's weights otherwise than
#: the vision model class does -> ``key_mapping`` for ``from_pretrained``. CLIP / SigLIP (``vision_model.``) and SAM
#: (``vision_encoder.``) use the vision model's own names; BLIP-2 prefixes ``vision_model.`` to Blip2VisionModel's.
_VISION_HALF_KEYS = {"blip-2": {r"^vision_model\.": ""}}


class LlavaSource(LanguageModelSource):
    """Base of the LLaVA sources: :func:`~lit_hyperet.models.llava.build.build_llava` builds their trainable model."""

    def build(
        self,
        hyperet: HyperETConfig | None = None,
        train_projector: bool = True,
        lora: Any = None,
        gradient_checkpointing: bool = False,
    ) -> nn.Module:
        from lit_hyperet.models.llava.build import build_llava  # peft is imported only when a model is built

        return build_llava(self, hyperet, train_projector, lora, gradient_checkpointing)

    def trainable_groups(self, model: nn.Module) -> dict[str, NamedParams]:
        from lit_hyperet.models.llava.build import trainable_groups

        return trainable_groups(model)


class PretrainedLlava(LlavaSource):
    """A local Hugging Face LLaVA dir (e.g. a downloaded ``llava-hf/llava-1.5-7b-hf``); no ``trust_remote_code``.

    Args:
        path: the model dir (``config.json`` with ``model_type: llava``, weights, processor files).
        dtype: ``float32``, ``bfloat16`` or ``float16`` for the loaded weights.
        vision_feature_layer: overrides the config's vision feature layer (LLaVA-1.5: -2) when given.
        vision_feature_select_strategy: overrides the config's strategy (``default`` drops CLS, ``full`` keeps all);
            the processor is updated too so the number of image tokens still matches.
        attn_implementation: ``sdpa``, ``eager``, ``flash_attention_2``, ...
    """

    def __init__(
        self,
        path: str,
        dtype: str = "float32",
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        attn_implementation: str = "sdpa",
    ) -> None:
        torch_dtype(dtype)
        self.path = path
        self.dtype = dtype
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.attn_implementation = attn_implementation

    def load_config(self) -> LlavaConfig:
        """The dir's ``LlavaConfig`` with the overrides applied."""
        path = require_config(self.path, "LLaVA model dir")
        config = AutoConfig.from_pretrained(path)
        if not isinstance(config, LlavaConfig):
            raise ConfigError(f"{str(path)!r} holds a {config.model_type!r} model, expected 'llava'")
        if self.vision_feature_layer is not None:
            config.vision_feature_layer = self.vision_feature_layer
        if self.vision_feature_select_strategy is not None:
            check_select_strategy(config.vision_config, self.vision_feature_select_strategy)
            config.vision_feature_select_strategy = self.vision_feature_select_strategy
        return config

    def load_model(self) -> LlavaForConditionalGeneration:
        return LlavaForConditionalGeneration.from_pretrained(
            self.path,
            config=self.load_config(),
            dtype=torch_dtype(self.dtype),
            attn_implementation=self.attn_implementation,
        )

    def load_processor(self) -> ProcessorMixin:
        processor = AutoProcessor.from_pretrained(require_config(self.path, "LLaVA model dir"))
        if self.vision_feature_select_strategy is not None:
            processor.vision_feature_select_strategy = self.load_config().vision_feature_select_strategy
        return processor

    def describe(self) -> dict[str, str]:
        return {
            "source": type(self).__name__,
            "path": str(self.path),
            "dtype": self.dtype,
            "vision_feature_layer": str(self.vision_feature_layer),
            "vision_feature_select_strategy": str(self.vision_feature_select_strategy),
            "attn_implementation": self.attn_implementation,
        }


class LlavaFromParts(LlavaSource):
    """A LLaVA assembled from a vision-tower dir, a causal-LM dir and a fresh projector (LLaVA's stage-1 start).

    Args:
        vision_path: a ``CLIPVisionModel`` / ``SiglipVisionModel`` / ``Dinov2Model`` / ``DINOv3ViTModel`` /
            ``SamVisionModel`` / ``Blip2VisionModel`` dir, or a full ``CLIPModel`` / ``SiglipModel`` / ``SamModel`` /
            ``Blip2ForConditionalGeneration`` dir (its vision half is used), with its image-processor config.
            DINOv3's torchvision-only processor is replaced by its PIL equivalent when torchvision is missing, and
            its train-mode RoPE augmentations are switched off (a frozen tower gives evaluation features).
        llm_path: a causal-LM dir (Llama / Vicuna) with its tokenizer.
        projector: ``mlp2x_gelu`` (LLaVA-1.5: Linear → GELU → Linear) or ``linear``. transformers' LLaVA projector is
            always Linear → act → Linear, so ``linear`` is stored as ``projector_hidden_act="linear"``: two Linears
            with nothing between, the second initialised to the identity. It starts as exactly LLaVA's single Linear
            and spans the same functions, but has the extra hidden×hidden parameters and trains as their product.
            This keeps the saved model loadable by plain ``LlavaForConditionalGeneration.from_pretrained``.
        vision_feature_layer: hidden-state index fed to the projector (LLaVA-1.5: -2).
        vision_feature_select_strategy: ``default`` drops the CLS token (towers with one CLS: CLIP, DINOv2,
            BLIP-2), ``full`` keeps all tokens (SigLIP and SAM have no CLS, DINOv3 has registers after it: use
            ``full``; see :mod:`lit_hyperet.encoders`).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        image_token: the image placeholder; added to the tokenizer as a special token (and the embeddings resized)
            when missing.
        chat_template: a Jinja chat template; default LLaVA's ``vicuna_v1`` format.

    The tokenizer gets a pad token when it has none (its ``unk`` token, as LLaVA's training code does, else a new
    ``<pad>``). New embedding rows use transformers' mean resizing, which samples: seed torch for reproducibility.
    """

    def __init__(
        self,
        vision_path: str,
        llm_path: str,
        projector: Literal["linear", "mlp2x_gelu"] = "mlp2x_gelu",
        vision_feature_layer: int = -2,
        vision_feature_select_strategy: str = "default",
        dtype: str = "float32",
        image_token: str = "<image>",
        chat_template: str | None = None,
    ) -> None:
        if projector not in ("linear", "mlp2x_gelu"):
            raise ConfigError(f"projector must be 'linear' or 'mlp2x_gelu', got {projector!r}")
        torch_dtype(dtype)
        self.vision_path = vision_path
        self.llm_path = llm_path
        self.projector = projector
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.dtype = dtype
        self.image_token = image_token
        self.chat_template = chat_template

    def vision_config(self) -> PreTrainedConfig:
        """The vision tower's config (the vision half of a full CLIP / SigLIP / SAM / BLIP-2 config)."""
        config = vision_half(self._dir_config())
        check_select_strategy(config, self.vision_feature_select_strategy)
        return disable_train_augmentations(config)

    def _dir_config(self) -> PreTrainedConfig:
        return AutoConfig.from_pretrained(require_config(self.vision_path, "vision tower dir"))

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        """The LLM's tokenizer with the image token (and a pad token) added when missing, and the chat template."""
        tokenizer = AutoTokenizer.from_pretrained(require_config(self.llm_path, "LLM dir"))
        named = getattr(tokenizer, "image_token", None)
        if named is not None and str(named) != self.image_token:
            raise ConfigError(f"the tokenizer in {self.llm_path!r} names {str(named)!r} its image token; pass that")
        if self.image_token not in tokenizer.get_vocab():
            tokenizer.add_tokens([AddedToken(self.image_token, special=True, normalized=False)], special_tokens=True)
        if tokenizer.pad_token is None:
            if tokenizer.unk_token is not None:
                tokenizer.pad_token = tokenizer.unk_token
            else:
                tokenizer.add_special_tokens({"pad_token": "<pad>"})
        tokenizer.chat_template = self._chat_template()
        return tokenizer

    def _chat_template(self) -> str:
        return self.chat_template if self.chat_template is not None else vicuna_v1_chat_template(self.image_token)

    def load_processor(self) -> ProcessorMixin:
        vision_config = self.vision_config()
        return LlavaProcessor(
            image_processor=load_image_processor(self.vision_path, vision_config),
            tokenizer=self.load_tokenizer(),
            patch_size=vision_config.patch_size,
            vision_feature_select_strategy=self.vision_feature_select_strategy,
            num_additional_image_tokens=prefix_tokens(vision_config),
            chat_template=self._chat_template(),
            image_token=self.image_token,
        )

    def load_model(self) -> LlavaForConditionalGeneration:
        dtype = torch_dtype(self.dtype)
        vision_config = self.vision_config()
        vision_cls = MODEL_MAPPING[type(vision_config)]
        key_mapping = _VISION_HALF_KEYS.get(self._dir_config().model_type)
        vision = load_complete(
            vision_cls, self.vision_path, "vision tower dir", config=vision_config, dtype=dtype, key_mapping=key_mapping
        )
        llm = load_complete(AutoModelForCausalLM, require_config(self.llm_path, "LLM dir"), "LLM dir", dtype=dtype)
        tokenizer = self.load_tokenizer()
        if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
            llm.resize_token_embeddings(len(tokenizer))
        num_patches = (vision_config.image_size // vision_config.patch_size) ** 2
        kept_prefix = prefix_tokens(vision_config) - (self.vision_feature_select_strategy == "default")
        config = LlavaConfig(
            vision_config=vision.config,
            text_config=llm.config,
            image_token_index=tokenizer.convert_tokens_to_ids(self.image_token),
            image_seq_length=num_patches + kept_prefix,
            projector_hidden_act="gelu" if self.projector == "mlp2x_gelu" else "linear",
            vision_feature_layer=self.vision_feature_layer,
            vision_feature_select_strategy=self.vision_feature_select_strategy,
            tie_word_embeddings=bool(getattr(llm.config, "tie_word_embeddings", False)),
        )
        # Build the shell on the meta device and move the loaded parts in: no second copy of the weights.
        with torch.device("meta"):
            model = LlavaForConditionalGeneration(config)
        model.model.vision_tower = vision
        model.model.language_model = llm.get_decoder()
        model.lm_head = llm.get_output_embeddings()
        model.model.multi_modal_projector = self._new_projector(config).to(dtype)
        meta = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
        if meta:
            raise RuntimeError(f"assembled LLaVA left tensors uninitialised: {', '.join(meta[:10])}")
        model.generation_config = llm.generation_config
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        return model

    def _new_projector(self, config: LlavaConfig) -> LlavaMultiModalProjector:
        projector = LlavaMultiModalProjector(config)  # nn.Linear default init, like LLaVA's build_vision_projector
        if self.projector == "linear":
            with torch.no_grad():
                projector.linear_2.weight.copy_(torch.eye(config.text_config.hidden_size))
                if projector.linear_2.bias is not None:
                    projector.linear_2.bias.zero_()
        return projector

    def describe(self) -> dict[str, str]:
        return {
            "source": type(self).__name__,
            "vision_path": str(self.vision_path),
            "llm_path": str(self.llm_path),
            "projector": self.projector,
            "vision_feature_layer": str(self.vision_feature_layer),
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "dtype": self.dtype,
            "image_token": self.image_token,
            "chat_template": "vicuna_v1" if self.chat_template is None else "custom",
        }


class TinyLlava(LlavaSource):
    """A generated tiny LLaVA: written by ``make-tiny-model`` code when ``path`` holds no model, then loaded exactly
    like :class:`PretrainedLlava` (``float32``).

    Args:
        path: where the tiny model lives (created when missing).
        vision: ``clip``, ``siglip``, ``dinov2``, ``dinov3``, ``sam`` or ``blip2`` tower (must match an existing model
            at ``path``).
        seed: weight seed used when the model is generated.
    """

    def __init__(self, path: str = "outputs/tiny_model", vision: Vision = "clip", seed: int = 0) -> None:
        self.path = path
        self.vision = vision
        self.seed = seed

    def ensure(self) -> Path:
        """Generate the model at ``path`` unless one is there (atomically: no rank sees a half-written dir)."""
        path = generate_once(self.path, lambda out: make_tiny_model(out, self.vision, self.seed))
        found = AutoConfig.from_pretrained(path).vision_config.model_type
        expected = tiny_configs.vision_config(self.vision).model_type
        if found != expected:
            raise ConfigError(f"{str(path)!r} holds a tiny model with a {found!r} tower, not {self.vision!r}")
        return path

    def _pretrained(self) -> PretrainedLlava:
        return PretrainedLlava(str(self.ensure()))

    def load_model(self) -> LlavaForConditionalGeneration:
        return self._pretrained().load_model()

    def load_processor(self) -> ProcessorMixin:
        return self._pretrained().load_processor()

    def describe(self) -> dict[str, str]:
        return {"source": type(self).__name__, "path": str(self.path), "vision": self.vision, "seed": str(self.seed)}
