"""Hyperbolic image–text alignment: the spaces and their identity, distances against closed forms and geoopt, query
aggregation (max / mean / RQS), Random Text Pruning, clamps, training on the tiny BLIP-2, checkpoints, the tiny model
command and the CLI."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import geoopt
import pytest
import torch
from helpers.alignment_standins import ShapeCaptionData, StandInImageTextRecall, eval_batch, train_batch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader
from transformers import Blip2ForImageTextRetrieval, Blip2Processor

from lit_hyperet import alignment_module, geometry as g
from lit_hyperet.alignment import (
    ContrastiveAlignment,
    aggregate_queries,
    cosine_identity_gap,
    prune_caption,
    prune_captions,
    query_similarity,
    saturated,
    symmetric_infonce,
    to_space,
)
from lit_hyperet.alignment_module import HyperbolicAlignmentModule
from lit_hyperet.checkpoints import compare_hparams
from lit_hyperet.hyperet import HyperETConfig, adapted_module_names
from lit_hyperet.models.blip2 import TinyBlip2Retrieval
from lit_hyperet.models.tiny_tokenizer import CAPTION_WORDS
from lit_hyperet.user_errors import ConfigError

SPACE_NAMES = ("euclidean", "poincare_cosine", "poincare_distance", "lorentz")
CONSTANT_LR = {"class_path": "torch.optim.lr_scheduler.ConstantLR", "init_args": {"factor": 1.0}}


@pytest.fixture
def stand_in_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    """``lit_hyperet.tasks.captions.retrieval.ImageTextRecall`` resolved to the stand-in for the test."""
    module = types.ModuleType("lit_hyperet.tasks.captions.retrieval")
    module.ImageTextRecall = StandInImageTextRecall
    monkeypatch.setitem(sys.modules, "lit_hyperet.tasks.captions.retrieval", module)


def make_module(model_dir: Path, **kwargs) -> HyperbolicAlignmentModule:
    defaults = dict(model=TinyBlip2Retrieval(path=str(model_dir)), lr=1e-3, weight_decay=0.0, lr_scheduler=CONSTANT_LR)
    defaults.update(kwargs)
    return HyperbolicAlignmentModule(**defaults)


def trainer(root: Path, steps: int, **kwargs) -> Trainer:
    options = dict(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=root,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return Trainer(**options)


def embeddings(seed: int = 0, b: int = 3, q: int = 4, t: int = 5, d: int = 6, scale: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, q, d, generator=gen, dtype=torch.float64) * scale,
        torch.randn(t, d, generator=gen, dtype=torch.float64) * scale,
    )


# ---------------------------------------------------------------------------------------------------- spaces


@pytest.mark.parametrize(("c", "scale", "size"), [(1.0, 0.2, 1.0), (0.1, 1.0, 3.0), (2.0, 1.0, 50.0)])
def test_poincare_cosine_logits_equal_euclidean(c: float, scale: float, size: float) -> None:
    """exp0 (and the projection, even when it fires: size 50) only rescale: the cosine of ball points is the cosine of
    the embeddings, so poincare_cosine gives exactly the euclidean logits."""
    image, text = embeddings(scale=size)
    assert cosine_identity_gap(image, text, c, scale) < 1e-12
    heads = {
        space: ContrastiveAlignment(6, space=space, curvature=c, embedding_scale=scale).double()
        for space in ("euclidean", "poincare_cosine")
    }
    logits = {space: head(image[:, :, :], text[:3]).logits for space, head in heads.items()}
    assert torch.allclose(logits["poincare_cosine"], logits["euclidean"], atol=1e-10, rtol=0)
    # float32 under bf16 autocast: the same to float32 rounding
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f32 = {s: h.float()(image.float(), text[:3].float()).logits for s, h in heads.items()}
    assert f32["euclidean"].dtype == torch.float32
    assert torch.allclose(f32["poincare_cosine"], f32["euclidean"], atol=2e-4, rtol=0)


def test_poincare_distance_matches_geoopt_and_the_closed_form() -> None:
    image, text = embeddings(seed=1)
    for c in (0.5, 1.0, 3.0):
        x = to_space("poincare_distance", image, c, 0.3)
        y = to_space("poincare_distance", text, c, 0.3)
        ours = g.poincare_pairwise_distance(x, y, c)  # [B, Q, T]
        ball = geoopt.PoincareBall(c=torch.tensor(c, dtype=torch.float64))  # geoopt keeps c in float32 otherwise
        reference = ball.dist(x[:, :, None, :], y[None, None, :, :])
        assert torch.allclose(ours, reference, atol=1e-9, rtol=1e-9)
        s = math.sqrt(c)
        mobius = geoopt.manifolds.stereographic.math.mobius_add(
            -x[:, :, None, :], y[None, None], k=torch.tensor(-c, dtype=x.dtype)
        )
        closed = 2 / s * torch.atanh(s * mobius.norm(dim=-1))
        assert torch.allclose(ours, closed, atol=1e-9, rtol=1e-9)
        assert torch.allclose(query_similarity("poincare_distance", x, y, c), -ours)
        # the radius is the distance to the origin
        origin = torch.zeros(1, 6, dtype=x.dtype)
        assert torch.allclose(g.poincare_pairwise_distance(y, origin, c)[:, 0], g.radius(y, c), atol=1e-9)


def test_lorentz_distance_matches_the_closed_form_and_the_poincare_isometry() -> None:
    image, text = embeddings(seed=2)
    for c in (0.5, 1.0, 2.0):
        x = g.lorentz_exp0(image * 0.4, c)
        y = g.lorentz_exp0(text * 0.4, c)
        xt, yt = g.lorentz_time(x, c), g.lorentz_time(y, c)
        assert torch.allclose(xt, torch.sqrt(1 / c + (x * x).sum(-1)))  # MERU's time component
        inner = (x[:, :, None, :] * y[None, None]).sum(-1) - xt[:, :, None] * yt[None, None]
        closed = torch.acosh(-c * inner) / math.sqrt(c)
        ours = g.lorentz_pairwise_distance(x, y, c)
        assert torch.allclose(ours, closed, atol=1e-9, rtol=1e-9)
        assert torch.allclose(query_similarity("lorentz", x, y, c), -ours)
        # hyperboloid → Poincaré ball (p = x / (1 + √c x_t)) is an isometry
        s = math.sqrt(c)
        px, py = x / (1 + s * xt[..., None]), y / (1 + s * yt[..., None])
        assert torch.allclose(
            ours,
            geoopt.PoincareBall(c=torch.tensor(c, dtype=torch.float64)).dist(px[:, :, None, :], py[None, None]),
            atol=1e-8,
        )
        # the radius: distance to the origin (0, 1/√c), and ‖v‖ for exp0(v)
        assert torch.allclose(g.lorentz_radius(y, c), torch.acosh(s * yt) / s, atol=1e-9)
        assert torch.allclose(g.lorentz_radius(y, c), (text * 0.4).norm(dim=-1), atol=1e-9)


def test_identical_points_give_finite_gradients() -> None:
    """acosh's argument is clamped above 1 in float32 (MERU's 1 + 1e-8 rounds to 1 there)."""
    for space in ("poincare_distance", "lorentz"):
        u = torch.randn(4, 8, requires_grad=True)
        points = to_space(space, u, 1.0, 0.5)
        sim = query_similarity(space, points[:, None, :], points.detach().clone(), 1.0)
        sim.sum().backward()
        assert torch.isfinite(u.grad).all(), space


def test_radius_saturation_is_flagged_at_the_float32_limits() -> None:
    small = torch.randn(5, 8) * 0.1
    huge = torch.randn(5, 8) * 1e3
    for space in ("poincare_distance", "lorentz"):
        assert not saturated(space, to_space(space, small, 1.0)).any()
        assert saturated(space, to_space(space, huge, 1.0)).all()
    # geoopt's margin: radius saturates at 2·artanh(1 − 4e-3)/√c in float32
    for c in (0.25, 1.0):
        limit = 2 * math.atanh(1 - 4e-3) / math.sqrt(c)
        assert torch.allclose(g.radius(to_space("poincare_distance", huge, c), c), torch.full((5,), limit), rtol=1e-4)
    head = ContrastiveAlignment(8, space="poincare_distance", embedding_scale=1.0)
    stats = head.radius_stats(huge.reshape(5, 1, 8), small)
    assert stats["saturated"].tolist() == [1.0] * 5 + [0.0] * 5
    assert stats["image"].shape == (5,) and stats["text"].shape == (5,)


# ---------------------------------------------------------------------------------------------------- queries


def distinct_query_embeddings(b: int = 4, q: int = 5, t: int = 4, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries whose similarities with every text all differ, so a score names the query it came from."""
    torch.manual_seed(0)
    return torch.randn(b, q, d, dtype=torch.float64), torch.randn(t, d, dtype=torch.float64)


