"""The alignment fit killed (SIGKILL) after a checkpoint in the middle of a shuffled epoch and resumed with
``--ckpt_path`` ends where the uninterrupted fit ends, with Random Text Pruning, Random Query Selection and the
Q-Former's dropout all drawing: same loss at every step and same final trainable tensors, bit for bit on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.resume import ROOT, assert_resume_matches, fit_command, run_fit

IMAGES, BATCH = 24, 8  # 3 steps per epoch: the run crosses into a second epoch
STEPS = 5
KILL_AFTER = 2  # mid-epoch


def alignment_fit(model_dir: Path, data_dir: Path, out: Path, *extra: str, killed: bool = False) -> None:
    """The alignment demo on the tiny BLIP-2, RTP (``drop_words``, p = 0.5) and RQS on, checkpoint every
    ``KILL_AFTER`` steps; each step's loss and the final trainable tensors in ``out/ranks``."""
    from lit_hyperet.tasks.captions.demo import FILE_NAME

    command = fit_command(ROOT / "configs" / "alignment_demo.yaml", out, STEPS, KILL_AFTER)
    command += ["--model.init_args.model.init_args.path", str(model_dir), "--model.init_args.rtp_prob", "0.5"]
    command += ["--model.init_args.rtp_mode", "drop_words", "--model.init_args.query_aggregation", "rqs"]
    command += ["--data.init_args.annotations", str(data_dir / FILE_NAME), "--data.init_args.image_root"]
    command += [str(data_dir), "--data.init_args.batch_size", str(BATCH), "--data.init_args.max_samples"]
    command += [f'{{"train": {IMAGES}, "val": 8, "test": 8}}', "--trainer.logger.class_path"]
    command += ["lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir", str(out / "logs"), *extra]
    run_fit(command, out, killed)


@pytest.fixture(scope="module")
def runs(tiny_blip2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from lit_hyperet.tasks.captions.demo import make_caption_demo_data

    base = tmp_path_factory.mktemp("alignment_resume")
    data = make_caption_demo_data(base / "data", num_images=IMAGES + 16, seed=0)
    alignment_fit(tiny_blip2_dir, data, base / "uninterrupted")
    kill = ["--trainer.callbacks+=helpers.rank_state.KillAtStep", f"--trainer.callbacks.step={KILL_AFTER}"]
    alignment_fit(tiny_blip2_dir, data, base / "killed", *kill, killed=True)
    last = base / "killed" / "ckpt" / "last.ckpt"
    alignment_fit(tiny_blip2_dir, data, base / "resumed", "--ckpt_path", str(last))
    return {name: base / name for name in ("uninterrupted", "killed", "resumed")}


def test_killed_and_resumed_alignment_fit_ends_where_the_uninterrupted_fit_ends(runs: dict[str, Path]) -> None:
    assert_resume_matches(runs, KILL_AFTER, STEPS)
