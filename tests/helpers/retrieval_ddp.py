"""A worker for the 2-process gloo test of ImageTextRecall: each rank adds its own updates, then compute()."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch
import torch.distributed as dist

# one update = (image_embeds [B, Q, D], text_embeds [T, D], text_image [T]); per case, per rank: a list of updates
Update = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def recall_rank(rank: int, world_size: int, out_dir: str, cases: dict[str, list[list[Update]]]) -> None:
    """Join a gloo group through a file store; per case, update with ``cases[name][rank]``, write ``compute()`` and
    the number of local updates left after it (compute() restores each rank's own state)."""
    # one thread: the forked child must not enter the OpenMP pool the parent already started (it hangs)
    torch.set_num_threads(1)
    store = f"file://{out_dir}/store"
    timeout = datetime.timedelta(seconds=60)  # fail instead of hanging if the other rank died
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world_size, timeout=timeout)
    try:
        from lit_hyperet.tasks.captions.retrieval import ImageTextRecall

        payload = {}
        for name, shards in cases.items():
            metric = ImageTextRecall(chunk_size=3)
            for update in shards[rank]:
                metric.update(*update)
            result = {key: float(value) for key, value in metric.compute().items()}
            payload[name] = {"compute": result, "local_updates": sum(t.numel() > 0 for t in metric.sizes)}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(payload))
    finally:
        dist.destroy_process_group()