def test_max_and_mean_aggregate_over_queries() -> None:
    image, text = distinct_query_embeddings()
    head = ContrastiveAlignment(8, space="euclidean", query_aggregation="mean", eval_query_aggregation="max").double()
    points_i, points_t = head.to_space(image), head.to_space(text)
    per_query = query_similarity("euclidean", points_i, points_t)  # [B, Q, T]
    assert torch.equal(aggregate_queries(per_query, "max"), per_query.max(dim=1).values)
    assert torch.allclose(aggregate_queries(per_query, "mean"), per_query.sum(dim=1) / per_query.shape[1])
    assert torch.allclose(head.train().scores(points_i, points_t), per_query.mean(dim=1))  # training: mean
    assert torch.equal(head.eval().scores(points_i, points_t), per_query.max(dim=1).values)  # evaluation: max
    assert torch.equal(head.train().eval_scores(points_i, points_t), per_query.max(dim=1).values)


def test_rqs_uses_exactly_one_query_per_pair_and_one_per_image() -> None:
    image, text = distinct_query_embeddings(b=6, q=5)
    head = ContrastiveAlignment(8, space="poincare_distance", query_aggregation="rqs").double().train()
    points_i, points_t = head.to_space(image), head.to_space(text)
    per_query = query_similarity("poincare_distance", points_i, points_t, head.curvature)  # [B, Q, T]
    chosen = []
    for seed in range(20):
        torch.manual_seed(seed)
        scores = head.scores(points_i, points_t)  # [B, T]
        # each pair's score equals exactly one query's similarity, and the same query for every text of an image
        match = (per_query - scores[:, None, :]).abs() < 1e-12  # [B, Q, T]
        assert (match.sum(dim=1) == 1).all()
        index = match.float().argmax(dim=1)  # [B, T]
        assert (index == index[:, :1]).all()
        chosen.append(index[:, 0])
    assert len(torch.stack(chosen).unique()) > 1  # random across steps
    # the loss uses RQS in training (the same draw as scores with the same seed) and the evaluation aggregation in eval
    torch.manual_seed(0)
    expected = head.scores(points_i[:4], points_t[:4]) / head.temperature
    torch.manual_seed(0)
    assert torch.allclose(head(image[:4], text[:4]).logits, expected)
    head.eval()
    assert torch.equal(head.scores(points_i, points_t), per_query.max(dim=1).values)


