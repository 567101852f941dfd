"""A Lightning callback for :mod:`benchmarks.strategy_step`: per-rank wall time of every training step and peak RSS."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class StepTimer(Callback):
    """Writes ``rank<N>.json`` = ``{"step_s": [seconds per step], "max_rss_mib": peak RSS}`` into ``out_dir``.

    A step is timed from ``on_train_batch_start`` to ``on_train_batch_end``: forward, backward, gradient reduction
    and the optimiser step (both hooks run on the host after the previous work has finished on CPU).
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.step_s: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.step_s.append(time.perf_counter() - self._start)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        payload = {"step_s": self.step_s, "max_rss_mib": peak_mib}
        (Path(self.out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(payload))
