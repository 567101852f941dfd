"""Image–text retrieval recall (torchmetrics): R@K both ways, from the similarity matrix in chunks of images.

Protocol (LAVIS ``lavis/tasks/retrieval.py``, the one COCO and Flickr30k retrieval numbers use): every image has its
captions (usually 5) and every caption exactly one image. Image→text: the rank of an image is the best rank, in its
row of the similarity matrix, among its own captions; an image without captions is a miss. Text→image: the rank of a
text is the rank of its one image in its column. ``R@K`` = percentage of queries ranked within the top K; ``r_mean``
= the mean of all the ``R@K`` both ways.

Ties count against the query: rank = 1 + the number of *wrong* items scoring **at least** as high as the best right
one. A model whose embeddings collapsed (every text, or every image, the same vector, e.g. a tokenizer that maps
every word to ``[UNK]``) then scores near 0, not 100 %; with random real-valued embeddings ties do not occur and the
rule changes nothing. A ``NaN`` similarity counts as ``-inf`` (the worst score). Corollary: an evaluation set must not
hold the same image twice (a distributed sampler that pads by repeating samples makes the copies tie).

Never holding the ``[N_images, N_texts]`` matrix: ``compute()`` scores ``chunk_size`` images against all texts at a
time. Image→text ranks are exact per chunk (an image's whole row is in it). For text→image, a text's own score is
only known once its image's chunk is scored, so the chunks leave per text the ``max(ks) + 1`` highest scores of any
image so far (a running top-k); at the end a text's rank is the number of those at least as high as its own score.
That is the exact rank up to ``max(ks)`` and only "beyond ``max(ks)``" above it, which is all ``R@K`` needs. Scores
are computed in float32 (or float64 when the scorer returns it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

Scorer = Callable[[Tensor, Tensor], Tensor]
STATES = ("image_embeds", "text_embeds", "text_image", "sizes")
SIZES = 5  # per update: images B, texts T, queries Q, image width D, text width E
DEFAULT_CHUNK_SIZE = 256


def max_query_cosine(image_embeds: Tensor, text_embeds: Tensor) -> Tensor:
    """BLIP-2's image–text similarity: cosine of each image query with each text, the max over the queries.

    ``image_embeds`` [n, Q, D], ``text_embeds`` [T, D] → [n, T]. One [n, D] × [D, T] product per query folded into a
    running max, so the working memory is two [n, T] matrices, not [n, Q, T].
    """
    images = F.normalize(image_embeds, dim=-1)
    texts_t = F.normalize(text_embeds, dim=-1).T
    out = images[:, 0] @ texts_t
    scratch = torch.empty_like(out)
    for q in range(1, images.shape[1]):
        torch.maximum(out, torch.mm(images[:, q], texts_t, out=scratch), out=out)
    return out


class ImageTextRecall(Metric):
    """Image→text and text→image recall at K (%), synchronised across processes.

    ``update(image_embeds [B, Q, D], text_embeds [T, E], text_image [T])``: each update brings B images and all their
    T captions; ``text_image[t]`` is the index (0..B-1) of caption t's image among this update's images.
    ``compute()`` → ``{"i2t_R@1": …, "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "r_mean"}`` (one
    ``i2t_R@K`` / ``t2i_R@K`` per K of ``ks``), float64 percentages; all ``NaN`` when no image was seen, the ``t2i``
    ones (and ``r_mean``) ``NaN`` when no text was.

    ``scorer(image_embeds [n, Q, D], text_embeds [T, E]) → [n, T]``, higher = more similar; default
    :func:`max_query_cosine`. Embeddings are kept in float32. States are concatenated across processes in rank
    order (``dist_reduce_fx="cat"``): the embeddings flattened, each caption's image index within its update and
    the sizes of every update, from which ``compute()`` rebuilds every caption's absolute image index.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        scorer: Scorer | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        ks: Sequence[int] = (1, 5, 10),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if not ks or any(int(k) != k or k < 1 for k in ks):
            raise ValueError(f"ks must be positive integers, got {ks}")
        self.scorer = scorer or max_query_cosine
        self.chunk_size = int(chunk_size)
        self.ks = tuple(sorted({int(k) for k in ks}))
        # all states 1-D, so a process that saw no update can join the gather with empty tensors of the same kind
        self.add_state("image_embeds", default=[], dist_reduce_fx="cat")
        self.add_state("text_embeds", default=[], dist_reduce_fx="cat")
        self.add_state("text_image", default=[], dist_reduce_fx="cat")
        self.add_state("sizes", default=[], dist_reduce_fx="cat")

    def update(self, image_embeds: Tensor, text_embeds: Tensor, text_image: Tensor) -> None:
        """Add B images ([B, Q, D]) and their T captions ([T, E]); ``text_image`` [T] holds each caption's image
        index within this update (0..B-1)."""
        if image_embeds.ndim != 3 or text_embeds.ndim != 2 or text_image.ndim != 1:
            raise ValueError(
                "expected image_embeds [B, Q, D], text_embeds [T, E] and text_image [T], got shapes "
                f"{tuple(image_embeds.shape)}, {tuple(text_embeds.shape)}, {tuple(text_image.shape)}"
            )
        if text_image.shape[0] != text_embeds.shape[0]:
            raise ValueError(f"{text_image.shape[0]} image indices for {text_embeds.shape[0]} texts")
        if text_image.is_floating_point() or text_image.is_complex():
            raise ValueError(f"text_image must hold integer indices, got {text_image.dtype}")
        num_images = image_embeds.shape[0]
        if text_image.numel() and (int(text_image.min()) < 0 or int(text_image.max()) >= num_images):
            raise ValueError(f"text_image must lie in 0..{num_images - 1} (this update's images)")
        self.image_embeds.append(image_embeds.detach().to(self.device, torch.float32).reshape(-1))
        self.text_embeds.append(text_embeds.detach().to(self.device, torch.float32).reshape(-1))
        self.text_image.append(text_image.detach().to(self.device, torch.long))
        sizes = (num_images, text_embeds.shape[0], image_embeds.shape[1], image_embeds.shape[2], text_embeds.shape[1])
        self.sizes.append(torch.tensor(sizes, dtype=torch.long, device=self.device))

    def sync(self, *args: Any, **kwargs: Any) -> None:
        """As :meth:`Metric.sync`, after giving empty states the dtype of the others (torchmetrics would send an
        empty tensor of the metric's float dtype, which the long states of other processes cannot be gathered with)."""
        for name in STATES:
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                dtype = torch.float32 if name.endswith("embeds") else torch.long
                getattr(self, name).append(torch.empty(0, dtype=dtype, device=self.device))
        super().sync(*args, **kwargs)

    def compute(self) -> dict[str, Tensor]:
        """R@K both ways and their mean, in percent (see the module docstring for the protocol and ties)."""
        sizes = _cat(self.sizes, torch.long).view(-1, SIZES)
        images, texts, text_image = self._rebuild(sizes)
        num_images, num_texts = images.shape[0], texts.shape[0]
        i2t_rank, t2i_rank = self._ranks(images, texts, text_image)
        out: dict[str, Tensor] = {}
        for direction, rank, count in (("i2t", i2t_rank, num_images), ("t2i", t2i_rank, num_texts)):
            for k in self.ks:
                out[f"{direction}_R@{k}"] = _percent(rank <= k) if count else _nan()
        out["r_mean"] = torch.stack(list(out.values())).mean()
        return out

    def ranks(self) -> tuple[Tensor, Tensor]:
        """Per-query ranks of everything added so far (after a sync: of every process), in update order: image→text
        ``[N]`` (``inf`` for an image without captions) and text→image ``[T]`` (exact up to ``max(ks)``,
        ``max(ks) + 1`` beyond): what :meth:`compute` turns into ``R@K``, for analyses per image or caption."""
        images, texts, text_image = self._rebuild(_cat(self.sizes, torch.long).view(-1, SIZES))
        return self._ranks(images, texts, text_image)

    def _rebuild(self, sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """All images [N, Q, D], all texts [T, E] and each text's absolute image index [T], in rank and update order."""
        num_images, num_texts = sizes[:, 0], sizes[:, 1]
        if not num_images.sum():
            return torch.empty(0, 1, 1), torch.empty(0, 1), torch.empty(0, dtype=torch.long)
        shapes = {tuple(row) for row in sizes[num_images > 0, 2:4].tolist()}
        widths = set(sizes[num_texts > 0, 4].tolist())
        if len(shapes) > 1 or len(widths) > 1:
            raise ValueError(f"updates disagree on the embedding shapes: image [Q, D] {shapes}, text width {widths}")
        (queries, width), text_width = shapes.pop(), widths.pop() if widths else 1
        images = _cat(self.image_embeds, torch.float32).view(-1, queries, width)
        texts = _cat(self.text_embeds, torch.float32).view(-1, text_width)
        first_image = torch.cumsum(num_images, 0) - num_images  # absolute index of each update's first image
        text_image = _cat(self.text_image, torch.long) + torch.repeat_interleave(first_image, num_texts)
        return images, texts, text_image

    def _ranks(self, images: Tensor, texts: Tensor, text_image: Tensor) -> tuple[Tensor, Tensor]:
        """Image→text ranks [N] (``inf`` for an image without captions) and text→image ranks [T] (exact up to
        ``max(ks)``, ``max(ks) + 1`` for anything beyond)."""
        num_images, num_texts = images.shape[0], texts.shape[0]
        device = images.device
        i2t_rank = torch.full((num_images,), math.inf, dtype=torch.float64, device=device)
        own_score = torch.empty(num_texts, dtype=torch.float64, device=device)
        if not num_texts:  # nothing to retrieve: every image is a miss, no text has a rank
            return i2t_rank, torch.empty(0, dtype=torch.long, device=device)
        top = min(max(self.ks) + 1, num_images)  # per text: the highest scores of any image so far
        best: Tensor | None = None
        order = torch.argsort(text_image, stable=True)  # texts grouped by image, for each chunk's own captions
        sorted_images = text_image[order]
        for start in range(0, num_images, self.chunk_size):
            stop = min(start + self.chunk_size, num_images)
            scores = self.scorer(images[start:stop], texts)
            if scores.shape != (stop - start, num_texts):
                raise ValueError(f"the scorer returned {tuple(scores.shape)}, expected {(stop - start, num_texts)}")
            scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
            scores = scores.masked_fill(scores.isnan(), -math.inf)
            lo, hi = torch.searchsorted(sorted_images, torch.tensor([start, stop], device=device)).tolist()
            own_texts = order[lo:hi]
            row = sorted_images[lo:hi] - start
            own = scores[row, own_texts]
            own_score[own_texts] = own.double()
            # image→text: the best own caption, against every other caption scoring at least as high
            chunk = stop - start
            best_own = torch.full((chunk,), -math.inf, dtype=scores.dtype, device=device)
            best_own.scatter_reduce_(0, row, own, reduce="amax")
            at_least = (scores >= best_own[:, None]).sum(1)
            own_at_least = torch.zeros(chunk, dtype=torch.long, device=device)
            own_at_least.scatter_add_(0, row, (own >= best_own[row]).long())
            has_caption = torch.bincount(row, minlength=chunk) > 0
            i2t_rank[start:stop][has_caption] = (1 + at_least - own_at_least)[has_caption].double()
            # text→image: keep the `top` highest scores of every text's column
            candidates = scores if best is None else torch.cat([best, scores])
            best = candidates.topk(min(top, candidates.shape[0]), dim=0).values
        assert best is not None  # texts have images
        # all images scoring at least the own one, the own one included, i.e. 1 + the wrong ones: the rank
        t2i_rank = (best.double() >= own_score[None]).sum(0)
        return i2t_rank, t2i_rank


def _cat(state: list[Tensor] | Tensor, dtype: torch.dtype) -> Tensor:
    """A concatenated state (a list before the first sync, a tensor after it); empty when nothing was added."""
    if isinstance(state, Tensor):
        return state
    return dim_zero_cat(state) if state else torch.empty(0, dtype=dtype)


def _percent(hits: Tensor) -> Tensor:
    return 100.0 * hits.double().mean()


def _nan() -> Tensor:
    return torch.tensor(math.nan, dtype=torch.float64)