# ---------------------------------------------------------------------------------------------------- RTP


def test_rtp_prefix_and_drop_words_rules() -> None:
    caption = "a red square on the left"
    words = caption.split()
    gen = torch.Generator().manual_seed(0)
    prefixes = {prune_caption(caption, "prefix", gen) for _ in range(200)}
    assert prefixes == {" ".join(words[:k]) for k in range(1, len(words))}  # every strict non-empty prefix, no other
    dropped = [prune_caption(caption, "drop_words", gen) for _ in range(300)]
    for kept in dropped:
        kept_words = kept.split()
        assert 1 <= len(kept_words) <= len(words)
        it = iter(words)
        assert all(w in it for w in kept_words)  # an order-preserving subsequence
    lengths = [len(k.split()) for k in dropped]
    assert abs(sum(lengths) / len(lengths) - 3.0) < 0.4  # half of 6 words on average (at least one kept)
    assert prune_caption("a", "drop_words", gen) == "a" and prune_caption("shape", "prefix", gen) == "shape"
    all_dropped = torch.Generator().manual_seed(0)
    assert all(len(prune_caption("x y", "drop_words", all_dropped).split()) >= 1 for _ in range(100))


def test_rtp_probability_zero_one_and_rate() -> None:
    captions = ["a red square on the left", "a blue circle on the right", "a green triangle"] * 100
    assert prune_captions(captions, 0.0, "prefix") == captions
    assert all(p != c for p, c in zip(prune_captions(captions, 1.0, "prefix"), captions, strict=True))
    torch.manual_seed(0)
    changed = sum(p != c for p, c in zip(prune_captions(captions, 0.3, "prefix"), captions, strict=True))
    assert 60 <= changed <= 120  # ≈ 0.3 × 300


