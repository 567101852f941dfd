"""The optional alignment losses: MERU's entailment cones (zero inside, positive outside, the ball through the
isometry, refused without hyperbolic points) and image–text matching with the hardest negatives through the model's
own ITM head; both train on the tiny BLIP-2."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.alignment_standins import ShapeCaptionData, train_batch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from transformers import Blip2ForImageTextRetrieval

import lit_hyperet.alignment_module as alignment_module
from lit_hyperet import geometry as g
from lit_hyperet.alignment import (
    ContrastiveAlignment,
    entailment_loss,
    exterior_angle,
    half_aperture,
    hardest_negatives,
    same_image,
    sampled_negatives,
)
from lit_hyperet.alignment.entailment import ball_to_hyperboloid
from lit_hyperet.alignment_module import HyperbolicAlignmentModule
from lit_hyperet.models.blip2 import TinyBlip2Retrieval, itm_logits, vision_features
from lit_hyperet.user_errors import ConfigError

CONSTANT_LR = {"class_path": "torch.optim.lr_scheduler.ConstantLR", "init_args": {"factor": 1.0}}


def quiet_trainer(root: Path, **kwargs: Any) -> Trainer:
    """A CPU trainer without validation, logger, checkpoints or progress output (``kwargs``: steps, callbacks)."""
    quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    return Trainer(accelerator="cpu", default_root_dir=root, limit_val_batches=0, **quiet, **kwargs)


def make_module(model_dir: Path, **kwargs) -> HyperbolicAlignmentModule:
    defaults = dict(model=TinyBlip2Retrieval(path=str(model_dir)), lr=1e-3, weight_decay=0.0, lr_scheduler=CONSTANT_LR)
    return HyperbolicAlignmentModule(**{**defaults, **kwargs})


# ---------------------------------------------------------------------------------------------------- entailment


def test_entailment_is_zero_inside_the_text_cone_and_positive_outside() -> None:
    c = torch.tensor(0.7, dtype=torch.float64)
    direction = torch.nn.functional.normalize(torch.tensor([[1.0, 2.0, -0.5, 0.3]], dtype=torch.float64), dim=-1)
    text = g.lorentz_exp0(1.5 * direction, c)
    # further out along the text's own geodesic from the origin: the exterior angle is 0, inside the cone
    beyond = g.lorentz_exp0(3.0 * direction, c)
    assert exterior_angle(text, beyond, c).item() == pytest.approx(0.0, abs=1e-3)
    assert entailment_loss("lorentz", text, beyond, c).item() == 0.0
    aperture = half_aperture(text, c).item()
    assert aperture == pytest.approx(math.asin(2 * 0.1 / (math.sqrt(0.7) * text.norm().item())), rel=1e-6)
    # a point off the axis: inside the cone while its angle is below the half aperture, outside beyond it
    side = torch.nn.functional.normalize(torch.tensor([[2.0, -1.0, 0.0, 0.0]], dtype=torch.float64), dim=-1)
    side = side - (side * direction).sum() * direction
    side = side / side.norm()
    angles, losses = [], []
    for tilt in (0.02, 0.3, 1.0):
        image = g.lorentz_exp0(3.0 * (direction + tilt * side), c)
        angles.append(exterior_angle(text, image, c).item())
        losses.append(entailment_loss("lorentz", text, image, c).item())
    assert angles[0] < aperture and losses[0] == 0.0
    assert angles[2] > aperture and losses[2] == pytest.approx(angles[2] - aperture, rel=1e-6)
    assert 0 < angles[0] < angles[1] < angles[2] < math.pi
    # the text nearer the origin than the image on the same ray entails it; the reverse does not hold
    assert entailment_loss("lorentz", beyond, text, c).item() > 1.0


def test_ball_points_use_the_same_cones_through_the_isometry() -> None:
    c = 0.5
    v = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # the ball's exp0 doubles the distance to the origin: exp0_ball(v) is isometric to MERU's exp0(2v)
    assert torch.allclose(ball_to_hyperboloid(g.exp0(v, c), c), g.lorentz_exp0(2 * v, c), atol=1e-9)
    t, i = v[:3], v[3:]
    ball = entailment_loss("poincare_distance", g.exp0(t, c), g.exp0(i, c), c)
    lorentz = entailment_loss("lorentz", g.lorentz_exp0(2 * t, c), g.lorentz_exp0(2 * i, c), c)
    assert ball.item() == pytest.approx(lorentz.item(), rel=1e-9) and ball.item() > 0


def test_entailment_is_refused_without_hyperbolic_points(tiny_blip2_dir: Path) -> None:
    with pytest.raises(ConfigError, match="entailment_weight > 0 needs a hyperbolic space"):
        make_module(tiny_blip2_dir, space="euclidean", entailment_weight=0.2)
    with pytest.raises(ValueError, match="hyperbolic points"):
        ContrastiveAlignment(dim=4, space="euclidean", entailment_weight=0.2)
    with pytest.raises(ConfigError, match="entailment_aperture"):
        make_module(tiny_blip2_dir, space="lorentz", entailment_weight=0.2, entailment_aperture=0.0)


def test_the_head_adds_the_weighted_entailment_of_the_scoring_query() -> None:
    gen = torch.Generator().manual_seed(1)
    image, text = torch.randn(4, 3, 8, generator=gen), torch.randn(4, 8, generator=gen)
    plain = ContrastiveAlignment(dim=8, space="lorentz", embedding_scale=0.5)
    head = ContrastiveAlignment(dim=8, space="lorentz", embedding_scale=0.5, entailment_weight=0.2)
    out, base = head(image, text), plain(image, text)
    assert base.entailment is None and out.entailment is not None and out.entailment.item() > 0
    assert out.loss.item() == pytest.approx(base.loss.item() + 0.2 * out.entailment.item(), rel=1e-6)
    points_i, points_t = head.to_space(image), head.to_space(text)
    similarity = -g.lorentz_pairwise_distance(points_i, points_t, head.curvature)
    best = similarity[torch.arange(4), :, torch.arange(4)].argmax(-1)
    expected = entailment_loss("lorentz", points_t, points_i[torch.arange(4), best], head.curvature)
    assert out.entailment.item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------------- ITM


def test_itm_negatives_are_the_hardest_non_matching_pairs() -> None:
    similarity = torch.tensor(
        [
            [9.0, 8.0, 1.0, 2.0],
            [3.0, 5.0, 7.0, 0.0],
            [6.0, 4.0, 2.0, 1.0],
            [0.5, 9.5, 3.0, 4.0],
        ]
    )
    positives = same_image(["a", "a", "b", "c"])  # texts 0 and 1 both describe image a (images 0 and 1)
    mined = hardest_negatives(similarity, positives)
    # image 0: texts 0 and 1 are its own, the hardest other is text 3 (2.0); image 1: text 2 (7.0); image 2: text 0
    # (6.0, its own text 2 excluded); image 3: text 1 (9.5)
    assert mined.image_rows.tolist() == [0, 1, 2, 3]
    assert mined.text_for_image.tolist() == [3, 2, 0, 1]
    # text 0: images 0 and 1 are its own, the hardest other is image 2 (6.0); text 1: image 3 (9.5); text 2: image 1
    # (7.0); text 3: image 0 (2.0)
    assert mined.text_rows.tolist() == [0, 1, 2, 3]
    assert mined.image_for_text.tolist() == [2, 3, 1, 0]
    alone = hardest_negatives(torch.ones(2, 2), same_image(["x", "x"]))
    assert alone.image_rows.numel() == 0 and alone.text_rows.numel() == 0  # nothing to mine: no negative


def test_itm_negatives_are_mined_among_every_process_pairs() -> None:
    """This process's 2 pairs against the 4 of two processes: the indices count in the 4, another process's text or
    image is mined when it is the hardest, and an image on both processes never counts as a negative."""
    i2t = torch.tensor([[9.0, 1.0, 8.0, 2.0], [1.0, 9.0, 3.0, 4.0]])  # images 0, 1 (here) against texts 0..3
    t2i = torch.tensor([[9.0, 7.0, 1.0, 2.0], [0.0, 9.0, 5.0, 6.0]])  # texts 0, 1 (here) against images 0..3
    positives = torch.tensor([[True, False, False, False], [False, True, False, True]])  # image 1 is also image 3
    mined = hardest_negatives(i2t, positives, t2i)
    assert mined.text_for_image.tolist() == [2, 2]  # image 0: text 2 (8.0); image 1: text 3 is its own, text 2 (3.0)
    assert mined.image_for_text.tolist() == [1, 2]  # text 0: image 1 (7.0); text 1: image 3 is its own, image 2 (5.0)
    rows = torch.arange(2)
    for seed in range(20):
        drawn = sampled_negatives(i2t, positives, torch.Generator().manual_seed(seed), t2i)
        assert not positives[rows, drawn.text_for_image].any() and not positives[rows, drawn.image_for_text].any()


def test_sampled_itm_negatives_follow_the_softmax_and_never_match() -> None:
    """LAVIS' rule: a non-matching pair drawn in proportion to the softmax of its logit; the same generator state
    draws the same pairs; a row with nothing to draw gets no negative."""
    logits = torch.tensor([[5.0, 0.0, math.log(3.0)], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    positives = same_image(["a", "b", "c"])
    draws = [sampled_negatives(logits, positives, torch.Generator().manual_seed(seed)) for seed in range(2000)]
    texts_of_image_0 = torch.stack([d.text_for_image[0] for d in draws])
    assert set(texts_of_image_0.tolist()) == {1, 2}  # never its own text 0
    assert (texts_of_image_0 == 2).float().mean() == pytest.approx(0.75, abs=0.03)  # e^{log 3} : e^0 = 3 : 1
    images_of_text_0 = torch.stack([d.image_for_text[0] for d in draws])
    assert set(images_of_text_0.tolist()) == {1, 2}  # column 0 of images 1 and 2: logits 0 and 0, an even draw
    assert (images_of_text_0 == 1).float().mean() == pytest.approx(0.5, abs=0.04)
    again = sampled_negatives(logits, positives, torch.Generator().manual_seed(7))
    assert torch.equal(again.text_for_image, draws[7].text_for_image)
    assert torch.equal(again.image_for_text, draws[7].image_for_text)
    alone = sampled_negatives(torch.ones(2, 2), same_image(["x", "x"]), torch.Generator().manual_seed(0))
    assert alone.image_rows.numel() == 0 and alone.text_for_image.numel() == 0
    with pytest.raises(ConfigError, match="itm_negatives"):
        HyperbolicAlignmentModule(model=TinyBlip2Retrieval(path="unused"), itm_negatives="random")


def test_itm_logits_are_the_models_own_matching_head(tiny_blip2_dir: Path) -> None:
    module = make_module(tiny_blip2_dir)
    batch = train_batch(module.processor, 3)
    tokens = module.tokenize(batch["captions"])
    model = Blip2ForImageTextRetrieval.from_pretrained(tiny_blip2_dir).eval()
    with torch.no_grad():
        reference = model(
            pixel_values=batch["pixel_values"], use_image_text_matching_head=True, **tokens
        ).logits_per_image
        ours = itm_logits(model, vision_features(model, batch["pixel_values"]), **tokens)
    assert ours.shape == (3, 2)
    assert torch.allclose(ours, reference, atol=1e-6)


class Record(Callback):
    def __init__(self) -> None:
        self.logged: list[dict] = []

    def on_train_batch_end(self, trainer, *args) -> None:
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def test_entailment_and_itm_train_a_few_steps_on_the_hardest_pairs(
    tiny_blip2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = make_module(tiny_blip2_dir, space="lorentz", entailment_weight=0.2, itm_weight=1.0)
    module.configure_model()
    head_before = module.blip2.itm_head.weight.detach().clone()
    assert module.blip2.itm_head.weight.requires_grad  # trained only with itm_weight > 0
    default = make_module(tiny_blip2_dir)
    default.configure_model()
    assert not default.blip2.itm_head.weight.requires_grad
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    original = alignment_module.hardest_negatives

    def spy(logits: torch.Tensor, positives: torch.Tensor, t2i: torch.Tensor | None = None):
        assert t2i is None  # one process: mined within the batch
        mined = original(logits, positives, t2i)
        seen.append((logits.detach().clone(), positives.clone(), mined.text_for_image))
        return mined

    monkeypatch.setattr(alignment_module, "hardest_negatives", spy)
    torch.manual_seed(0)  # the data order and dropout: the same few steps whichever tests ran before
    record = Record()
    trainer = quiet_trainer(tmp_path, max_steps=4, callbacks=[record], log_every_n_steps=1)
    trainer.fit(module, datamodule=ShapeCaptionData(module.processor, num_images=8, repeat=4))
    assert len(seen) == 4
    for logits, positives, mined_texts in seen:
        masked = logits.masked_fill(positives, float("-inf"))
        assert torch.equal(mined_texts, masked.argmax(dim=1))  # each image's hardest non-matching caption
    for step in record.logged:
        for name in ("train/loss", "train/loss_itc", "train/loss_entailment", "train/loss_itm"):
            assert math.isfinite(step[name]), name
        assert step["train/loss"] == pytest.approx(
            step["train/loss_itc"] + 0.2 * step["train/loss_entailment"] + step["train/loss_itm"], rel=1e-5
        )
    assert not torch.equal(module.blip2.itm_head.weight.detach(), head_before)  # the ITM head trained
    assert record.logged[-1]["train/loss_itm"] < record.logged[0]["train/loss_itm"]


def test_sampled_itm_negatives_come_from_the_step_generator(
    tiny_blip2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``itm_negatives: sampled`` draws through the step's own generator: two fits from the same seed draw the same
    negatives, none of them a matching pair."""
    drawn: list[list[torch.Tensor]] = [[], []]
    original = alignment_module.sampled_negatives
    for run in drawn:

        def spy(logits: torch.Tensor, positives: torch.Tensor, generator: torch.Generator, t2i=None, run: list = run):
            mined = original(logits, positives, generator, t2i)
            assert not positives[mined.image_rows, mined.text_for_image].any()
            run.append(mined.text_for_image)
            return mined

        monkeypatch.setattr(alignment_module, "sampled_negatives", spy)
        module = make_module(tiny_blip2_dir, itm_weight=1.0, itm_negatives="sampled")
        torch.manual_seed(0)
        trainer = quiet_trainer(tmp_path, max_steps=2)
        trainer.fit(module, datamodule=ShapeCaptionData(module.processor, num_images=8, repeat=4))
    assert len(drawn[0]) == 2 and all(torch.equal(a, b) for a, b in zip(*drawn, strict=True))
