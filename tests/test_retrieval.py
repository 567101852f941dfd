"""ImageTextRecall: exact ranks on hand-built similarities, the tie rule, a cross-check against torchmetrics'
RetrievalHitRate, chunking, custom scorers, several updates and the 2-process gloo sync."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers.retrieval_ddp import recall_rank
from torchmetrics.retrieval import RetrievalHitRate

from lit_hyperet.tasks.captions.retrieval import ImageTextRecall, max_query_cosine

KEYS = ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "r_mean"]


def dot_scorer(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """Plain dot product of the first query: with one-hot texts it returns the image rows exactly (ties stay ties)."""
    return images[:, 0] @ texts.T


# Three images, six captions (caption t belongs to image t // 2); rows = images, columns = captions.
SIMILARITY = [
    [0.9, 0.2, 0.8, 0.1, 0.3, 0.4],
    [0.7, 0.6, 0.5, 0.1, 0.2, 0.5],
    [0.9, 0.8, 0.7, 0.6, 0.35, 0.5],
]
TEXT_IMAGE = [0, 0, 1, 1, 2, 2]
# Worked out by hand (rank = 1 + wrong items scoring at least as high as the best right one; ties count against):
#   image→text  i0: best own .9 (t0), no wrong caption ≥ .9                           → 1
#               i1: best own .5 (t2), wrong ≥ .5: t0 .7, t1 .6, t5 .5 (tie)          → 4
#               i2: best own .5 (t5), wrong ≥ .5: t0 .9, t1 .8, t2 .7, t3 .6          → 5
#   text→image  t0: own i0 .9, i2 .9 ties → 2    t1: own .2 < .6, .8 → 3    t2: own .5 < .8, .7 → 3
#               t3: own .1, i0 .1 ties, i2 .6 → 3    t4: own .35 > .3, .2 → 1    t5: own .5, i1 .5 ties → 2
# With ks (1, 2, 4): i2t ranks [1, 4, 5] → 1/3, 1/3, 2/3; t2i ranks [2, 3, 3, 3, 1, 2] → 1/6, 3/6, 6/6.
EXPECTED = {"i2t_R@1": 100 / 3, "i2t_R@2": 100 / 3, "i2t_R@4": 200 / 3,
            "t2i_R@1": 100 / 6, "t2i_R@2": 50.0, "t2i_R@4": 100.0, "r_mean": 50.0}  # fmt: skip


def hand_built() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = torch.tensor(SIMILARITY).unsqueeze(1)  # [3, 1, 6]: one query holding the row
    return images, torch.eye(6), torch.tensor(TEXT_IMAGE)


def values(result: dict[str, torch.Tensor]) -> dict[str, float]:
    return {key: float(value) for key, value in result.items()}


def correlated(seed: int, images: int = 20, captions: int = 5, queries: int = 4, width: int = 16, noise: float = 1.5):
    """Random images and captions that are noisy copies of their image's mean query (so ranks spread out)."""
    g = torch.Generator().manual_seed(seed)
    image_embeds = torch.randn(images, queries, width, generator=g)
    text_image = torch.arange(images).repeat_interleave(captions)
    text_image = text_image[torch.randperm(len(text_image), generator=g)]  # captions not grouped by image
    text_embeds = image_embeds.mean(1)[text_image] + noise * torch.randn(len(text_image), width, generator=g)
    return image_embeds, text_embeds, text_image


def hit_rates(similarity: torch.Tensor, text_image: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """R@K both ways from a full similarity matrix with torchmetrics' RetrievalHitRate (one query per image, then
    one per text)."""
    num_images, num_texts = similarity.shape
    relevant = text_image[None, :] == torch.arange(num_images)[:, None]  # [images, texts]
    out = {}
    for k in ks:
        i2t_queries = torch.arange(num_images)[:, None].expand(num_images, num_texts)
        i2t = RetrievalHitRate(top_k=k)(similarity.flatten(), relevant.flatten(), indexes=i2t_queries.flatten())
        t2i_queries = torch.arange(num_texts)[None, :].expand(num_images, num_texts)
        t2i = RetrievalHitRate(top_k=k)(similarity.T.flatten(), relevant.T.flatten(), indexes=t2i_queries.T.flatten())
        out[f"i2t_R@{k}"], out[f"t2i_R@{k}"] = 100 * float(i2t), 100 * float(t2i)
    return out


# ------------------------------------------------------------------------------ exact ranks, hand-built
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 100])
def test_hand_built_ranks_with_ties_counted_against(chunk_size: int) -> None:
    metric = ImageTextRecall(scorer=dot_scorer, chunk_size=chunk_size, ks=(1, 2, 4))
    metric.update(*hand_built())
    result = values(metric.compute())
    assert result.keys() == EXPECTED.keys()
    for key, value in EXPECTED.items():
        assert result[key] == pytest.approx(value, abs=1e-4), key  # torchmetrics: float32