def test_rtp_applies_only_in_training_and_only_to_captions(
    tiny_blip2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = make_module(tiny_blip2_dir, rtp_prob=1.0, rtp_mode="drop_words")
    captions = ["a red square on the left", "a blue circle on the right"]
    module.eval()
    assert module.training_captions(captions) == captions
    module.train()
    torch.manual_seed(0)
    pruned = module.training_captions(captions)
    assert pruned != captions and all(set(p.split()) <= set(c.split()) for p, c in zip(pruned, captions, strict=True))
    assert make_module(tiny_blip2_dir, rtp_prob=0.0).train().training_captions(captions) == captions
    # in a training step only the captions change: the pixels and image ids reach the model and the loss as given
    batch = train_batch(module.processor, 4)
    pixels, ids, given = batch["pixel_values"].clone(), list(batch["image_ids"]), list(batch["captions"])
    module.configure_model()
    seen: dict = {}
    head_forward, tokenize = module.head.forward, module.tokenize
    module.head.forward = lambda image, text, image_ids, generator=None, gather=None: (
        seen.update(ids=image_ids) or head_forward(image, text, image_ids)
    )
    features = alignment_module.vision_features
    monkeypatch.setattr(alignment_module, "vision_features", lambda m, px: seen.update(pixels=px) or features(m, px))
    module.tokenize = lambda caps: seen.update(captions=list(caps)) or tokenize(caps)
    with pytest.warns(UserWarning):  # self.log without a trainer
        loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    assert torch.equal(seen["pixels"], pixels) and seen["ids"] == ids
    assert seen["captions"] != batch["captions"] and len(seen["captions"]) == 4
    for p, c in zip(seen["captions"], batch["captions"], strict=True):
        assert set(p.split()) <= set(c.split()) and p
    assert batch["captions"] == given  # the batch itself is not modified


# ---------------------------------------------------------------------------------------------------- head


def test_clamps_hold() -> None:
    head = ContrastiveAlignment(16, space="lorentz", curvature=0.5, learn_curvature=True, temperature=0.07)
    assert math.isclose(head.embedding_scale.item(), 1 / 4, rel_tol=1e-6)  # 1/√D
    with torch.no_grad():
        head.log_temperature.fill_(math.log(5.0))
        head.log_curvature.fill_(math.log(100.0))
        head.log_embedding_scale.fill_(math.log(3.0))
    assert math.isclose(head.temperature.item(), 0.5, rel_tol=1e-6)
    assert math.isclose(head.curvature.item(), 5.0, rel_tol=1e-6)  # 10 × c0
    assert math.isclose(head.embedding_scale.item(), 1.0, rel_tol=1e-6)
    head.train()(torch.randn(3, 2, 16), torch.randn(3, 16))  # a training forward clamps the stored values in place
    assert math.isclose(head.log_temperature.exp().item(), 0.5, rel_tol=1e-6)
    assert math.isclose(head.log_curvature.exp().item(), 5.0, rel_tol=1e-6)
    assert head.log_embedding_scale.item() <= 0
    with torch.no_grad():
        head.log_temperature.fill_(math.log(1e-5))
        head.log_curvature.fill_(math.log(1e-4))
    head.clamp_()
    assert math.isclose(head.temperature.item(), 0.001, rel_tol=1e-6)
    assert math.isclose(head.curvature.item(), 0.05, rel_tol=1e-6)  # c0 / 10
    fixed = ContrastiveAlignment(16, learn_curvature=False, learn_embedding_scale=False)
    assert not fixed.log_curvature.requires_grad and not fixed.log_embedding_scale.requires_grad
    assert fixed.log_temperature.requires_grad
    for bad in ({"temperature": 0.9}, {"embedding_scale": 1.5}, {"curvature": 0.0}, {"space": "sphere"}):
        with pytest.raises(ValueError):
            ContrastiveAlignment(16, **bad)


def test_infonce_label_smoothing_and_repeated_images() -> None:
    logits = torch.tensor([[4.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 0.0, 2.0]])
    expected = (
        torch.nn.functional.cross_entropy(logits, torch.arange(3), label_smoothing=0.1)
        + torch.nn.functional.cross_entropy(logits.T, torch.arange(3), label_smoothing=0.1)
    ) / 2
    assert torch.allclose(symmetric_infonce(logits, 0.1), expected)
    # images 0 and 2 are the same image: each row's target is split between them
    positives = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.bool)
    targets = positives.float() / positives.float().sum(1, keepdim=True)
    smoothed = 0.9 * targets + 0.1 / 3
    by_hand = (
        -(smoothed * logits.log_softmax(1)).sum(1).mean() / 2 - (smoothed * logits.T.log_softmax(1)).sum(1).mean() / 2
    )
    assert torch.allclose(symmetric_infonce(logits, 0.1, positives), by_hand)


