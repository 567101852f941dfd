"""Where a MemVP model comes from: a CLIP vision dir + a LLaMA dir, or a generated tiny pair; and its processor.

MemVP's data path lives with its model: images squashed to the tower's size (224 px for CLIP ViT-L/14) with bicubic
resampling and ImageNet mean / std, no crop (MemVP's ``util/datasets.py``), and no chat format
(:func:`~lit_hyperet.chat_templates.plain_chat_template`: the prompt carries MemVP's markers); images never enter the
text (no image token), the batch's ``image_mask`` says which samples have one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel, PreTrainedTokenizerBase
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from lit_hyperet.chat_templates import plain_chat_template
from lit_hyperet.encoders import vision_half
from lit_hyperet.models.loading import (
    LanguageModelSource,
    NamedParams,
    generate_once,
    load_complete,
    require_config,
    torch_dtype,
)
from lit_hyperet.models.memvp.model import MemVPModel
from lit_hyperet.user_errors import ConfigError

if TYPE_CHECKING:
    from lit_hyperet.hyperet_config import HyperETConfig


@dataclass
class MemVPSettings:
    """MemVP's architecture (defaults: the released LLaMA-7B ScienceQA setting); see
    :class:`~lit_hyperet.models.memvp.model.MemVPModel` for each field. ``slots``: 320 for LLaMA-7B, 400 for 13B."""

    slots: int = 320
    projector_hidden: int = 128
    adapter_dim: int = 12
    adapter_scale: float = 0.1
    memory_scale: float = 0.1
    visual_scale: float = 0.01
    dropout: float = 0.1
    feature_layer: int = -2
    modality_embedding: bool = False


class MemVPProcessor:
    """The tokenizer and image processor of a MemVP model (what the datamodules read), with the plain template as
    ``chat_template`` (MemVP uses no chat format) and no image token."""

    image_token = None

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_processor: Any) -> None:
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.chat_template = plain_chat_template()


def memvp_image_processor(size: int) -> CLIPImageProcessorPil:
    """MemVP's image transform: squash to ``size``² (bicubic), ImageNet mean / std, no centre crop."""
    return CLIPImageProcessorPil(
        size={"height": size, "width": size},
        do_center_crop=False,
        resample=PILImageResampling.BICUBIC,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    )


def parse_settings(value: MemVPSettings | dict[str, Any] | None) -> MemVPSettings:
    """MemVP settings from a mapping (unknown keys refused), the defaults for ``None``."""
    if value is None or isinstance(value, MemVPSettings):
        return value or MemVPSettings()
    if isinstance(value, dict):
        unknown = set(value) - set(MemVPSettings.__dataclass_fields__)
        if unknown:
            raise ConfigError(
                f"memvp: unknown settings {sorted(unknown)}; known: {list(MemVPSettings.__dataclass_fields__)}"
            )
        return MemVPSettings(**value)
    raise ConfigError(f"memvp must be a mapping of MemVP settings, got {value!r}")


