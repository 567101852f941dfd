"""The warm-up + cosine schedule: step by step against the closed form, across a saved and loaded state, and as a
real ``fit`` applies it (read back from MLflow)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch

from lit_hyperet.cli import cli_main
from lit_hyperet.schedule import WarmupCosineLR

ROOT = Path(__file__).resolve().parents[1]
STEPS, WARMUP = 6, 3
PEAKS = (1e-2, 3e-4)  # two groups with their own lrs: the floor is min_lr_ratio × each group's lr


def expected_factor(step: int, warm: int = WARMUP, total: int = STEPS, min_lr_ratio: float = 0.0) -> float:
    """Linear warm-up over ``warm`` steps from ``1 / warm`` to the peak, then half a cosine to ``min_lr_ratio`` at
    ``total``, held there."""
    if step < warm:
        return (step + 1) / warm
    if total <= warm:
        return 1.0
    progress = min(1.0, (step - warm) / (total - warm))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def optimizer(peaks: tuple[float, ...] = PEAKS) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in peaks]
    return torch.optim.AdamW(groups)


def lrs(opt: torch.optim.Optimizer) -> list[float]:
    return [group["lr"] for group in opt.param_groups]


def run(opt: torch.optim.Optimizer, scheduler: WarmupCosineLR, steps: int) -> list[list[float]]:
    """The lrs each of ``steps`` optimiser steps trains with."""
    applied = []
    for _ in range(steps):
        applied.append(lrs(opt))
        opt.step()
        scheduler.step()
    return applied


@pytest.mark.parametrize(
    ("warmup", "total", "min_lr_ratio", "warm"),
    [(0.1, 200, 0.0, 20), (0.25, 40, 0.1, 10), (5, 25, 0.05, 5), (0.0, 12, 0.2, 0), (1, 9, 0.0, 1)],
)
def test_lr_follows_the_closed_form_step_by_step(warmup: float, total: int, min_lr_ratio: float, warm: int) -> None:
    opt = optimizer()
    scheduler = WarmupCosineLR(opt, warmup=warmup, total_steps=total, min_lr_ratio=min_lr_ratio)
    assert scheduler.warmup_steps() == warm
    applied = run(opt, scheduler, total + 5)  # and past the end: the floor holds
    for step, values in enumerate(applied):
        for value, peak in zip(values, PEAKS, strict=True):
            assert value == pytest.approx(peak * expected_factor(step, warm, total, min_lr_ratio), rel=1e-12), step
    assert (total - warm) % 2 == 0
    middle = warm + (total - warm) // 2
    for value, peak in zip(applied[0], PEAKS, strict=True):  # step 0 trains at the first warm-up value
        assert value == pytest.approx(peak / max(warm, 1), rel=1e-12)
    if warm:
        for value, peak in zip(applied[warm - 1], PEAKS, strict=True):  # end of warm-up: the peak
            assert value == pytest.approx(peak, rel=1e-12)
    for value, peak in zip(applied[warm], PEAKS, strict=True):  # start of the cosine: the peak
        assert value == pytest.approx(peak, rel=1e-12)
    for value, peak in zip(applied[middle], PEAKS, strict=True):  # half-way down the cosine
        assert value == pytest.approx(peak * (1 + min_lr_ratio) / 2, rel=1e-12)
    for step in (total, total + 4):  # end of the cosine, and after it
        for value, peak in zip(applied[step], PEAKS, strict=True):
            assert value == pytest.approx(peak * min_lr_ratio, rel=1e-12, abs=1e-18)


def test_warmup_longer_than_the_run_ends_at_the_peak() -> None:
    opt = optimizer()
    scheduler = WarmupCosineLR(opt, warmup=4, total_steps=3)
    applied = run(opt, scheduler, 7)
    assert [values[0] / PEAKS[0] for values in applied] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0])


def test_total_steps_filled_in_later_starts_at_the_first_warmup_value() -> None:
    opt = optimizer()
    scheduler = WarmupCosineLR(opt, warmup=0.5, total_steps=-1, min_lr_ratio=0.1)
    assert lrs(opt) == list(PEAKS)  # run length unknown: no warm-up yet
    scheduler.set_total_steps(STEPS)
    applied = run(opt, scheduler, STEPS + 1)
    expected = [[peak * expected_factor(step, 3, STEPS, 0.1) for peak in PEAKS] for step in range(STEPS + 1)]
    assert applied == [pytest.approx(values, rel=1e-12) for values in expected]


@pytest.mark.parametrize("stop", [1, 2, 4, 7])  # in the warm-up, at its end, in the cosine, at the floor
@pytest.mark.parametrize("restore_optimizer", [True, False])
def test_loaded_state_continues_the_same_curve(stop: int, restore_optimizer: bool) -> None:
    """As Lightning resumes: a fresh optimiser and schedule (its run length estimated again, here differently), the
    optimiser's state, then the schedule's state (through ``torch.save`` / ``torch.load(weights_only=True)``)."""
    total, warm = 6, 3
    opt = optimizer()
    scheduler = WarmupCosineLR(opt, warmup=0.5, total_steps=-1, min_lr_ratio=0.1)
    scheduler.set_total_steps(total)
    uninterrupted = run(opt, scheduler, total + 2)

    opt = optimizer()
    scheduler = WarmupCosineLR(opt, warmup=0.5, total_steps=-1, min_lr_ratio=0.1)
    scheduler.set_total_steps(total)
    before = run(opt, scheduler, stop)
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    opt = optimizer()
    resumed = WarmupCosineLR(opt, warmup=0.5, total_steps=-1, min_lr_ratio=0.1)
    resumed.set_total_steps(2 * total)  # the saved run length wins
    if restore_optimizer:
        opt.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    assert (resumed.total_steps, resumed.last_epoch) == (total, stop)
    after = run(opt, resumed, total + 2 - stop)
    assert before + after == uninterrupted  # bit for bit
    expected = [[peak * expected_factor(step, warm, total, 0.1) for peak in PEAKS] for step in range(total + 2)]
    assert uninterrupted == [pytest.approx(values, rel=1e-12) for values in expected]


def test_fit_runs_the_schedule_from_the_first_warmup_value(
    tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    peaks = {"hyperet": 1e-2, "projector": 3e-3, "lora": 2e-3}
    min_lr_ratio = 0.1
    cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "demo.yaml"),
            "--model.init_args.model.init_args.path",
            str(tiny_model_dir),
            "--data.init_args.data_dir",
            str(demo_data_dir),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--checkpoint.dirpath",
            str(tmp_path / "ckpt"),
            "--trainer.max_steps",
            str(STEPS),
            "--trainer.limit_val_batches",
            "0",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            *[arg for name, lr in peaks.items() for arg in (f"--model.init_args.{name}_lr", str(lr))],
            "--model.init_args.lr_scheduler.init_args.warmup",
            str(WARMUP / STEPS),  # a fraction of the run, as the configs give it: known only once fit starts
            "--model.init_args.lr_scheduler.init_args.min_lr_ratio",
            str(min_lr_ratio),
        ]
    )
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("lit_hyperet_demo")
    (run_info,) = client.search_runs([experiment.experiment_id])
    groups = sorted(k.removeprefix("lr-AdamW/") for k in run_info.data.metrics if k.startswith("lr-AdamW/"))
    assert "hyperet_no_decay" in groups and "projector" in groups  # M of diagonal HyperET is 1-D
    for group in groups:
        peak = peaks[group.removesuffix("_no_decay")]
        history = client.get_metric_history(run_info.info.run_id, f"lr-AdamW/{group}")
        logged = {m.step: m.value for m in history}
        assert sorted(logged) == list(range(STEPS)), group
        for step, value in logged.items():
            expected = peak * expected_factor(step, min_lr_ratio=min_lr_ratio)
            assert value == pytest.approx(expected, rel=1e-6), (group, step)