def test_euclidean_keeps_curvature_and_scale_in_the_graph_with_zero_gradient() -> None:
    head = ContrastiveAlignment(8, space="euclidean", learn_curvature=True)
    head.train()(torch.randn(4, 3, 8), torch.randn(4, 8)).loss.backward()
    assert head.log_curvature.grad is not None and float(head.log_curvature.grad) == 0.0
    assert float(head.log_embedding_scale.grad) == 0.0 and float(head.log_temperature.grad) != 0.0


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_negatives_gathered_over_processes_average_to_the_loss_of_the_whole_batch(aggregation: str) -> None:
    """Two processes holding three pairs each, each contrasting its pairs against all six (the other process's
    points as constants): the mean of their losses is the loss of one process holding the six pairs, an image on
    both processes (a padded last batch) counting as a positive across them; gradients reach this process's rows."""
    from lit_hyperet.alignment.contrastive import image_keys

    torch.manual_seed(0)
    head = ContrastiveAlignment(8, space="poincare_distance", query_aggregation=aggregation).double().train()
    image = torch.randn(6, 4, 8, dtype=torch.float64, requires_grad=True)
    text = torch.randn(6, 8, dtype=torch.float64)
    ids = ["a", "b", "c", "d", "a", "e"]
    whole = head(image, text, ids)
    assert whole.contrasted == 6
    shares = [slice(0, 3), slice(3, 6)]
    held = [(head.to_space(image[s]).detach(), head.to_space(text[s]).detach(), image_keys(ids[s])) for s in shares]
    losses = []
    for rank, share in enumerate(shares):
        calls = iter(range(3))  # the head gathers its image points, its text points, then its image keys

        def gather(tensor: torch.Tensor, rank: int = rank, calls=calls) -> torch.Tensor:
            k = next(calls)
            parts = [points[k] for points in held]
            parts[rank] = tensor
            return torch.cat(parts)

        out = head(image[share], text[share], ids[share], gather=gather)
        assert out.contrasted == 6 and out.logits.shape == (3, 3)
        losses.append(out.contrastive)
    torch.testing.assert_close((losses[0] + losses[1]) / 2, whole.contrastive)
    losses[0].backward()
    assert image.grad[:3].abs().sum() > 0 and image.grad[3:].abs().sum() == 0  # process 1's points are constants
    with pytest.raises(ValueError, match="need the image ids"):
        head(image[:3], text[:3], gather=lambda t: t)


# ---------------------------------------------------------------------------------------------------- model


def test_embeddings_are_blip2s_itc_features_before_normalisation(tiny_blip2_dir: Path) -> None:
    module = make_module(tiny_blip2_dir)
    module.configure_model()
    module.eval()
    batch = train_batch(module.processor, 4)
    tokens = module.tokenize(batch["captions"])
    with torch.no_grad():
        image, text = module(batch["pixel_values"], batch["captions"])
        reference = module.blip2(pixel_values=batch["pixel_values"], **tokens, use_image_text_matching_head=False)
    assert image.shape == (4, 8, 32) and text.shape == (4, 32)
    assert torch.allclose(torch.nn.functional.normalize(image, dim=-1), reference.image_embeds, atol=1e-5)
    assert torch.allclose(torch.nn.functional.normalize(text, dim=-1), reference.text_embeds, atol=1e-5)


def test_freezing_and_hyperet_on_the_vision_tower_only(tiny_blip2_dir: Path) -> None:
    module = make_module(tiny_blip2_dir, hyperet=HyperETConfig(), learn_curvature=True)
    module.configure_model()
    adapted = adapted_module_names(module.blip2.vision_model)
    assert adapted == [f"encoder.layers.{i}.self_attn.qkv" for i in range(2)]
    keys = module.trainable_state_keys()
    prefixes = ("blip2.query_tokens", "blip2.embeddings.", "blip2.qformer.", "blip2.vision_projection.")
    prefixes += ("blip2.text_projection.", "head.")
    hyperet = {k for k in keys if k.startswith("blip2.vision_model.")}
    assert hyperet and all(".parametrizations.weight.0.slices." in k for k in hyperet)
    assert {k.rsplit(".slices.", 1)[1].split(".")[0] for k in hyperet} == {"q", "v"}
    assert all(k.startswith(prefixes) for k in keys - hyperet)
    assert not any(k.startswith("blip2.itm_head") for k in keys)
    assert {k for k in keys if k.startswith("head.")} == {
        "head.log_temperature",
        "head.log_curvature",
        "head.log_embedding_scale",
    }
    assert not any(p.requires_grad for n, p in module.blip2.vision_model.named_parameters() if "original" in n)