def test_default_keys_and_percentages() -> None:
    metric = ImageTextRecall(scorer=dot_scorer)
    metric.update(*hand_built())
    result = values(metric.compute())
    assert list(result) == KEYS
    # three images: every rank is within 5 and 10 both ways
    assert result["i2t_R@1"] == pytest.approx(100 / 3) and result["t2i_R@1"] == pytest.approx(100 / 6)
    assert all(result[k] == 100.0 for k in KEYS if k.endswith(("@5", "@10")))
    assert result["r_mean"] == pytest.approx((100 / 3 + 100 / 6 + 400) / 6)


def test_collapsed_embeddings_score_nothing_not_everything() -> None:
    """Every image and every text the same vector: all similarities tie, so every rank is last, not first."""
    metric = ImageTextRecall(ks=(1, 5))
    metric.update(torch.ones(3, 2, 6), torch.ones(6, 6), torch.tensor(TEXT_IMAGE))
    result = values(metric.compute())
    assert result["i2t_R@1"] == 0.0 and result["i2t_R@5"] == 100.0  # 4 wrong captions tie: rank 5 of 6
    assert result["t2i_R@1"] == 0.0 and result["t2i_R@5"] == 100.0  # rank 3 of 3 images


def test_nan_similarities_count_as_the_worst_score() -> None:
    images, texts, text_image = hand_built()
    images = images.clone()
    images[1, 0, 2:4] = math.nan  # image 1's own captions score NaN
    metric = ImageTextRecall(scorer=dot_scorer, ks=(1, 4, 5))
    metric.update(images, texts, text_image)
    result = values(metric.compute())
    assert result["i2t_R@4"] == pytest.approx(100 / 3)  # image 1 falls from rank 4 to 5 (behind all 4 wrong)
    assert result["i2t_R@5"] == 100.0


