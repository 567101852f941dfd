"""Two gaps transformers 5 leaves for towers LLaVA can take, filled without changing any model code.

- **BLIP-2's vision model has no ``AutoModel`` entry** (``blip_2_vision_model`` is in ``CONFIG_MAPPING`` but not in
  ``MODEL_MAPPING``), and ``LlavaModel`` builds its tower with ``AutoModel.from_config(config.vision_config)``: without
  the entry no LLaVA with a BLIP-2 tower can be built or loaded. :func:`register_towers` adds it
  (``AutoModel.register``, transformers' public API for this) when importing :mod:`lit_hyperet.models.llava`; a plain
  transformers process loading such a LLaVA needs the same one line.
- **DINOv3's image processor exists only with a torchvision backend** (``DINOv3ViTImageProcessor``), and this project
  runs without torchvision. :func:`dinov3_image_processor` gives the PIL-backed equivalent.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import AutoImageProcessor, AutoModel, Blip2VisionConfig, Blip2VisionModel, PreTrainedConfig
from transformers.image_processing_base import ImageProcessingMixin
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil
from transformers.utils import is_torchvision_available

from lit_hyperet.user_errors import ConfigError

#: DINOv3ViTImageProcessor's settings that ViTImageProcessorPil takes under the same names.
_DINOV3_SETTINGS = (
    "size",
    "resample",
    "do_resize",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_center_crop",
    "crop_size",
)


def register_towers() -> None:
    """Map ``Blip2VisionConfig`` to ``Blip2VisionModel`` in ``AutoModel`` unless transformers already does."""
    if Blip2VisionConfig not in MODEL_MAPPING:
        # exist_ok=True: without it transformers silently skips registering a config class of its own
        AutoModel.register(Blip2VisionConfig, Blip2VisionModel, exist_ok=True)


def dinov3_image_processor(settings: Mapping[str, Any] | None = None) -> ViTImageProcessorPil:
    """The PIL-backed equivalent of ``DINOv3ViTImageProcessor``: square resize (bilinear), rescale to [0, 1], ImageNet
    mean / std; ``settings`` (a DINOv3 ``preprocessor_config.json``'s values) override those defaults.

    DINOv3's own processor rescales before resizing (an antialiased float resize); PIL resizes the 8-bit image, so
    pixels may differ by about one grey level. The square size (224 for the released models) is kept: with patch 16 it
    gives the 196 patch tokens of ``image_size``.
    """
    values: dict[str, Any] = {
        "resample": PILImageResampling.BILINEAR,
        "image_mean": IMAGENET_DEFAULT_MEAN,
        "image_std": IMAGENET_DEFAULT_STD,
        "do_convert_rgb": True,
    }
    values.update({k: v for k, v in (settings or {}).items() if k in _DINOV3_SETTINGS and v is not None})
    return ViTImageProcessorPil(**values)


def load_image_processor(path: str | Path, vision_config: PreTrainedConfig) -> BaseImageProcessor:
    """A tower dir's image processor (PIL-backed unless torchvision is installed); DINOv3's torchvision-only
    processor is replaced by :func:`dinov3_image_processor` with the dir's settings when torchvision is missing."""
    try:
        settings, _ = ImageProcessingMixin.get_image_processor_dict(str(path))
    except OSError as err:
        raise ConfigError(f"vision tower dir {str(path)!r} has no image-processor config") from err
    kind = str(settings.get("image_processor_type") or "").removesuffix("Fast")
    dinov3 = kind == "DINOv3ViTImageProcessor" or (not kind and vision_config.model_type == "dinov3_vit")
    if dinov3 and not is_torchvision_available():
        return dinov3_image_processor(settings)
    return AutoImageProcessor.from_pretrained(path)