@pytest.mark.parametrize("space", SPACE_NAMES)
def test_training_steps_give_finite_decreasing_loss(tiny_blip2_dir: Path, tmp_path: Path, space: str) -> None:
    aggregation = "rqs" if space in ("poincare_distance", "lorentz") else "max"
    module = make_module(tiny_blip2_dir, space=space, query_aggregation=aggregation, rtp_prob=0.25, lr=3e-4)
    batch = train_batch(module.processor, 8)
    module.configure_model()

    def eval_loss() -> float:
        module.eval()
        with torch.no_grad():
            image, text = module(batch["pixel_values"], batch["captions"])
            return float(module.head(image, text, batch["image_ids"]).loss)

    losses: list[float] = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, b, batch_idx):
            losses.append(float(outputs["loss"]))

    torch.manual_seed(0)
    before = eval_loss()
    module.train()  # Lightning keeps the modes the modules are in
    fit = trainer(tmp_path, 8, callbacks=[Record()])
    fit.fit(module, train_dataloaders=DataLoader([batch] * 8, batch_size=None))
    after = eval_loss()
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert after < before, (space, before, after, losses)
    logged = fit.callback_metrics
    for name in ("loss", "temperature", "curvature", "embedding_scale"):
        assert math.isfinite(float(logged[f"train/{name}"])), name
    for name in ("radius_image_mean", "radius_text_mean"):
        assert float(logged[f"train/{name}"]) > 0, name
    assert 0 <= float(logged["train/radius_saturated_fraction"]) <= 1


def test_validation_logs_recall_and_radius(tiny_blip2_dir: Path, tmp_path: Path, stand_in_metric: None) -> None:
    module = make_module(tiny_blip2_dir, space="lorentz", eval_query_aggregation="max")
    data = ShapeCaptionData(module.processor)
    run = trainer(tmp_path, 2)
    results = run.validate(module, datamodule=data, verbose=False)[0]
    for name in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "r_mean"):
        assert 0 <= results[f"val/{name}"] <= 100, name
    assert results["val/i2t_R@10"] == 100.0  # 6 images, 12 captions: every image has a caption in its top 10
    for name in ("radius_image_mean", "radius_text_mean"):
        assert results[f"val/{name}"] > 0
    assert 0 <= results["val/radius_saturated_fraction"] <= 1
    # the metric got the points of 6 images × 8 queries and all 12 captions; it scores without temperature
    metric = module.val_metric
    assert metric.calls == [((6, 8, 32), (12, 32))]
    batch = eval_batch(module.processor)
    module.eval()  # validate gives the modules back in the modes they had (training: dropout on)
    with torch.no_grad():
        image, text = module(batch["pixel_values"], [c for caps in batch["captions"] for c in caps])
        points_i, points_t = module.head.to_space(image), module.head.to_space(text)
        expected = (-g.lorentz_pairwise_distance(points_i, points_t, module.head.curvature)).amax(dim=1)
    assert torch.allclose(module.head.eval_scores(points_i, points_t), expected, atol=1e-5)
    tested = run.test(module, datamodule=data, verbose=False)[0]
    assert set(tested) == {k.replace("val/", "test/") for k in results}


