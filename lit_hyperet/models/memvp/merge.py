"""A trained MemVP model as plain files: HyperET baked into a plain ``CLIPVisionModel`` dir, MemVP's own tensors as
safetensors, and a small JSON config; :func:`load_merged` is the one call that loads them back.

Layout of an exported dir::

    vision/              CLIPVisionModel.from_pretrained loads it (HyperET merged, no adapter weights)
    memvp.safetensors    the projector, E1 / E2 (and the unused modality embedding), the CLIP MLP adapters
    memvp.json           the architecture settings and the LLaMA dir (the frozen LLM is not copied)
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, CLIPVisionModel

from lit_hyperet.hyperet import merge_hyperet
from lit_hyperet.models.loading import load_complete, require_config, torch_dtype
from lit_hyperet.models.memvp.model import MemVPModel
from lit_hyperet.models.memvp.sources import MemVPSettings, parse_settings
from lit_hyperet.user_errors import ConfigError

VISION_DIR, TENSORS, CONFIG = "vision", "memvp.safetensors", "memvp.json"
FORMAT = "lit_hyperet.memvp/1"
_TOWER = "vision_tower."


def memvp_tensors(model: MemVPModel) -> dict[str, object]:
    """MemVP's own tensors by their ``MemVPModel`` names (everything named ``adapter``; HyperET merged or not)."""
    return {n: t for n, t in model.state_dict().items() if "adapter" in n and ".parametrizations." not in n}


def save_merged(model: MemVPModel, settings: MemVPSettings, llm_dir: str | Path, out: str | Path) -> Path:
    """Merge HyperET into ``model``'s tower (**in place**: train it no further) and write the exported dir ``out``.

    ``settings`` are the architecture the model was built with and ``llm_dir`` the LLaMA dir it was loaded from
    (recorded, not copied). Returns ``Path(out)``.
    """
    out = Path(out)
    merge_hyperet(model)
    tensors = memvp_tensors(model)
    tower = {
        n.removeprefix(_TOWER): t for n, t in model.state_dict().items() if n.startswith(_TOWER) and n not in tensors
    }
    out.mkdir(parents=True, exist_ok=True)
    model.vision_tower.save_pretrained(out / VISION_DIR, state_dict=tower)
    save_file({n: t.detach().contiguous() for n, t in tensors.items()}, out / TENSORS)
    config = {"format": FORMAT, "llm_path": str(Path(llm_dir).resolve()), "memvp": asdict(settings)}
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_merged(path: str | Path, llm_path: str | Path | None = None, dtype: str = "float32") -> MemVPModel:
    """The exported MemVP model at ``path`` in eval mode: the plain tower, the LLaMA (``llm_path``, default the dir
    recorded at export) and MemVP's tensors, nothing missing or left over. Gives the trained model's logits."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise ConfigError(f"{str(path)!r} is not an exported MemVP dir (no {CONFIG})")
    try:
        config = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path / CONFIG}: not valid JSON ({err}); export the checkpoint again") from err
    if config.get("format") != FORMAT:
        raise ConfigError(f"{path / CONFIG}: format {config.get('format')!r}, expected {FORMAT!r}")
    if not isinstance(config.get("memvp"), dict) or not (llm_path or config.get("llm_path")):
        raise ConfigError(f"{path / CONFIG}: expected `memvp` (the settings) and `llm_path` (or pass llm_path)")
    try:
        settings = parse_settings(config["memvp"])
    except ConfigError as err:
        raise ConfigError(f"{path / CONFIG}: {err}") from err
    llm_dir = require_config(llm_path or config["llm_path"], "LLM dir")
    vision = load_complete(CLIPVisionModel, path / VISION_DIR, "vision tower dir", dtype=torch_dtype(dtype))
    llm = load_complete(AutoModelForCausalLM, llm_dir, "LLM dir", dtype=torch_dtype(dtype))
    model = MemVPModel(llm, vision, **asdict(settings))
    tensors = load_file(path / TENSORS)
    expected = set(memvp_tensors(model))
    if set(tensors) != expected:
        raise ConfigError(
            f"{path / TENSORS}: missing {sorted(expected - set(tensors))[:10]}, "
            f"unexpected {sorted(set(tensors) - expected)[:10]}"
        )
    model.load_state_dict(tensors, strict=False)
    return model.eval()
