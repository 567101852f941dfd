"""A worker for the 2-process gloo test of ``ResumableDataLoader``: each rank checkpoints inside an epoch after its
global RNG has gone its own way, then resumes from the checkpoint's state in a fresh loader."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch
import torch.distributed as dist


def resume_rank(rank: int, world_size: int, out_dir: str) -> None:
    """Join a gloo group through a file store; write whether the resumed rank sees the rest of the epoch and then
    draws what the uninterrupted rank draws."""
    store = f"file://{out_dir}/store"
    timeout = datetime.timedelta(seconds=60)  # fail instead of hanging if the other rank died
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world_size, timeout=timeout)
    try:
        from lit_hyperet.data.resumable import ResumableDataLoader

        torch.manual_seed(0)
        loader = ResumableDataLoader(list(range(8)), batch_size=2, shuffle=True)
        iterator = iter(loader)
        next(iterator)
        torch.rand(rank + 1)  # the ranks' draws part ways (dropout over batches of other shapes)
        written = [loader.state_dict()]  # a collective, as when a checkpoint is written
        dist.broadcast_object_list(written, src=0)  # the checkpoint file holds rank 0's, which every rank reads
        state = written[0]
        rest, after = [b.tolist() for b in iterator], torch.rand(3)
        torch.manual_seed(99)  # a new process
        resumed = ResumableDataLoader(list(range(8)), batch_size=2, shuffle=True)
        resumed.load_state_dict(state)
        payload = {"same_rest": [b.tolist() for b in resumed] == rest, "same_draws": torch.equal(torch.rand(3), after)}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(payload))
    finally:
        dist.destroy_process_group()
