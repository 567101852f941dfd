"""A DataLoader that resumes inside an epoch: Lightning saves its ``state_dict`` in checkpoints and hands it back on
``fit --ckpt_path``, and the resumed run sees the rest of the epoch in the uninterrupted run's order.

torch's ``DataLoader`` keeps no position, and the shuffle order of a ``RandomSampler`` comes from the global RNG at the
moment the epoch's iterator is made; torchdata's ``StatefulDataLoader`` would be a new dependency for this one
feature. So this subclass records, per epoch, the RNG states at the moment its iterator was made and how many batches
it has handed out; on resume it makes the epoch's iterator again from those states (the same permutation, the same
worker seeds), skips the batches already trained on by their indices (no sample is loaded for them), and puts the RNG
back where it was when the checkpoint was written. Under DDP / FSDP, Lightning's ``DistributedSampler`` orders an
epoch by ``(seed, epoch)``; the skip works the same. The RNG states are every rank's own (gathered when the checkpoint
is written, which every rank does together): the ranks' global RNGs part ways as soon as a step draws from them in
amounts that depend on the rank's batch (CPU dropout over captions of another length), and each rank resumes from its
own.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader


def rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), Python and NumPy RNG states as tensors and plain data (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class _SkipFirst:
    """A batch sampler without its first ``skip`` batches of indices."""

    def __init__(self, batches: Iterable[list[int]], skip: int) -> None:
        self.batches, self.skip = batches, skip

    def __iter__(self) -> Iterator[list[int]]:
        iterator = iter(self.batches)
        for _ in range(self.skip):
            next(iterator, None)
        yield from iterator

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.skip)  # type: ignore[arg-type]


class ResumableDataLoader(DataLoader):
    """``DataLoader`` with ``state_dict`` / ``load_state_dict`` for the position inside an epoch (see the module).

    A ``RandomSampler`` without a generator draws its permutation from the global RNG at the epoch's first batch,
    and the iterator draws the workers' base seed when it is made; both moments' RNG states are recorded, and on
    resume both draws happen again under them. Exact when loading a sample draws nothing from the global RNG (true for
    this suite's datasets: images are processed deterministically).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handed_out = 0
        self._made_rng: dict[str, Any] | None = None
        self._first_rng: dict[str, Any] | None = None
        self._resume: dict[str, Any] | None = None
        self._skip_now = 0

    @property
    def _index_sampler(self) -> Any:
        sampler = super()._index_sampler
        return _SkipFirst(sampler, self._skip_now) if self._skip_now else sampler

    def __len__(self) -> int:
        skip, self._skip_now = self._skip_now, 0  # the epoch's full length, also while an iterator is being made
        try:
            return super().__len__()
        finally:
            self._skip_now = skip

    def __iter__(self) -> Iterator[Any]:
        resume, self._resume = self._resume, None
        mid_epoch = resume is not None and 0 < resume["batches"] < len(self)
        if mid_epoch:
            set_rng_states(resume["made_rng"])  # make this epoch's iterator as the interrupted run made it
        elif resume is not None:
            set_rng_states(resume["rng"])  # the checkpoint ended an epoch: the next one starts from its RNG
        self._made_rng, self._first_rng = rng_states(), None
        self._skip_now = resume["batches"] if mid_epoch else 0
        try:
            iterator = super().__iter__()
        finally:
            self._skip_now = 0
        self._handed_out = resume["batches"] if mid_epoch else 0
        if mid_epoch:
            set_rng_states(resume["rng"])
        return self._batches(iterator, resume if mid_epoch else None)

    def _batches(self, iterator: Iterator[Any], resume: dict[str, Any] | None) -> Iterator[Any]:
        # Runs from the epoch's first fetch: that is when the sampler draws its permutation.
        if resume is not None:
            set_rng_states(resume["first_rng"])
        self._first_rng = rng_states()
        first = next(iterator, None)
        if resume is not None:
            set_rng_states(resume["rng"])  # continue from where the checkpoint was written
        if first is None:
            return
        self._handed_out += 1
        yield first
        for batch in iterator:
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Batches handed out in the current epoch and, per rank (``ranks[r]``), the RNG states of the epoch's two draws
        and the RNG now. Several processes: a collective, called on every rank alike (as checkpoints are written)."""
        now = rng_states()
        mine = {"made_rng": self._made_rng or now, "first_rng": self._first_rng or now, "rng": now}
        return {"batches": self._handed_out, "ranks": _gather_per_rank(mine)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume at the saved position when the next epoch's iterator is made, from this rank's RNG states (rank 0's
        when the checkpoint has fewer ranks)."""
        ranks = state_dict.get("ranks") or [state_dict]  # one set of states: a checkpoint of rank 0's only
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self._resume = {"batches": state_dict["batches"], **ranks[rank if rank < len(ranks) else 0]}


def _gather_per_rank(value: Any) -> list[Any]:
    """``[value of rank 0, value of rank 1, …]`` on every rank (``[value]`` in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
