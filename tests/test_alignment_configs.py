"""The alignment configs for real weights build with their placeholders swapped for tiny local dirs (LAVIS' recipe
reaches the module, the optimiser, the schedule, the data and the strategy), and the demo ablation sweep is the
48-trial grid the README describes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.strategies import DDPStrategy

from lit_hyperet.__main__ import main
from lit_hyperet.cli import cli_main
from lit_hyperet.models.blip2 import make_tiny_blip2_itm
from lit_hyperet.strategies import FSDP2Strategy
from lit_hyperet.tasks.captions.demo import FILE_NAME, make_caption_demo_data

ROOT = Path(__file__).resolve().parents[1]
ALIGNMENT = ROOT / "configs" / "alignment"
PLACEHOLDERS = {
    "/path/to/blip2-itm-vit-g": "model",
    "/path/to/coco/dataset_coco.json": f"data/{FILE_NAME}",
    "/path/to/coco/images": "data",
    "/path/to/flickr30k/dataset_flickr30k.json": f"data/{FILE_NAME}",
    "/path/to/flickr30k/flickr30k-images": "data",
}
CPU = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true"]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("alignment_configs")
    make_tiny_blip2_itm(root / "model")
    make_caption_demo_data(root / "data", num_images=64)
    return root


def swapped(local: Path, *names: str) -> list[str]:
    """``--config`` arguments for copies of the configs with every placeholder path replaced by a tiny local one."""
    args = []
    for name in names:
        path = ALIGNMENT / name if (ALIGNMENT / name).is_file() else ROOT / "configs" / name
        text = path.read_text()
        for placeholder, target in PLACEHOLDERS.items():
            text = text.replace(placeholder, str(local / target))
        values = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        assert not any("/path/to" in line for line in values), f"{name} has a placeholder the test does not know"
        copy = local / f"{path.parent.name}_{path.name}"
        copy.write_text(text)
        args += ["--config", str(copy)]
    return args


@pytest.mark.parametrize("data", ["coco_karpathy.yaml", "flickr30k.yaml"])
def test_stage1_configs_build_with_lavis_recipe(local: Path, data: str) -> None:
    cli = cli_main([*swapped(local, "blip2_stage1.yaml", data), *CPU], run=False)
    hp = cli.model.hparams
    assert (hp.lr, hp.weight_decay, hp.image_size) == (1e-4, 0.05, None)
    assert cli.datamodule.batch_size == 100 and cli.trainer.max_epochs == 10
    schedule = cli.config.model.init_args.lr_scheduler
    assert schedule.class_path == "lit_hyperet.schedule.WarmupCosineLR"
    assert schedule.init_args.warmup == 5000 and schedule.init_args.min_lr_ratio == 0.1  # LAVIS: 1e-5 of 1e-4
    cli.datamodule.setup("fit")  # the swapped paths are read: Karpathy layout, every image present
    assert len(cli.datamodule.datasets["train"]) > 0


def test_retrieval_finetune_at_364_px_and_ddp_combine(local: Path) -> None:
    names = ("blip2_stage1.yaml", "coco_karpathy.yaml", "retrieval_finetune.yaml", "strategy/ddp.yaml")
    cli = cli_main([*swapped(local, *names), *CPU, "--trainer.devices", "2"], run=False)
    hp = cli.model.hparams
    assert (hp.lr, hp.image_size, cli.datamodule.batch_size, cli.trainer.max_epochs) == (1e-5, 364, 14, 5)
    assert isinstance(cli.trainer.strategy, DDPStrategy)
    size = cli.model.processor.image_processor.size
    assert (size["height"], size["width"]) == (364, 364)
    cli.datamodule.setup("validate")
    pixels = cli.datamodule.datasets["val"][0]["pixel_values"]
    assert tuple(pixels.shape) == (3, 364, 364)
    cli.model.configure_model()
    with torch.no_grad():  # the 32 px tiny tower interpolates its position embeddings to 364 px
        assert tuple(cli.model.image_embeddings(pixels[None]).shape) == (1, 8, 32)


def test_stage1_and_fsdp_combine(local: Path) -> None:
    """The stage-1 config with ``strategy/fsdp.yaml`` (bf16-mixed, activation checkpointing) builds: the alignment
    module takes FSDP2Strategy and the strategy file's ``gradient_checkpointing``."""
    names = ("blip2_stage1.yaml", "coco_karpathy.yaml", "strategy/fsdp.yaml")
    cli = cli_main([*swapped(local, *names), "--trainer.accelerator", "cpu", "--trainer.devices", "2"], run=False)
    assert isinstance(cli.trainer.strategy, FSDP2Strategy)
    assert cli.model.hparams.gradient_checkpointing and str(cli.trainer.precision) == "bf16-mixed"
    cli.model.configure_model()  # no device mesh outside a launched run: the unsharded model
    assert cli.model.blip2.is_activation_checkpointing


def test_alignment_demo_sweep_is_the_48_trial_grid(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = yaml.safe_load((ROOT / "sweeps" / "alignment_demo.yaml").read_text())
    assert spec["axes"] == {
        "model.init_args.space": ["euclidean", "poincare_cosine", "poincare_distance", "lorentz"],
        "model.init_args.query_aggregation": ["max", "rqs"],
        "model.init_args.rtp_prob": [0.0, 0.5],
    }
    assert spec["seeds"] == [0, 1, 2] and spec["metric"] == "test/r_mean" and spec["test"] is True
    monkeypatch.chdir(ROOT)
    assert main(["sweep", "sweeps/alignment_demo.yaml", "--dry-run"]) == 0
    lines = [
        line for line in capsys.readouterr().out.splitlines() if " fit --config configs/alignment_demo.yaml" in line
    ]
    assert len(lines) == 48 and all(" test --config " in line for line in lines)
    assert len({line.split("--trainer.default_root_dir ")[1].split()[0] for line in lines}) == 48