def test_checkpoint_holds_only_trainable_tensors_and_reloads(tiny_blip2_dir: Path, tmp_path: Path) -> None:
    module = make_module(tiny_blip2_dir, space="poincare_distance", learn_curvature=True, hyperet=HyperETConfig())
    batch = train_batch(module.processor, 4)
    ckpt_dir = tmp_path / "ckpt"
    callback = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0)
    trainer(tmp_path, 3, enable_checkpointing=True, callbacks=[callback]).fit(
        module, train_dataloaders=DataLoader([batch] * 3, batch_size=None)
    )
    path = ckpt_dir / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    assert set(checkpoint["state_dict"]) == module.trainable_state_keys()
    assert not any(k.startswith("blip2.vision_model.") and "slices" not in k for k in checkpoint["state_dict"])
    assert (
        checkpoint["hyper_parameters"]["model"]["class_path"] == "lit_hyperet.models.blip2.sources.TinyBlip2Retrieval"
    )
    reloaded = HyperbolicAlignmentModule.load_from_checkpoint(path, map_location="cpu")
    module.eval()
    reloaded.eval()
    with torch.no_grad():
        a = module(batch["pixel_values"], batch["captions"])
        b = reloaded(batch["pixel_values"], batch["captions"])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert float(reloaded.head.curvature) == float(module.head.curvature) != 1.0
    # another space is no layout change; learning the curvature or not is
    stored = checkpoint["hyper_parameters"]
    layout, other = compare_hparams(stored, {**stored, "space": "lorentz"}, HyperbolicAlignmentModule)
    assert not layout and [k for k, _, _ in other] == ["space"]
    layout, _ = compare_hparams(stored, {**stored, "learn_curvature": False}, HyperbolicAlignmentModule)
    assert [k for k, _, _ in layout] == ["learn_curvature"]


def test_bf16_mixed_training_is_finite_with_float32_geometry(tiny_blip2_dir: Path, tmp_path: Path) -> None:
    module = make_module(tiny_blip2_dir, space="lorentz", query_aggregation="rqs", learn_curvature=True)
    batch = train_batch(module.processor, 4)
    losses: list[float] = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, b, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer(tmp_path, 2, precision="bf16-mixed", callbacks=[Record()]).fit(
        module, train_dataloaders=DataLoader([batch] * 2, batch_size=None)
    )
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image, _ = module(batch["pixel_values"], batch["captions"])
        points = module.head.to_space(image)
    assert image.dtype == torch.bfloat16 and points.dtype == torch.float32


def test_sources_refuse_other_models(tmp_path: Path) -> None:
    from transformers import CLIPVisionConfig

    from lit_hyperet.models.blip2 import PretrainedBlip2Retrieval

    CLIPVisionConfig().save_pretrained(tmp_path / "clip")
    with pytest.raises(ConfigError, match="expected 'blip-2'"):
        PretrainedBlip2Retrieval(str(tmp_path / "clip")).load_model()
    with pytest.raises(ConfigError, match="no config.json"):
        PretrainedBlip2Retrieval(str(tmp_path / "missing")).load_processor()
    with pytest.raises(ConfigError, match="dtype"):
        PretrainedBlip2Retrieval(str(tmp_path / "clip"), dtype="float8")


def test_config_mistakes_are_config_errors(tiny_blip2_dir: Path) -> None:
    for bad in (
        {"space": "sphere"},
        {"query_aggregation": "min"},
        {"eval_query_aggregation": "rqs"},
        {"rtp_mode": "suffix"},
        {"rtp_prob": 1.5},
        {"temperature": 2.0},
    ):
        with pytest.raises(ConfigError):
            make_module(tiny_blip2_dir, **bad)
    with pytest.raises(ConfigError, match="max_text_length"):
        make_module(tiny_blip2_dir, max_text_length=100).configure_model()


# ---------------------------------------------------------------------------------------------------- tools


