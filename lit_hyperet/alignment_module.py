"""``HyperbolicAlignmentModule``: BLIP-2 image–text contrastive learning in Euclidean, Poincaré or Lorentz space.

A frozen vision tower (optionally with HyperET), a trainable Q-Former side (query tokens, Q-Former, text embeddings,
projections), and the contrastive head of :mod:`lit_hyperet.alignment` (space, query aggregation, learnable
temperature / curvature / embedding scale, label-smoothed symmetric InfoNCE). Random Text Pruning is applied to the
caption strings of training batches before tokenisation, never in evaluation. Validation and test rank every caption
of the evaluated images against every image (``ImageTextRecall``) with the space's similarity and the evaluation
query aggregation, without temperature, and summarise the radius (per caption specificity level where the
annotations give levels). Optional terms, off by default: MERU's entailment loss and image–text matching with hard
negatives through the model's own ITM head.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.aggregation import CatMetric, MeanMetric
from torchmetrics.functional import spearman_corrcoef

from lit_hyperet.alignment import (
    ENTAILMENT_SPACES,
    EVAL_QUERY_AGGREGATIONS,
    ITM_NEGATIVES,
    MERU_APERTURE,
    QUERY_AGGREGATIONS,
    RTP_MODES,
    SPACES,
    TEMPERATURE_RANGE,
    AlignmentOutput,
    ContrastiveAlignment,
    QueryAggregation,
    RtpMode,
    Space,
    hardest_negatives,
    itm_loss,
    prune_captions,
    same_image,
    sampled_negatives,
)
from lit_hyperet.class_paths import to_spec
from lit_hyperet.hyperet import HyperETConfig, adapted_module_names, adapted_width
from lit_hyperet.hyperet_config import LAYOUT_HPARAMS as HYPERET_LAYOUT_HPARAMS
from lit_hyperet.models.blip2 import (
    CALLED_PARTS,
    Blip2RetrievalSource,
    build_blip2_retrieval,
    count_parameters,
    image_query_embeddings,
    itm_logits,
    text_embeddings,
    trainable_groups,
    vision_features,
)
from lit_hyperet.models.loading import set_image_size
from lit_hyperet.non_finite import NonFiniteLossError, all_ranks_finite
from lit_hyperet.schedule import WarmupCosineLR
from lit_hyperet.sharding import clip_gradients, data_parallel_mesh, shard_parts
from lit_hyperet.trainable_module import TrainableOnlyModule, as_dataclass, as_source
from lit_hyperet.user_errors import ConfigError

RADIUS_METRICS = ("radius_image_mean", "radius_text_mean", "radius_saturated_fraction")
#: Logged per specificity level ``k`` of the evaluated captions (when the annotations give levels): the mean caption
#: radius ``radius_text_level<k>_mean``, and over all of them the Spearman correlation of radius with level.
LEVEL_METRIC = "radius_text_level{level}_mean"
SPEARMAN_METRIC = "radius_text_specificity_spearman"


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} {value!r} is not one of {', '.join(choices)}")


class HyperbolicAlignmentModule(TrainableOnlyModule):
    """Trains BLIP-2's Q-Former side (and HyperET on the frozen vision tower, when configured) with image–text
    contrastive learning in a chosen space; evaluates image↔text retrieval (R@1/5/10 both ways, percent).

    Args:
        model: where the ``Blip2ForImageTextRetrieval`` comes from (``PretrainedBlip2Retrieval`` or
            ``TinyBlip2Retrieval``).
        space: ``euclidean`` (BLIP-2's ITC), ``poincare_cosine`` (the paper's stated recipe: exp0 into the Poincaré
            ball, then cosine; equal to ``euclidean``), ``poincare_distance`` (− Poincaré distance) or ``lorentz``
            (MERU: − Lorentzian distance).
        curvature: ``c > 0`` of the ball / hyperboloid (initial value when learnt).
        learn_curvature: learn ``c`` (stored as ``log c``, kept in ``[c/10, 10·c]``).
        embedding_scale: ``α`` in ``(0, 1]`` multiplying embeddings before the exponential map; ``None``: ``1/√D``.
        learn_embedding_scale: learn ``α`` (stored as ``log α``, kept ``≤ 1``).
        temperature: initial temperature (learnt, kept in ``[0.001, 0.5]``); logits are similarity / temperature.
        label_smoothing: label smoothing of the symmetric InfoNCE (BLIP-2: 0.1).
        gather_negatives: with several processes (DDP, FSDP2), contrast each process's pairs against the pairs of
            every process, as BLIP-2 gathers its features over the GPUs (the other processes' features enter as
            constants, as in open_clip); ``False``: each process contrasts its own batch.
        query_aggregation: training score of an image–text pair from the image's queries: ``max`` (BLIP-2),
            ``rqs`` (Random Query Selection: one uniformly drawn query per image per step) or ``mean``.
        eval_query_aggregation: ``max`` or ``mean`` in validation / test.
        rtp_prob: Random Text Pruning: probability that a training caption is pruned (0: never).
        rtp_mode: ``prefix`` (a random strictly shorter, non-empty prefix of the words) or ``drop_words`` (each word
            dropped with probability 1/2, at least one kept); see :mod:`lit_hyperet.alignment.text_pruning`.
        hyperet: HyperET on the vision tower (default targets: the q and v slices of its fused ``qkv``); ``None``
            keeps the tower as it is.
        optimizer: optimiser factory taking parameter groups (LightningCLI ``class_path`` style).
        lr_scheduler: scheduler factory taking the optimiser; ``WarmupCosineLR`` gets its total steps from the
            trainer when its ``total_steps`` is -1.
        lr: learning rate of the Q-Former side and the head's scalars (BLIP-2 stage 1: 1e-4).
        hyperet_lr: learning rate of the HyperET matrices; ``None``: ``lr``.
        weight_decay: decoupled weight decay of parameters with ≥ 2 dims (BLIP-2: 0.05); none on 1-D ones and scalars.
        max_text_length: captions are truncated to this many tokens (``[CLS]`` and ``[SEP]`` included; BLIP-2: 32).
        entailment_weight: weight of MERU's entailment loss (0: off; MERU: 0.2): each caption's cone should contain
            the image query that scores its pair (:mod:`lit_hyperet.alignment.entailment`). Hyperbolic spaces only;
            with ``poincare_cosine`` it is the only term of the loss that sees the radius.
        entailment_aperture: MERU's ``K`` in the half aperture ``asin(2K / (√c‖t‖))`` (MERU: 0.1).
        itm_weight: weight of image–text matching (0: off): the model's ITM head, trained, scores each positive pair
            and a negative text of each image and image of each text mined from the batch's contrastive logits
            (:mod:`lit_hyperet.alignment.itm`).
        itm_negatives: ``hardest`` (the highest-scoring non-matching pair) or ``sampled`` (LAVIS: drawn in
            proportion to the softmax of the logits, from a per-step generator).
        image_size: process images at this square resolution (LAVIS' retrieval fine-tuning: 364) instead of the
            processor's own; the vision tower interpolates its position embeddings. ``None``: the processor's.
        gradient_checkpointing: activation checkpointing inside the transformers model (non-reentrant).

    Runs on one device, with DDP, or sharded with FSDP2 (``FSDP2Strategy``, see :meth:`configure_model`).
    """

    #: Hyper-parameters (dotted) that change which tensors are trainable; the space does not (every space has the
    #: same head parameters), so a checkpoint of one space can be evaluated in another.
    LAYOUT_HPARAMS = (
        "model.class_path",
        *HYPERET_LAYOUT_HPARAMS,
        "learn_curvature",
        "learn_embedding_scale",
    )

    def __init__(
        self,
        model: Blip2RetrievalSource,
        space: Space = "poincare_cosine",
        curvature: float = 1.0,
        learn_curvature: bool = False,
        embedding_scale: float | None = None,
        learn_embedding_scale: bool = True,
        temperature: float = 0.07,
        label_smoothing: float = 0.1,
        gather_negatives: bool = True,
        query_aggregation: QueryAggregation = "max",
        eval_query_aggregation: Literal["max", "mean"] = "max",
        rtp_prob: float = 0.0,
        rtp_mode: RtpMode = "prefix",
        hyperet: HyperETConfig | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable = WarmupCosineLR,
        lr: float = 1e-4,
        hyperet_lr: float | None = None,
        weight_decay: float = 0.05,
        max_text_length: int = 32,
        entailment_weight: float = 0.0,
        entailment_aperture: float = MERU_APERTURE,
        itm_weight: float = 0.0,
        itm_negatives: Literal["hardest", "sampled"] = "hardest",
        image_size: int | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        _choice("space", space, SPACES)
        _choice("query_aggregation", query_aggregation, QUERY_AGGREGATIONS)
        _choice("eval_query_aggregation", eval_query_aggregation, EVAL_QUERY_AGGREGATIONS)
        _choice("rtp_mode", rtp_mode, RTP_MODES)
        _choice("itm_negatives", itm_negatives, ITM_NEGATIVES)
        if not 0.0 <= rtp_prob <= 1.0:
            raise ConfigError(f"rtp_prob must be in [0, 1], got {rtp_prob}")
        if not curvature > 0:
            raise ConfigError(f"curvature must be > 0, got {curvature}")
        if embedding_scale is not None and not 0 < embedding_scale <= 1:
            raise ConfigError(f"embedding_scale must be in (0, 1] (or null for 1/sqrt(D)), got {embedding_scale}")
        if not TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1]:
            raise ConfigError(f"temperature must be in {list(TEMPERATURE_RANGE)}, got {temperature}")
        if not 0 <= label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if max_text_length < 2:
            raise ConfigError(f"max_text_length must be >= 2 ([CLS] and [SEP]), got {max_text_length}")
        if entailment_weight < 0 or itm_weight < 0:
            raise ConfigError(f"entailment_weight and itm_weight must be >= 0, got {entailment_weight}, {itm_weight}")
        if entailment_weight > 0 and space not in ENTAILMENT_SPACES:
            raise ConfigError(
                f"entailment_weight > 0 needs a hyperbolic space ({', '.join(ENTAILMENT_SPACES)}): space {space!r} "
                "has unit vectors and no entailment cones; set entailment_weight: 0 or change the space"
            )
        if not entailment_aperture > 0:
            raise ConfigError(f"entailment_aperture must be > 0, got {entailment_aperture}")
        if image_size is not None and image_size < 1:
            raise ConfigError(f"image_size must be a positive pixel count (or null), got {image_size}")
        # Not logged as they are (internal keys): RunRecord logs the values used.
        self.save_hyperparameters(logger=False)
        # Objects built in Python are stored as plain specs, so checkpoints load with torch.load(weights_only=True).
        for key, value in list(self.hparams.items()):
            self.hparams[key] = to_spec(value)
        self.source = as_source(model, Blip2RetrievalSource)
        self.hyperet_config: HyperETConfig | None = as_dataclass(hyperet, HyperETConfig)
        self._optimizer_spec, self._scheduler_spec = optimizer, lr_scheduler
        self.processor = self.source.load_processor()
        if image_size is not None:
            set_image_size(self.processor.image_processor, image_size)
        self.blip2: nn.Module | None = None
        self.head: ContrastiveAlignment | None = None
        self.val_metric: Any = None
        self.test_metric: Any = None
        self.val_radius: nn.ModuleDict | None = None
        self.test_radius: nn.ModuleDict | None = None
        self.val_levels: nn.ModuleDict | None = None
        self.test_levels: nn.ModuleDict | None = None

    # ------------------------------------------------------------------------------------------------ model

    def configure_model(self) -> None:
        """Build the model and the contrastive head once; under ``FSDP2Strategy`` (a device mesh is set) shard it.

        FSDP2 units: every vision and Q-Former layer, then each part of the model that is called directly (vision
        tower, Q-Former, text embeddings, projections, ITM head; :data:`~lit_hyperet.models.blip2.build.CALLED_PARTS`).
        The query tokens and the head's 0-dim temperature, curvature and embedding scale stay replicated tensors whose
        gradients ``FSDP2Strategy`` averages over the ranks. Mixed precision follows ``trainer.precision``.
        """
        if self.blip2 is not None:
            return
        mesh = self.device_mesh
        data_parallel = data_parallel_mesh(mesh, type(self).__name__) if mesh is not None else None
        self.blip2 = build_blip2_retrieval(
            self.source,
            hyperet=self.hyperet_config,
            train_itm=self.hparams.itm_weight > 0,
            gradient_checkpointing=self.hparams.gradient_checkpointing,
        )
        self.blip2.train()  # from_pretrained returns eval mode; Lightning switches modes per loop from here
        if data_parallel is not None:
            shard_parts(self.blip2, data_parallel, CALLED_PARTS, str(self.trainer.precision))
        positions = self.blip2.config.qformer_config.max_position_embeddings
        if self.hparams.max_text_length > positions:
            raise ConfigError(f"max_text_length {self.hparams.max_text_length} exceeds the Q-Former's {positions}")
        hp = self.hparams
        self.head = ContrastiveAlignment(
            dim=self.blip2.config.image_text_hidden_size,
            space=hp.space,
            curvature=hp.curvature,
            learn_curvature=hp.learn_curvature,
            embedding_scale=hp.embedding_scale,
            learn_embedding_scale=hp.learn_embedding_scale,
            temperature=hp.temperature,
            label_smoothing=hp.label_smoothing,
            query_aggregation=hp.query_aggregation,
            eval_query_aggregation=hp.eval_query_aggregation,
            entailment_weight=hp.entailment_weight,
            entailment_aperture=hp.entailment_aperture,
        )

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor [B, …]`` of every process, concatenated in rank order; this process's rows keep their gradient,
        the others' are constants (each process's gradients come from its own loss; the strategy averages them)."""
        parts = list(self.all_gather(tensor.detach()).unbind(0))
        parts[self.global_rank] = tensor
        return torch.cat(parts)

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Captions → ``input_ids`` / ``attention_mask`` on the module's device (padded to the longest, truncated to
        ``max_text_length``)."""
        enc = self.processor.tokenizer(
            list(captions),
            padding="longest",
            truncation=True,
            max_length=self.hparams.max_text_length,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Per-query image embeddings ``(B, Q, D)``, not normalised."""
        self.configure_model()
        return image_query_embeddings(self.blip2, pixel_values)

    def text_embeddings(self, captions: list[str]) -> torch.Tensor:
        """Text ``[CLS]`` embeddings ``(T, D)`` of the captions as given (no pruning), not normalised."""
        self.configure_model()
        return text_embeddings(self.blip2, **self.tokenize(captions))

    def forward(self, pixel_values: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image embeddings (B, Q, D), text embeddings (T, D))``."""
        return self.image_embeddings(pixel_values), self.text_embeddings(captions)

    def training_captions(self, captions: list[str]) -> list[str]:
        """Random Text Pruning of a training batch's captions (in training mode with ``rtp_prob`` > 0; otherwise the
        captions unchanged)."""
        if not self.training or self.hparams.rtp_prob == 0:
            return list(captions)
        return prune_captions(captions, self.hparams.rtp_prob, self.hparams.rtp_mode, self.step_generator("rtp"))

    def step_seed(self, purpose: str) -> int:
        """The seed of this step's random draws for ``purpose``, from the run's seed, the step and the rank: the draws
        repeat on resume and leave torch's global CPU RNG alone, which the ranks' shares of the training data depend on
        (the caption sampler draws from it on every rank alike)."""
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        rank = self.global_rank if self._trainer is not None else 0
        step = self.global_step if self._trainer is not None else 0
        key = f"{seed}/{step}/{rank}/{purpose}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")

    def step_generator(self, purpose: str) -> torch.Generator:
        """A CPU generator for this step's random draws for ``purpose`` (RTP, RQS), seeded by :meth:`step_seed`."""
        return torch.Generator().manual_seed(self.step_seed(purpose))

    # ------------------------------------------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> Any:
        """Groups: Q-Former side (weight decay on ≥ 2-D parameters), HyperET (``hyperet_lr``), the head's scalars
        (no weight decay)."""
        hp = self.hparams
        lrs = {"qformer": hp.lr, "hyperet": hp.hyperet_lr if hp.hyperet_lr is not None else hp.lr}
        named = {**trainable_groups(self.blip2), "head": list(self.head.named_parameters())}
        groups = []
        for name, params in named.items():
            for decay in (True, False):
                chosen = [(n, p) for n, p in params if p.requires_grad and (p.dim() >= 2) == decay]
                # Parameters outside the parts FSDP2 shards (the query tokens) get a group of their own under every
                # strategy: under FSDP2 they stay replicated tensors, which torch's foreach kernels refuse to mix with
                # sharded DTensors in one group, and a checkpoint's groups must not depend on the strategy that wrote it
                replicated = [p for n, p in chosen if name != "head" and n.split(".")[0] not in CALLED_PARTS]
                rest = [p for n, p in chosen if not any(p is r for r in replicated)]
                suffix = "" if decay else "_no_decay"
                parts = {suffix: rest, suffix + "_replicated": replicated}
                for part, chosen_part in parts.items():
                    if chosen_part:
                        groups.append(
                            {
                                "params": chosen_part,
                                "lr": lrs.get(name, hp.lr),
                                "weight_decay": hp.weight_decay if decay else 0.0,
                                "name": name + part,
                            }
                        )
        return self.build_optimization(groups, self._optimizer_spec, self._scheduler_spec)

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Lightning's clipping; sharded, over the FSDP2 shards and the replicated tensors together."""
        if gradient_clip_val is None:
            return
        if self.device_mesh is None:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        clip_gradients(params, gradient_clip_val, gradient_clip_algorithm or "norm")

    # ------------------------------------------------------------------------------------------------ steps

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Symmetric InfoNCE over the batch's image–caption pairs (captions pruned by RTP first), plus the weighted
        entailment and ITM terms when they are on. Whatever the step draws from torch's CPU RNG (the model's dropout
        on the CPU) comes from a state seeded by :meth:`step_seed`, and the global CPU RNG is left as it was: the
        ranks' draws differ with their batches (captions of other lengths), and the caption sampler needs their global
        RNGs to agree."""
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.step_seed("cpu"))
            return self._training_step(batch)

    def _training_step(self, batch: dict[str, Any]) -> torch.Tensor:
        captions = self.training_captions(batch["captions"])
        self.configure_model()
        matching = self.hparams.itm_weight > 0
        features = vision_features(self.blip2, batch["pixel_values"])  # for the queries and the matching pairs
        image = image_query_embeddings(self.blip2, features=features)
        tokens = self.tokenize(captions)  # tokenised once, for the texts and for the matching pairs
        text = text_embeddings(self.blip2, **tokens)
        rqs = self.step_generator("rqs") if self.hparams.query_aggregation == "rqs" else None
        gather = self._gather if self.hparams.gather_negatives and self.world_size() > 1 else None
        out = self.head(image, text, batch.get("image_ids"), rqs, gather)
        loss = out.loss
        size = len(captions)
        if matching:
            itm = self.itm_loss(features, tokens, out, batch.get("image_ids"))
            self.log("train/loss_itm", itm.detach(), batch_size=size)
            loss = loss + self.hparams.itm_weight * itm
        if not all_ranks_finite(loss, self.attached_strategy()):
            raise NonFiniteLossError(
                f"non-finite loss ({float(loss.detach())}) at step {self.global_step}; training stopped. Lower "
                "the learning rate, or check the embedding scale and curvature"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        if out.entailment is not None or matching:  # train/loss is then more than the contrastive term
            self.log("train/loss_itc", out.contrastive.detach(), batch_size=size)
        if out.entailment is not None:
            self.log("train/loss_entailment", out.entailment.detach(), batch_size=size)
        self.log("train/contrastive_batch", float(out.contrasted), batch_size=size)
        self.log("train/temperature", self.head.temperature.detach(), batch_size=size)
        self.log("train/curvature", self.head.curvature.detach(), batch_size=size)
        self.log("train/embedding_scale", self.head.embedding_scale.detach(), batch_size=size)
        stats = self.head.radius_stats(image.detach(), text.detach())
        self.log("train/radius_image_mean", stats["image"].mean(), batch_size=size)
        self.log("train/radius_text_mean", stats["text"].mean(), batch_size=size)
        self.log("train/radius_saturated_fraction", stats["saturated"].mean(), batch_size=size)
        return loss

    def itm_loss(
        self, features: torch.Tensor, tokens: dict[str, torch.Tensor], out: AlignmentOutput, image_ids: list | None
    ) -> torch.Tensor:
        """Image–text matching over the ``B`` positive pairs and the negatives mined from the contrastive logits (pairs
        of the same image never count as negatives), scored by the model's ITM head. With negatives gathered over
        the processes they are mined among every process's pairs, as LAVIS does: the vision features of every process
        (with their gradient) and the tokens of every process (padded to ``max_text_length``) are gathered."""
        count = out.logits.shape[0]
        if out.gathered is None:
            positives = same_image(image_ids) if image_ids is not None else torch.eye(count, dtype=torch.bool)
            similarity, t2i, positives = out.logits, None, positives.to(out.logits.device)
            all_features, all_tokens = features, tokens
        else:
            similarity, t2i, positives = out.gathered
            pad = self.hparams.max_text_length - tokens["input_ids"].shape[1]
            pad_id = self.processor.tokenizer.pad_token_id or 0
            tokens = {k: F.pad(v, (0, pad), value=pad_id if k == "input_ids" else 0) for k, v in tokens.items()}
            all_features = self.all_gather(features, sync_grads=True).flatten(0, 1)
            all_tokens = {k: self.all_gather(v).flatten(0, 1) for k, v in tokens.items()}
        if self.hparams.itm_negatives == "sampled":
            mined = sampled_negatives(similarity, positives, self.step_generator("itm"), t2i)
        else:
            mined = hardest_negatives(similarity, positives, t2i)
        # the B positive pairs first, then each image with its negative text, then each text with its negative image
        images = torch.cat([features, features[mined.image_rows], all_features[mined.image_for_text]])
        texts = {
            k: torch.cat([tokens[k], all_tokens[k][mined.text_for_image], tokens[k][mined.text_rows]])
            for k in ("input_ids", "attention_mask")
        }
        return itm_loss(itm_logits(self.blip2, images, texts["input_ids"], texts["attention_mask"]), count)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def _evaluate(self, stage: str, batch: dict[str, Any]) -> None:
        """Points of the batch's images and of all their captions into the stage's recall metric and radius means."""
        captions: list[list[str]] = batch["captions"]
        flat = [caption for image_captions in captions for caption in image_captions]
        text_image = torch.tensor(
            [i for i, image_captions in enumerate(captions) for _ in image_captions], dtype=torch.long
        ).to(self.device)
        image = self.image_embeddings(batch["pixel_values"])
        text = self.text_embeddings(flat)
        self._metric(stage).update(self.head.to_space(image), self.head.to_space(text), text_image)
        stats = self.head.radius_stats(image, text)
        radius = self._radius(stage)
        radius["radius_image_mean"].update(stats["image"])
        radius["radius_text_mean"].update(stats["text"])
        radius["radius_saturated_fraction"].update(stats["saturated"])
        levels = batch.get("specificity") or []
        known = [i for i, image_levels in enumerate(levels) if image_levels is not None]
        if known:
            offsets = [0, *itertools.accumulate(len(c) for c in captions)]
            rows = [offsets[i] + k for i in known for k in range(len(captions[i]))]
            values = [level for i in known for level in levels[i]]
            per_level = self._levels(stage)
            per_level["radius"].update(stats["text"][torch.tensor(rows, device=stats["text"].device)])
            per_level["level"].update(torch.tensor(values, dtype=torch.float32, device=self.device))

    def on_validation_epoch_end(self) -> None:
        self._log_stage("val")

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")

    def on_fit_start(self) -> None:
        """Log trainable-parameter counts and what HyperET adapted as run parameters."""
        if self.logger is None:
            return
        counts = {f"params/{k}": v for k, v in count_parameters(self.blip2).items()}
        counts["params/head"] = sum(p.numel() for p in self.head.parameters() if p.requires_grad)
        counts["params/hyperet_adapted_modules"] = len(adapted_module_names(self.blip2))
        if (width := adapted_width(self.blip2)) is not None:
            counts["params/hyperet_n"] = width  # n of the adapted n×n weights, as the sweep table shows it
        self.logger.log_hyperparams(counts)

    # ------------------------------------------------------------------------------------------------ metrics

    def _metric(self, stage: str) -> Any:
        """The stage's ``ImageTextRecall``, built on first use, scoring with the head's evaluation similarity."""
        attr = f"{stage}_metric"
        if getattr(self, attr) is None:
            from lit_hyperet.tasks.captions.retrieval import ImageTextRecall

            setattr(self, attr, ImageTextRecall(scorer=self.head.eval_scores).to(self.device))
        return getattr(self, attr)

    def _radius(self, stage: str) -> nn.ModuleDict:
        attr = f"{stage}_radius"
        if getattr(self, attr) is None:
            setattr(self, attr, nn.ModuleDict({name: MeanMetric() for name in RADIUS_METRICS}).to(self.device))
        return getattr(self, attr)

    def _levels(self, stage: str) -> nn.ModuleDict:
        attr = f"{stage}_levels"
        if getattr(self, attr) is None:
            setattr(self, attr, nn.ModuleDict({"radius": CatMetric(), "level": CatMetric()}).to(self.device))
        return getattr(self, attr)

    def _log_stage(self, stage: str) -> None:
        """Log the stage's recall (percent, ``i2t_R@1`` …; MLflow stores them without ``@``), radius means and, with
        specificity levels, the mean caption radius per level and its Spearman correlation with the level; then reset
        them."""
        metric = self._metric(stage)
        if getattr(metric, "update_called", True):
            self.log_dict({f"{stage}/{k}": v for k, v in metric.compute().items()}, sync_dist=False)
        metric.reset()
        for name, mean in self._radius(stage).items():
            if mean.update_called:
                self.log(f"{stage}/{name}", mean.compute(), sync_dist=False)
            mean.reset()
        per_level = self._levels(stage)
        if per_level["radius"].update_called:
            radius, level = (per_level[k].compute().double().flatten() for k in ("radius", "level"))
            for value in sorted(set(level.tolist())):
                name = LEVEL_METRIC.format(level=int(value))
                self.log(f"{stage}/{name}", radius[level == value].mean(), sync_dist=False)
            self.log(f"{stage}/{SPEARMAN_METRIC}", specificity_spearman(radius, level), sync_dist=False)
        for cat in per_level.values():
            cat.reset()


def specificity_spearman(radius: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of caption radius with specificity level (ties get their average rank); ``NaN``
    with fewer than two captions or a constant side."""
    if radius.numel() < 2 or radius.unique().numel() < 2 or level.unique().numel() < 2:
        return torch.tensor(float("nan"), dtype=torch.float64)
    return spearman_corrcoef(radius, level)
