"""Training order for caption data: every image once per epoch, shuffled, with one of its captions drawn uniformly.

BLIP-2 trains on one caption per image per step; an epoch here is one pass over the images (not over the
image–caption pairs), and each epoch draws every image's caption afresh. The draws happen in the sampler, in the main
process and from the global torch RNG at the epoch's first batch, exactly when ``RandomSampler`` draws its permutation:
so the order and the captions follow ``seed_everything``, do not depend on the number of DataLoader workers, and
:class:`~lit_hyperet.data.resumable.ResumableDataLoader` replays them when a fit resumes inside an epoch. Loading a
sample draws nothing.

Under DDP / FSDP, Lightning wraps this sampler in its ``DistributedSamplerWrapper``: each rank draws the epoch's list
and takes its share of it, so the ranks split the images between them as long as their global CPU RNGs agree (the
same ``seed_everything`` seed and the same draws since: the alignment module's training steps, RTP, RQS and CPU
dropout included, draw from per-step seeded states, not from the global RNG).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class OneCaptionPerImage(Sampler[tuple[int, int]]):
    """Yields ``(image index, caption index)`` for every image once per epoch, in a random order.

    Args:
        counts: the number of captions of each image, in dataset order.
    """

    def __init__(self, counts: Sequence[int]) -> None:
        if any(count < 1 for count in counts):
            raise ValueError("every image needs at least one caption")
        self.counts = torch.tensor(list(counts), dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.counts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seed = int(torch.empty((), dtype=torch.int64).random_().item())  # as RandomSampler draws its seed
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.counts), generator=generator).tolist()
        uniform = torch.rand(len(self.counts), generator=generator, dtype=torch.float64)
        picks = (uniform * self.counts).long().clamp_max(self.counts.long() - 1).tolist()
        for index in order:
            yield index, picks[index]
