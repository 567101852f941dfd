"""MemVP's released checkpoints imported (official key names and layouts, refusals by name, only plain data and
``argparse.Namespace`` unpickled) and MemVP checkpoints exported (HyperET merged into a plain CLIP tower)."""

from __future__ import annotations

import argparse
import datetime
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.demo_cli import MEMVP_DEMO
from transformers import CLIPVisionModel

from lit_hyperet.__main__ import main
from lit_hyperet.cli import cli_main, configured
from lit_hyperet.hyperet import HyperETConfig
from lit_hyperet.lit_module import HyperETLitModule
from lit_hyperet.models.memvp import TinyMemVP, load_merged
from lit_hyperet.models.memvp.official import map_official

TOWER, OFFICIAL = "vision_tower.encoder.layers.", "backbone.visual.transformer.resblocks."


def official_name(name: str) -> str:
    """A ``MemVPModel`` trainable name as MemVP's / HyperET's code names it (written independently of the import)."""
    if name.startswith("adapter_"):
        return name
    layer, rest = name.removeprefix(TOWER).split(".", 1)
    if rest.startswith("mlp.adapter_mlp."):
        return f"{OFFICIAL}{layer}.{rest.removeprefix('mlp.')}"
    found = re.fullmatch(r"self_attn\.([qkv])_proj\.parametrizations\.weight\.0\.matrix\.diag", rest)
    assert found, name
    return f"{OFFICIAL}{layer}.hyperbolic_attn.adapter_attn_{found.group(1)}.scaling"


def demo_overrides(tiny_memvp_dir: Path, demo_data_dir: Path, out: Path) -> list[str]:
    return [
        f"model.init_args.model.init_args.path={tiny_memvp_dir}",
        f"data.init_args.data_dir={demo_data_dir}",
        f"trainer.default_root_dir={out}",
        f"checkpoint.dirpath={out / 'checkpoints'}",
        f"prediction_writer.output_path={out / 'predictions.json'}",
        "trainer.enable_progress_bar=false",
    ]


def logits(model: Any, tokenizer: Any) -> torch.Tensor:
    texts = ["Question: What colour is the circle?\nResponse:", "Question: Which word rhymes?\nResponse:The"]
    batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
    pixels = torch.linspace(-1, 1, 3 * 32 * 32).reshape(1, 3, 32, 32)  # the first sample's image
    with torch.no_grad():
        return model.eval()(**batch, pixel_values=pixels, image_mask=torch.tensor([True, False])).logits