class MemVPSource(LanguageModelSource):
    """Base of the MemVP sources: builds :class:`MemVPModel` from a vision dir and an LLM dir.

    Subclasses say where the dirs are (:meth:`dirs`) and keep ``memvp`` (:class:`MemVPSettings`) and ``dtype``.
    """

    input_names = ("input_ids", "attention_mask", "pixel_values", "image_mask")
    memvp: MemVPSettings
    dtype: str = "float32"

    def dirs(self) -> tuple[Path, Path]:
        """``(vision_dir, llm_dir)``."""
        raise NotImplementedError

    def _vision_config(self) -> Any:
        vision_dir, _ = self.dirs()
        config = vision_half(AutoConfig.from_pretrained(require_config(vision_dir, "vision tower dir")))
        if config.model_type != "clip_vision_model":
            raise ConfigError(f"{str(vision_dir)!r}: MemVP needs a CLIP vision tower, found {config.model_type!r}")
        return config

    def load_model(self) -> MemVPModel:
        vision_dir, llm_dir = self.dirs()
        dtype = torch_dtype(self.dtype)
        vision = load_complete(
            CLIPVisionModel, vision_dir, "vision tower dir", config=self._vision_config(), dtype=dtype
        )
        llm = load_complete(AutoModelForCausalLM, require_config(llm_dir, "LLM dir"), "LLM dir", dtype=dtype)
        layers = getattr(getattr(llm, "model", None), "layers", None)
        if layers is None or not all(hasattr(layer, "mlp") for layer in layers):
            raise ConfigError(f"{str(llm_dir)!r}: MemVP needs a LLaMA-style decoder (model.layers[i].mlp)")
        settings = self.memvp
        return MemVPModel(llm, vision, **asdict(settings))

    def load_processor(self) -> MemVPProcessor:
        _, llm_dir = self.dirs()
        tokenizer = AutoTokenizer.from_pretrained(require_config(llm_dir, "LLM dir"))
        if tokenizer.pad_token is None:  # MemVP pads with 0 (LLaMA's unk); a pad token only fills batches
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        return MemVPProcessor(tokenizer, memvp_image_processor(self._vision_config().image_size))

    def build(
        self,
        hyperet: HyperETConfig | None = None,
        train_projector: bool = True,
        lora: Any = None,
        gradient_checkpointing: bool = False,
    ) -> nn.Module:
        from lit_hyperet.models.memvp.build import build_memvp

        return build_memvp(self.load_model(), hyperet, train_projector, lora, gradient_checkpointing)

    def trainable_groups(self, model: nn.Module) -> dict[str, NamedParams]:
        from lit_hyperet.models.memvp.build import trainable_groups

        return trainable_groups(model)


class MemVPFromParts(MemVPSource):
    """MemVP on a local CLIP vision dir (a ``CLIPVisionModel`` or full ``CLIPModel`` dir, e.g. ViT-L/14 at 224 px) and
    a LLaMA causal-LM dir with its tokenizer.

    Args:
        vision_path: the CLIP dir.
        llm_path: the LLaMA dir.
        memvp: the architecture (:class:`MemVPSettings`).
        dtype: ``float32``, ``bfloat16`` or ``float16`` for the frozen weights (MemVP's own parameters stay float32).
    """

    def __init__(
        self, vision_path: str, llm_path: str, memvp: MemVPSettings | None = None, dtype: str = "float32"
    ) -> None:
        torch_dtype(dtype)
        self.vision_path, self.llm_path, self.dtype = vision_path, llm_path, dtype
        self.memvp = parse_settings(memvp)

    def dirs(self) -> tuple[Path, Path]:
        return Path(self.vision_path), Path(self.llm_path)

    def describe(self) -> dict[str, str]:
        return {
            "source": type(self).__name__,
            "vision_path": str(self.vision_path),
            "llm_path": str(self.llm_path),
            "dtype": self.dtype,
            **{f"memvp.{k}": str(v) for k, v in vars(self.memvp).items()},
        }


class TinyMemVP(MemVPSource):
    """A generated tiny MemVP pair (``make-tiny-model --family memvp``): written when ``path`` holds no model, then
    loaded like :class:`MemVPFromParts` (the LLaMA at ``path``, the CLIP tower at ``path/vision``; ``float32``).

    Args:
        path: where the tiny model lives (created when missing).
        seed: weight seed used when the model is generated.
        memvp: the architecture (:class:`MemVPSettings`; the tiny tower has 16 patches, so ``slots`` ≥ 16).
    """

    def __init__(self, path: str = "outputs/tiny_memvp", seed: int = 0, memvp: MemVPSettings | None = None) -> None:
        self.path, self.seed = path, seed
        self.memvp = parse_settings(memvp)

    def dirs(self) -> tuple[Path, Path]:
        from lit_hyperet.models.memvp.tiny import VISION_SUBDIR, make_tiny_memvp

        path = generate_once(self.path, lambda out: make_tiny_memvp(out, self.seed))
        return path / VISION_SUBDIR, path

    def describe(self) -> dict[str, str]:
        return {
            "source": type(self).__name__,
            "path": str(self.path),
            "seed": str(self.seed),
            **{f"memvp.{k}": str(v) for k, v in vars(self.memvp).items()},
        }
