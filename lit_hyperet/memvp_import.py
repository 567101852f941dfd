"""``python -m lit_hyperet import-memvp-checkpoint CKPT --config CONFIG.yaml --out DIR``: MemVP's (or HyperET's)
released adapter checkpoint as a checkpoint of the suite's MemVP model that ``test`` / ``predict`` load
(``--ckpt_path DIR/imported.ckpt`` with the same configs).

The file is read with ``torch.load(weights_only=True)``, ``argparse.Namespace`` (the ``args`` MemVP's ``train.py``
stores) being the only class allowed besides tensors and plain data. It holds ``{"model": state dict, "optimizer",
"epoch", "scaler", "args"}`` or a bare state dict; the names are mapped by
:mod:`lit_hyperet.models.memvp.official` onto the model the configs build (its frozen weights are loaded once, to
know it). Unknown and missing keys are listed by name before any shape is compared.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from lit_hyperet.checkpoints import CheckpointError, load_plain
from lit_hyperet.class_paths import class_path
from lit_hyperet.user_errors import ConfigError

#: The file ``--out`` receives.
IMPORTED_NAME = "imported.ckpt"
_SHOWN = 20


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a MemVP training file (its ``model`` entry) or of a bare state dict, read without
    unpickling anything but tensors, plain data and ``argparse.Namespace``."""
    content = load_plain(path, allowed=(argparse.Namespace,))
    state = content.get("model") if isinstance(content, dict) and isinstance(content.get("model"), dict) else content
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise CheckpointError(
            f"{path}: neither MemVP's training file (a dict with a 'model' state dict) nor a state dict of tensors"
        )
    return state


def _names(keys: list[str]) -> str:
    more = f" … and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _hints(unknown: list[str], missing: list[str]) -> list[str]:
    hints = []
    if any(".hyperbolic_attn." in k for k in unknown) and not any(".parametrizations." in k for k in missing):
        hints.append("the file holds HyperET matrices: configure model.init_args.hyperet as they were trained")
    if any(".parametrizations." in k for k in missing) and not any(".hyperbolic_attn." in k for k in unknown):
        hints.append("the file holds no HyperET matrices for these: set model.init_args.hyperet: null for plain MemVP")
    if any(k.startswith("adapter_emb") for k in missing):
        hints.append("MemVP's memory (adapter_emb1/2) is missing: is this a MemVP adapter file?")
    return hints


def import_checkpoint(ckpt: str | Path, configs: list[str], out: str | Path, overrides: list[str] = ()) -> Path:
    """Write ``out/imported.ckpt``: ``ckpt``'s tensors on the MemVP model that ``configs`` (+ ``overrides``)
    build, with that model's hyper-parameters, so ``test`` / ``predict`` with the same configs load it. Returns the
    file's path; a file or config that does not fit is a ``CheckpointError`` / ``ConfigError`` naming the keys."""
    import lightning

    from lit_hyperet.cli import configured
    from lit_hyperet.models.memvp.official import map_official
    from lit_hyperet.models.memvp.sources import MemVPSource

    state = read_official(ckpt)  # before the (large) model is loaded: a foreign file fails fast
    module = configured(list(configs), list(overrides)).model
    if not isinstance(getattr(module, "source", None), MemVPSource):
        raise ConfigError(f"{', '.join(configs)}: the config does not build a MemVP model (model.init_args.model)")
    module.configure_model()
    prefix = "llava."
    trainable = {n.removeprefix(prefix): p for n, p in module.named_parameters() if p.requires_grad}
    mapped = map_official(state, module.llava, trainable)
    if mapped.unknown or mapped.missing:
        lines = [f"{ckpt}: does not fit the MemVP model the config builds"]
        if mapped.unknown:
            lines.append(f"  unknown keys ({len(mapped.unknown)}, no home in that model): {_names(mapped.unknown)}")
        if mapped.missing:
            lines.append(
                f"  missing keys ({len(mapped.missing)}, trainable in that model, not in the file): "
                f"{_names(mapped.missing)}"
            )
        lines += [f"  hint: {hint}" for hint in _hints(mapped.unknown, mapped.missing)]
        raise CheckpointError("\n".join(lines))
    if mapped.mismatched:
        lines = [f"{ckpt}: tensors whose shape does not fit the configured model (slots, widths, HyperET variant?)"]
        lines += [f"  {key}: {what}" for key, what in mapped.mismatched[:_SHOWN]]
        raise CheckpointError("\n".join(lines))
    for key in mapped.dropped:
        print(f"note: {key} is not used by MemVP's forward and the configured model does not keep it: dropped")
    checkpoint: dict[str, Any] = {
        "state_dict": {prefix + k: v.contiguous() for k, v in mapped.tensors.items()},
        "hyper_parameters": {**dict(module.hparams), "_class_path": class_path(type(module))},
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    module.load_state_dict(checkpoint["state_dict"])  # the suite's own check: exactly the trainable set
    path = Path(out) / IMPORTED_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def main(argv: list[str]) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m lit_hyperet import-memvp-checkpoint", description=__doc__)
    add = parser.add_argument
    add("ckpt", help="MemVP's or HyperET's released file (e.g. checkpoint-19.pth)")
    add("--config", action="append", required=True, metavar="FILE", help="the config(s) that build the model, in "
        "order, e.g. configs/scienceqa_memvp/base.yaml (+ configs/scienceqa_memvp/13b.yaml for 13B)")  # fmt: skip
    add("--override", action="append", nargs="+", default=[], metavar="KEY=VALUE", help="dotted key=value on top "
        "of the configs, e.g. model.init_args.hyperet=null (plain MemVP)")  # fmt: skip
    add("--out", required=True, help=f"output dir (receives {IMPORTED_NAME})")
    args = parser.parse_args(argv)
    overrides = [item for group in args.override for item in group]
    path = import_checkpoint(args.ckpt, args.config, args.out, overrides)
    same = [*(f"--config {c}" for c in args.config), *(f"--{o}" for o in overrides)]
    print(f"wrote {path}\nevaluate it with: python -m lit_hyperet test {' '.join(same)} --ckpt_path {path}")
    return 0