@pytest.fixture(scope="module")
def released(tiny_memvp_dir: Path, demo_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo's MemVP (HyperET diagonal) with random trained-looking tensors, and the same tensors saved as MemVP's
    ``train.py`` saves them (``module.`` names, optimiser, scaler, ``args`` Namespace)."""
    root = tmp_path_factory.mktemp("released")
    overrides = demo_overrides(tiny_memvp_dir, demo_data_dir, root / "run")
    module = configured([MEMVP_DEMO], overrides).model
    module.configure_model()
    generator = torch.Generator().manual_seed(0)
    official = {}
    with torch.no_grad():
        for name, p in module.llava.named_parameters():
            if p.requires_grad:
                p.copy_(p + 0.1 * torch.randn(p.shape, generator=generator))
                official["module." + official_name(name)] = p.detach().clone()
    args = argparse.Namespace(emb=24, llm_model="7B", adapter_dim=12, prompt_format="QCM-A")
    file = root / "checkpoint-19.pth"
    saved = {"model": official, "optimizer": {"state": {}}, "epoch": 19, "scaler": {"scale": 2.0}, "args": args}
    torch.save(saved, file)
    reference = logits(module.llava, module.processor.tokenizer)
    return {"file": file, "state": official, "overrides": overrides, "root": root, "reference": reference}


def import_command(file: Path, overrides: list[str], out: Path) -> list[str]:
    return ["import-memvp-checkpoint", str(file), "--config", MEMVP_DEMO, "--override", *overrides, "--out", str(out)]


def test_import_gives_the_directly_loaded_logits_and_test_loads_it(
    released: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = released["root"] / "imported"
    assert main(import_command(released["file"], released["overrides"], out)) == 0
    ckpt = out / "imported.ckpt"
    assert f"--ckpt_path {ckpt}" in capsys.readouterr().out
    module = HyperETLitModule.load_from_checkpoint(ckpt)
    module.configure_model()
    torch.testing.assert_close(logits(module.llava, module.processor.tokenizer), released["reference"], rtol=0, atol=0)

    monkeypatch.chdir(released["root"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{released['root'] / 'mlflow.db'}")
    test_args = [f"--{o}" for o in released["overrides"]] + ["--trainer.limit_test_batches=1"]
    cli_main(["test", "--config", MEMVP_DEMO, *test_args, "--ckpt_path", str(ckpt)])


def test_export_writes_a_plain_tower_and_loads_back_with_equal_logits(released: dict[str, Any]) -> None:
    from lit_hyperet.export import export_checkpoint

    ckpt = released["root"] / "imported" / "imported.ckpt"
    if not ckpt.is_file():
        assert main(import_command(released["file"], released["overrides"], ckpt.parent)) == 0
    out = export_checkpoint(ckpt, released["root"] / "exported")
    tower, info = CLIPVisionModel.from_pretrained(out / "vision", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert not any("parametrizations" in n or "adapter" in n for n in tower.state_dict())
    model = load_merged(out)
    tokenizer = HyperETLitModule.load_from_checkpoint(ckpt).processor.tokenizer
    torch.testing.assert_close(logits(model, tokenizer), released["reference"], rtol=1e-5, atol=1e-6)

    from lit_hyperet.models.memvp.merge import CONFIG
    from lit_hyperet.user_errors import ConfigError

    config = json.loads((out / CONFIG).read_text())
    config["memvp"]["slot"] = 3  # a misspelt setting in an edited export
    (out / CONFIG).write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=re.escape(f"{out / CONFIG}: memvp: unknown settings ['slot']")):
        load_merged(out)
    (out / CONFIG).write_text("{")  # a truncated file
    with pytest.raises(ConfigError, match=re.escape(f"{out / CONFIG}: not valid JSON")):
        load_merged(out)


def test_unknown_and_missing_keys_are_listed_by_name_before_shapes(
    released: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    state = dict(released["state"])
    del state["module.adapter_emb2"]
    state["module.backbone.visual.transformer.resblocks.0.adapter_mlp.fc3.weight"] = torch.zeros(3)
    state["module.adapter_emb1"] = torch.zeros(1, 99, 7)  # a shape that would not fit either
    file = released["root"] / "broken.pth"
    torch.save(state, file)  # a bare state dict
    assert main(import_command(file, released["overrides"], released["root"] / "broken")) == 2
    err = capsys.readouterr().err
    assert "unknown keys (1" in err and "resblocks.0.adapter_mlp.fc3.weight" in err
    assert "missing keys (1" in err and "adapter_emb2" in err
    assert "shape" not in err and "Traceback" not in err

    state = dict(released["state"], **{"module.adapter_emb1": torch.zeros(1, 99, 7)})
    torch.save(state, file)
    assert main(import_command(file, released["overrides"], released["root"] / "broken")) == 2
    err = capsys.readouterr().err
    assert "module.adapter_emb1" not in err and "adapter_emb1: shape (1, 99, 7)" in err and "(1, 24, 128)" in err


def test_only_plain_data_and_a_namespace_are_unpickled(
    released: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    file = released["root"] / "foreign.pth"
    torch.save({"model": released["state"], "args": argparse.Namespace(), "when": datetime.date(2024, 1, 1)}, file)
    assert main(import_command(file, released["overrides"], released["root"] / "foreign")) == 2
    err = capsys.readouterr().err
    assert "refused: it names datetime.date" in err and "Traceback" not in err


@pytest.mark.parametrize(("variant", "size"), [("block_diagonal", 4), ("banded", 2)])
def test_hyperets_block_and_banded_layouts_map_to_the_same_matrices(
    tiny_memvp_dir: Path, variant: str, size: int
) -> None:
    """HyperET's ``weights``: (r, b, b) blocks of ``block_diag``, or the band's entries in row-major order."""
    config = HyperETConfig(variant=variant, block_size=size if variant == "block_diagonal" else None, band_width=size)
    model = TinyMemVP(str(tiny_memvp_dir), memvp={"slots": 24}).build(hyperet=config)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    generator = torch.Generator().manual_seed(1)
    state, dense = {}, {}
    for name, p in trainable.items():
        if ".parametrizations." not in name:
            state[official_name(name)] = p.detach()
            continue
        n = model.vision_tower.config.hidden_size
        layer, proj = re.search(r"layers\.(\d+)\.self_attn\.([qkv])_proj", name).groups()
        key = f"{OFFICIAL}{layer}.hyperbolic_attn.adapter_attn_{proj}.weights"
        if variant == "block_diagonal":
            blocks = torch.randn(n // size, size, size, generator=generator)
            state[key], dense[name] = blocks, torch.block_diag(*blocks)
        else:
            matrix = torch.randn(n, n, generator=generator)
            band = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs() <= size
            state[key], dense[name] = matrix[band], matrix * band  # boolean indexing reads row-major
    mapped = map_official(state, model, trainable)
    assert not (mapped.unknown or mapped.missing or mapped.mismatched)
    model.load_state_dict(mapped.tensors, strict=False)
    for name, expected in dense.items():
        matrix = model.get_submodule(name.split(".parametrizations.")[0]).parametrizations.weight[0].matrix
        torch.testing.assert_close(matrix.dense(), expected, rtol=0, atol=0)


def test_the_table3_sweep_builds_the_paper_rows_with_q_v_and_with_q_k_v(tiny_memvp_dir: Path) -> None:
    """``sweeps/memvp_table3.yaml`` on the 13B recipe: the paper's 11 HyperET rows under both readings of its
    Δparams, plus the baseline; two of its trials built on the tiny pair adapt exactly the projections they name."""
    from helpers.demo_cli import ROOT

    from lit_hyperet.hyperet import adapted_module_names, hyperet_parameters
    from lit_hyperet.sweep.spec import expand, load_sweep

    trials = {t.config_name: t for t in expand(load_sweep(ROOT / "sweeps" / "memvp_table3.yaml"))}
    assert len(trials) == 1 + 2 * 11
    tiny = [
        f"model.init_args.model.init_args.vision_path={tiny_memvp_dir / 'vision'}",
        f"model.init_args.model.init_args.llm_path={tiny_memvp_dir}",
        "model.init_args.model.init_args.dtype=float32",
    ]
    for name, projections, count in [
        ("projections=qv,structure=block4,space=euclidean", "qv", 2 * 2 * 64 * 4),
        ("projections=qkv,structure=banded2,space=hyperbolic", "qkv", 2 * 3 * (5 * 64 - 2 * 3)),
    ]:
        trial = trials[name]
        overrides = [f"{key}={value}" for key, value in trial.assignments if key.startswith("model.")]
        module = configured([str(ROOT / c) for c in trial.configs], [*overrides, *tiny]).model
        module.configure_model()
        assert module.source.memvp.slots == 400 and module.llava.adapter_emb1.shape[1] == 400
        names = adapted_module_names(module.llava)
        assert {n.rsplit(".", 1)[1][0] for n in names} == set(projections) and len(names) == 2 * len(projections)
        assert sum(p.numel() for _, p in hyperet_parameters(module.llava)) == count
