"""How the similarities of an image's Q query embeddings with a text become one image–text score.

* ``max`` (BLIP-2's ITC): the best-matching query, ``max_q s(image_q, text)``.
* ``mean``: the average over queries.
* ``rqs`` (Random Query Selection, training only): **one query per image per step**, drawn uniformly from the Q
  queries independently for each image of the batch; that query stands for the image against every text of the batch,
  in both directions of the loss. So each image–text score uses exactly one query, and all scores of one image use
  the same one.

  Why per image and not an independent draw per image–text pair: with one draw per image, each image is a single
  point in the step, so the image→text softmax ranks the texts against that one point and the text→image softmax
  ranks single image points: the contrastive loss of single-vector embeddings, with the query playing the part of a
  random view of the image. A draw per pair would score the texts of one softmax row against different points of the
  same image, mixing query noise into the ranking the loss trains. Every query must still match its image's texts on
  its own, which is what RQS is for (no query can idle behind a better one, as it can under ``max``). It also costs
  one similarity per pair instead of Q.
"""

from __future__ import annotations

from typing import Literal

import torch

Tensor = torch.Tensor
QueryAggregation = Literal["max", "rqs", "mean"]
QUERY_AGGREGATIONS: tuple[str, ...] = ("max", "rqs", "mean")
#: Aggregations allowed in evaluation (deterministic).
EVAL_QUERY_AGGREGATIONS: tuple[str, ...] = ("max", "mean")


def check_aggregation(how: str, allowed: tuple[str, ...] = QUERY_AGGREGATIONS) -> None:
    if how not in allowed:
        raise ValueError(f"query aggregation {how!r} is not one of {', '.join(allowed)}")


def random_query_indices(batch: int, queries: int, device: torch.device | str = "cpu", generator=None) -> Tensor:
    """``[batch]`` query indices, each uniform over ``0 … queries − 1`` (torch's global RNG unless ``generator``)."""
    if generator is not None:  # a CPU generator: draw on the CPU, then move
        return torch.randint(queries, (batch,), generator=generator).to(device)
    return torch.randint(queries, (batch,), device=device)


def pick_random_queries(image: Tensor, generator=None) -> Tensor:
    """RQS: ``image [B, Q, D]`` → ``[B, 1, D]``, one uniformly drawn query per image."""
    index = random_query_indices(image.shape[0], image.shape[1], image.device, generator)
    return image[torch.arange(image.shape[0], device=image.device), index][:, None]


def aggregate_queries(similarity: Tensor, how: Literal["max", "mean"]) -> Tensor:
    """``[B, Q, T]`` per-query similarities → ``[B, T]`` by ``max`` or ``mean`` over the queries (RQS picks its
    queries before the similarity: :func:`pick_random_queries`)."""
    check_aggregation(how, EVAL_QUERY_AGGREGATIONS)
    return similarity.amax(dim=1) if how == "max" else similarity.mean(dim=1)
