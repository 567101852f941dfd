"""Two gloo CPU processes training a tiny MemVP sharded with FSDP2, one rank's batches without any image.

``python tests/helpers/memvp_ranks.py TINY_MEMVP_DIR OUT_DIR``: each rank writes ``OUT_DIR/rank{r}.pt`` with its
losses and generated ids once its two steps and a generation are done. Without the zero image a text-only rank runs,
the ranks would call different collectives (the tower's layers are FSDP2 units) and hang.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh

from lit_hyperet.hyperet import HyperETConfig
from lit_hyperet.models.memvp import TinyMemVP
from lit_hyperet.sharding import shard_model


def run(rank: int, model_dir: str, out: str) -> None:
    store = dist.FileStore(str(Path(out) / "store"), 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(0)  # the same E1 on both ranks
    source = TinyMemVP(model_dir, memvp={"slots": 24})
    model = source.build(hyperet=HyperETConfig())
    shard_model(model, init_device_mesh("cpu", (2,), mesh_dim_names=("data_parallel",))["data_parallel"])
    tokenizer = source.load_processor().tokenizer
    batch = dict(tokenizer(["Question: What colour?\nResponse:The answer is A."] * 2, return_tensors="pt"))
    images = {"pixel_values": torch.rand(2, 3, 32, 32)} if rank == 0 else {}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(2):
        loss = model(**batch, **images, labels=batch["input_ids"], use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    model.eval()
    generated = model.generate(**batch, **images, max_new_tokens=2, do_sample=False)
    torch.save({"losses": losses, "generated": generated}, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1], sys.argv[2]), nprocs=2, join=True)