def test_default_scorer_is_cosine_max_over_queries() -> None:
    # image 0 finds its caption only through its second query, image 1 through its second; scales must not matter
    images = torch.tensor([[[0.0, 0.0, 5.0], [2.0, 0.0, 0.0]], [[1.0, 1.0, 0.0], [0.0, 3.0, 0.0]]])
    texts = torch.tensor([[7.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    expected = torch.tensor([[1.0, 0.0], [math.sqrt(0.5), 1.0]])
    torch.testing.assert_close(max_query_cosine(images, texts), expected)
    metric = ImageTextRecall(ks=(1,))
    metric.update(images, texts, torch.tensor([0, 1]))
    assert values(metric.compute()) == {"i2t_R@1": 100.0, "t2i_R@1": 100.0, "r_mean": 100.0}
    # against the plain formula on random inputs
    g = torch.Generator().manual_seed(0)
    images, texts = torch.randn(7, 5, 8, generator=g), torch.randn(11, 8, generator=g)
    formula = F.cosine_similarity(images[:, :, None], texts[None, None], dim=-1).amax(1)
    torch.testing.assert_close(max_query_cosine(images, texts), formula)


# ------------------------------------------------------------------------------ against torchmetrics
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_torchmetrics_hit_rate(seed: int) -> None:
    image_embeds, text_embeds, text_image = correlated(seed)
    metric = ImageTextRecall(chunk_size=6)
    metric.update(image_embeds, text_embeds, text_image)
    result = values(metric.compute())
    expected = hit_rates(max_query_cosine(image_embeds, text_embeds), text_image)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-4), key  # torchmetrics: float32
    assert result["r_mean"] == pytest.approx(sum(expected.values()) / 6)
    assert 0 < result["t2i_R@1"] < 100 and 0 < result["i2t_R@1"] < 100  # the case separates the K


@pytest.mark.parametrize("seed", [0, 1])
def test_chunk_sizes_give_identical_results(seed: int) -> None:
    image_embeds, text_embeds, text_image = correlated(seed)
    results = []
    for chunk_size in (1, 3, 1000):
        metric = ImageTextRecall(chunk_size=chunk_size)
        metric.update(image_embeds, text_embeds, text_image)
        results.append(values(metric.compute()))
    assert results[0] == results[1] == results[2]


def test_custom_scorer_is_used() -> None:
    image_embeds, text_embeds, text_image = correlated(0, noise=0.2)
    default = ImageTextRecall()
    default.update(image_embeds, text_embeds, text_image)
    negated = ImageTextRecall(scorer=lambda images, texts: -max_query_cosine(images, texts))
    negated.update(image_embeds, text_embeds, text_image)
    good, bad = values(default.compute()), values(negated.compute())
    assert good["i2t_R@1"] >= 60 and good["t2i_R@1"] >= 60 and good["r_mean"] > 80
    assert bad["i2t_R@1"] == 0 and bad["t2i_R@1"] == 0 and bad["r_mean"] < 1
    expected = hit_rates(-max_query_cosine(image_embeds, text_embeds), text_image)
    for key, value in expected.items():
        assert bad[key] == pytest.approx(value, abs=1e-4), key  # torchmetrics: float32


def test_several_updates_equal_one() -> None:
    image_embeds, text_embeds, text_image = correlated(5)
    whole = ImageTextRecall(chunk_size=4)
    whole.update(image_embeds, text_embeds, text_image)
    batched = ImageTextRecall(chunk_size=4)
    for start, stop in ((0, 3), (3, 4), (4, 13), (13, 20)):  # uneven batches, texts of each batch's images
        mine = (text_image >= start) & (text_image < stop)
        batched.update(image_embeds[start:stop], text_embeds[mine], text_image[mine] - start)
    assert values(batched.compute()) == values(whole.compute())


def test_images_without_captions_are_misses() -> None:
    images, texts, text_image = hand_built()
    metric = ImageTextRecall(scorer=dot_scorer, ks=(1, 10))
    metric.update(images, texts[:4], text_image[:4])  # image 2 keeps no caption
    result = values(metric.compute())
    assert result["i2t_R@10"] == pytest.approx(200 / 3)


def test_empty_metric_is_nan_not_an_error() -> None:
    metric = ImageTextRecall()
    with pytest.warns(UserWarning, match="called before the ``update``"):
        result = values(metric.compute())
    assert list(result) == KEYS and all(math.isnan(v) for v in result.values())
    metric = ImageTextRecall()
    metric.update(torch.randn(2, 3, 4), torch.empty(0, 4), torch.empty(0, dtype=torch.long))  # images, no texts
    result = values(metric.compute())
    assert result["i2t_R@1"] == 0.0 and math.isnan(result["t2i_R@1"]) and math.isnan(result["r_mean"])


def test_reset_and_input_errors() -> None:
    metric = ImageTextRecall(scorer=dot_scorer, ks=(1, 2, 4))
    metric.update(torch.randn(3, 1, 6), torch.randn(6, 6), torch.tensor(TEXT_IMAGE))
    metric.reset()
    metric.update(*hand_built())
    assert values(metric.compute()) == pytest.approx(EXPECTED)
    with pytest.raises(ValueError, match="0..2"):
        metric.update(torch.randn(3, 1, 6), torch.randn(2, 6), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="2 image indices for 3 texts"):
        metric.update(torch.randn(3, 1, 6), torch.randn(3, 6), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"image_embeds \[B, Q, D\]"):
        metric.update(torch.randn(3, 6), torch.randn(3, 6), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="chunk_size"):
        ImageTextRecall(chunk_size=0)
    with pytest.raises(ValueError, match="ks"):
        ImageTextRecall(ks=(0, 5))
    mixed = ImageTextRecall()
    mixed.update(torch.randn(2, 3, 4), torch.randn(2, 4), torch.tensor([0, 1]))
    mixed.update(torch.randn(2, 5, 4), torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="disagree"):
        mixed.compute()


# ------------------------------------------------------------------------------ across processes
def shard(image_embeds, text_embeds, text_image, bounds):
    """Updates holding images ``start:stop`` for each ``(start, stop)`` and their captions (indices relative)."""
    updates = []
    for start, stop in bounds:
        mine = (text_image >= start) & (text_image < stop)
        updates.append((image_embeds[start:stop], text_embeds[mine], text_image[mine] - start))
    return updates


def test_syncs_across_two_gloo_processes(tmp_path: Path) -> None:
    data = correlated(7)
    cases = {
        # rank 0: two updates (7 + 4 images), rank 1: one (9 images); different numbers of captions too
        "uneven": [shard(*data, [(0, 7), (7, 11)]), shard(*data, [(11, 20)])],
        "rank 1 empty": [shard(*data, [(0, 5), (5, 20)]), []],
        "rank 0 empty": [[], shard(*data, [(0, 20)])],
    }
    single = ImageTextRecall(chunk_size=3)
    single.update(*data)
    expected = values(single.compute())
    # fork: the children inherit the imported modules (spawn would re-import torch/torchmetrics, several seconds)
    mp.start_processes(recall_rank, args=(2, str(tmp_path), cases), nprocs=2, start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for name in cases:
        for rank in ranks:
            assert rank[name]["compute"] == pytest.approx(expected, abs=1e-9), name
    # compute() restores each rank's own updates
    assert [rank["uneven"]["local_updates"] for rank in ranks] == [2, 1]
    assert [rank["rank 1 empty"]["local_updates"] for rank in ranks] == [2, 0]