def test_make_tiny_model_blip2_itm_loads_with_from_pretrained(tmp_path: Path, tiny_blip2_dir: Path, capsys) -> None:
    from lit_hyperet.__main__ import main

    out = tmp_path / "blip2"
    assert main(["make-tiny-model", "--family", "blip2-itm", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    model = Blip2ForImageTextRetrieval.from_pretrained(out)
    processor = Blip2Processor.from_pretrained(out)
    assert type(processor.image_processor).__name__ == "BlipImageProcessorPil"
    cfg = model.config
    assert (cfg.num_query_tokens, cfg.image_text_hidden_size, cfg.image_token_index) == (8, 32, None)
    assert (cfg.vision_config.hidden_size, cfg.vision_config.num_hidden_layers, cfg.vision_config.image_size) == (
        64,
        2,
        32,
    )
    q = cfg.qformer_config
    assert (q.hidden_size, q.num_hidden_layers, q.cross_attention_frequency, q.use_qformer_text_input) == (
        64,
        2,
        1,
        True,
    )
    assert q.max_position_embeddings == 64 and len(processor.tokenizer) <= q.vocab_size
    assert model.query_tokens.std() > 0  # not transformers' zero init: the queries differ
    tokenizer = processor.tokenizer
    for word in CAPTION_WORDS:
        ids = tokenizer.encode(word, add_special_tokens=False)
        assert tokenizer.unk_token_id not in ids, word
    ids = tokenizer("A red square on the LEFT.")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "a", "red", "square", "on", "the", "left", ".", "[SEP]"]
    # same seed, same weights
    from safetensors.torch import load_file

    ref, again = load_file(tiny_blip2_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert ref.keys() == again.keys() and all(torch.equal(ref[k], again[k]) for k in ref)
    with pytest.raises(SystemExit):
        main(["make-tiny-model", "--family", "blip2-itm", "--vision", "clip", "--out", str(tmp_path / "x")])


def test_cli_fits_and_validates_the_alignment_module(
    tiny_blip2_dir: Path, tmp_path: Path, stand_in_metric: None
) -> None:
    """The CLI takes HyperbolicAlignmentModule as the model and links its processor into the datamodule."""
    from lit_hyperet.cli import cli_main

    cli = cli_main(
        [
            "fit",
            "--model.class_path",
            "lit_hyperet.HyperbolicAlignmentModule",
            "--model.init_args.model.class_path",
            "lit_hyperet.models.blip2.TinyBlip2Retrieval",
            "--model.init_args.model.init_args.path",
            str(tiny_blip2_dir),
            "--model.init_args.space",
            "poincare_distance",
            "--model.init_args.rtp_prob",
            "0.5",
            "--model.init_args.hyperet.variant",
            "diagonal",
            "--model.init_args.lr_scheduler.class_path",
            "lit_hyperet.schedule.WarmupCosineLR",
            "--data.class_path",
            "helpers.alignment_standins.ShapeCaptionData",
            "--trainer.max_steps",
            "2",
            "--trainer.logger.class_path",
            "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "logs"),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.val_check_interval",
            "2",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--checkpoint.dirpath",
            str(tmp_path / "checkpoints"),
        ]
    )
    assert isinstance(cli.model, HyperbolicAlignmentModule)
    assert cli.datamodule.processor is cli.model.processor
    assert isinstance(cli.model.processor, Blip2Processor)
    assert len(adapted_module_names(cli.model.blip2)) == 2  # HyperET on the tower's two fused qkv projections
    metrics = cli.trainer.callback_metrics
    assert "val/r_mean" in metrics and "val/radius_text_mean" in metrics and "train/loss" in metrics
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_rtp_and_rqs_leave_the_global_rng_alone_and_repeat_per_step(tiny_blip2_dir: Path) -> None:
    """Under DDP every rank draws the caption sampler's epoch from torch's global RNG alike: RTP and RQS draw from
    per-step generators instead (the same draws again for the same step, e.g. after a resume)."""
    module = make_module(tiny_blip2_dir, rtp_prob=1.0, rtp_mode="drop_words", query_aggregation="rqs")
    module.configure_model()
    module.train()
    head = module.head
    captions = ["a red square on the left", "a blue circle on the right", "a green triangle at the top"] * 4
    image, text = head.to_space(torch.randn(len(captions), 8, 32)), head.to_space(torch.randn(3, 32))
    state = torch.get_rng_state()
    first = module.training_captions(captions)
    picked = head.scores(image, text, "rqs", module.step_generator("rqs"))
    assert torch.equal(torch.get_rng_state(), state)
    assert module.training_captions(captions) == first and first != captions
    assert torch.equal(head.scores(image, text, "rqs", module.step_generator("rqs")), picked)


def test_a_training_step_draws_dropout_from_its_own_state_and_leaves_the_global_rng_alone(tiny_blip2_dir: Path) -> None:
    """The Q-Former's dropout on the CPU draws from a state seeded by the run's seed, the step and the rank: the global
    RNG (the caption sampler's, alike on every rank) is where it was, the same step gives the same loss again, and
    the draws are dropout's (evaluation mode gives another loss)."""
    module = make_module(tiny_blip2_dir)
    module.configure_model()
    module.train()
    assert module.blip2.config.qformer_config.hidden_dropout_prob > 0
    batch = train_batch(module.processor)
    state = torch.get_rng_state()
    with torch.no_grad():
        first, again = module.training_step(batch, 0), module.training_step(batch, 0)
        assert torch.equal(torch.get_rng_state(), state)
        assert torch.equal(first, again)
        module.eval()
        assert not torch.equal(module.training_step(batch, 0), first)
