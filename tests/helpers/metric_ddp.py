"""A worker for the 2-process gloo test of ScienceQAAccuracy: each rank scores its own samples, then compute()."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import torch.distributed as dist


def score_rank(rank: int, world_size: int, out_dir: str, shards: list[tuple[list[str], list[dict[str, Any]]]]) -> None:
    """Join a gloo group through a file store, update with ``shards[rank]``, write ``compute()`` and local counts."""
    store = f"file://{out_dir}/store"
    timeout = datetime.timedelta(seconds=60)  # fail instead of hanging if the other rank died
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world_size, timeout=timeout)
    try:
        from lit_hyperet.tasks.scienceqa.metric import ScienceQAAccuracy

        metric = ScienceQAAccuracy()
        texts, meta = shards[rank]
        metric.update(texts, meta)
        result = {key: float(value) for key, value in metric.compute().items()}
        payload = {"compute": result, "local_avg": metric.counts()["Avg"]}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(payload))
    finally:
        dist.destroy_process_group()
