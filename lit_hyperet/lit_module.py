"""``HyperETLitModule``: a multimodal LLM (the LLaVA or the MemVP family) with HyperET on its frozen vision tower."""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lit_hyperet.class_paths import to_spec
from lit_hyperet.hyperet import HyperETConfig, adapted_module_names, adapted_width, hyperet_report, summarize_report
from lit_hyperet.hyperet_config import LAYOUT_HPARAMS as HYPERET_LAYOUT_HPARAMS
from lit_hyperet.models.llava import LoraSettings
from lit_hyperet.models.loading import LanguageModelSource, parameter_counts
from lit_hyperet.non_finite import (
    NON_FINITE_POLICIES,
    NonFiniteLossError,
    NonFinitePolicy,
    all_ranks_finite,
    stop_message,
)
from lit_hyperet.schedule import WarmupCosineLR
from lit_hyperet.sharding import data_parallel_mesh, gathered, shard_model
from lit_hyperet.trainable_module import TrainableOnlyModule, as_dataclass, as_source
from lit_hyperet.user_errors import ConfigError

log = logging.getLogger(__name__)
SKIPPED_STEPS_KEY = "non_finite_skipped_steps"


def _drop_gradients(optimizer: Any) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None  # torch optimisers leave parameters without a gradient as they are


class HyperETLitModule(TrainableOnlyModule):
    """Trains HyperET matrices and the family's adapters on a multimodal LLM; evaluates by greedy generation.

    The family is the model source's: LLaVA (``PretrainedLlava``, ``LlavaFromParts``, ``TinyLlava``: projector,
    visual tokens, LoRA) or MemVP (``MemVPFromParts``, ``TinyMemVP``: projector, FFN memory E1 / E2, CLIP MLP
    adapters, no LoRA). The family builds the model and names its parameter groups; everything else is shared.

    Args:
        model: where the model comes from (a :class:`~lit_hyperet.models.loading.LanguageModelSource`).
        hyperet: the HyperET configuration; ``None`` trains the baseline without HyperET.
        train_projector: train the multimodal projector.
        lora: LoRA on the language model (LLaVA only; never the vision tower or projector); ``None`` keeps the LLM
            frozen.
        optimizer: optimiser factory taking parameter groups (LightningCLI ``class_path`` style).
        lr_scheduler: scheduler factory taking the optimiser; ``WarmupCosineLR`` gets its total steps from the
            trainer when its ``total_steps`` is -1.
        hyperet_lr: learning rate of the HyperET matrices (paper's ScienceQA recipe: 1.125e-3).
        projector_lr: learning rate of the projector.
        lora_lr: learning rate of the LoRA matrices.
        adapter_lr: learning rate of MemVP's memory (E1, E2) and CLIP MLP adapters. MemVP's recipe trains every
            tensor with one rate (1.125e-3): set ``hyperet_lr``, ``projector_lr`` and ``adapter_lr`` alike.
        weight_decay: decoupled weight decay for parameters with ≥ 2 dims (1-D parameters get none).
        max_new_tokens: greedy generation length in validation/test/predict (a datamodule's
            ``eval_max_new_tokens``, e.g. 1 for answer-prefix decoding, takes precedence).
        gradient_checkpointing: activation checkpointing inside the transformers model.
        non_finite: a non-finite loss (or gradient norm, when ``trainer.gradient_clip_val`` is set) ``stop``s the run
            with an error, or ``skip``s the step: its gradients are dropped, so no parameter changes (the step still
            counts, and the schedule moves on).
        max_skipped_steps: with ``skip``, the run stops once more steps than this were skipped.
    """

    #: Hyper-parameters (dotted) that change which tensors are trainable: a checkpoint disagreeing in one of them
    #: cannot be loaded onto the configured model (``hyperet`` / ``lora``: the whole section on or off).
    LAYOUT_HPARAMS = (
        "model.class_path",
        *HYPERET_LAYOUT_HPARAMS,
        "train_projector",
        "lora",
        "lora.r",
        "lora.target_modules",
        "model.init_args.memvp.slots",
        "model.init_args.memvp.projector_hidden",
        "model.init_args.memvp.adapter_dim",
        "model.init_args.memvp.modality_embedding",
    )

    def __init__(
        self,
        model: LanguageModelSource,
        hyperet: HyperETConfig | None = None,
        train_projector: bool = True,
        lora: LoraSettings | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable = WarmupCosineLR,
        hyperet_lr: float = 1.125e-3,
        projector_lr: float = 2e-4,
        lora_lr: float = 2e-4,
        adapter_lr: float = 1.125e-3,
        weight_decay: float = 0.0,
        max_new_tokens: int = 32,
        gradient_checkpointing: bool = False,
        non_finite: NonFinitePolicy = "stop",
        max_skipped_steps: int = 10,
    ) -> None:
        super().__init__()
        # Not logged as they are (internal keys, the optimiser's unused lr): RunRecord logs the values used.
        self.save_hyperparameters(logger=False)
        # LightningCLI hands over its parsed (plain) config; objects built in Python are converted so that checkpoints
        # load with torch.load(weights_only=True).
        for key, value in list(self.hparams.items()):
            self.hparams[key] = to_spec(value)
        self.source = as_source(model, LanguageModelSource)
        self.hyperet_config: HyperETConfig | None = as_dataclass(hyperet, HyperETConfig)
        self.lora_settings: LoraSettings | None = as_dataclass(lora, LoraSettings)
        # Resolved when training starts, so loading a checkpoint for evaluation or export builds no optimiser.
        self._optimizer_spec, self._scheduler_spec = optimizer, lr_scheduler
        self.processor = self.source.load_processor()
        self.llava: nn.Module | None = None
        self.val_metric: Any = None
        self.test_metric: Any = None
        if non_finite not in NON_FINITE_POLICIES:
            raise ConfigError(f"non_finite must be one of {NON_FINITE_POLICIES}, got {non_finite!r}")
        self.skipped_steps = 0
        self._drop_update = False

    # ------------------------------------------------------------------------------------------------ model

    def configure_model(self) -> None:
        """Build the model once; under ``FSDP2Strategy`` (a device mesh is set) shard it with FSDP2.

        The mixed-precision policy follows ``trainer.precision`` (``bf16-mixed``: bf16 compute, float32 masters and
        gradient reduction; ``32-true``: float32 throughout).
        """
        if self.llava is not None:
            return
        self.llava = self.source.build(
            hyperet=self.hyperet_config,
            train_projector=self.hparams.train_projector,
            lora=self.lora_settings,
            gradient_checkpointing=self.hparams.gradient_checkpointing,
        )
        self.llava.train()  # from_pretrained returns eval mode; Lightning switches modes per loop from here
        if self.device_mesh is not None:
            data_parallel = data_parallel_mesh(self.device_mesh, type(self).__name__)
            shard_model(self.llava, data_parallel, str(self.trainer.precision))

    def forward(self, **batch: Any) -> Any:
        """The model's forward (``self.llava``: the family's model, a LLaVA or a ``MemVPModel``)."""
        return self.llava(**batch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable tensors (HyperET, projector, LoRA or MemVP's adapters), and the count of skipped
        non-finite steps."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[SKIPPED_STEPS_KEY] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the tensors are the configured model's trainable set (naming the file), before Lightning loads them;
        a resumed run goes on counting skipped non-finite steps."""
        super().on_load_checkpoint(checkpoint)
        self.skipped_steps = int(checkpoint.get(SKIPPED_STEPS_KEY, 0))

    # ------------------------------------------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> Any:
        """The family's parameter groups (HyperET / projector / LoRA, or HyperET / projector / memory / vision
        adapters) with their own lr; no weight decay on 1-D parameters (biases, diagonal HyperET matrices)."""
        hp = self.hparams
        lrs = {
            "hyperet": hp.hyperet_lr,
            "projector": hp.projector_lr,
            "lora": hp.lora_lr,
            "memory": hp.adapter_lr,
            "vision_adapters": hp.adapter_lr,
        }
        groups = []
        for name, params in self.source.trainable_groups(self.llava).items():
            for decay in (True, False):
                chosen = [p for _, p in params if p.requires_grad and (p.dim() >= 2) == decay]
                if chosen:
                    wd = self.hparams.weight_decay if decay else 0.0
                    suffix = "" if decay else "_no_decay"
                    groups.append({"params": chosen, "lr": lrs[name], "weight_decay": wd, "name": name + suffix})
        if not groups:
            raise ConfigError("nothing to train: enable HyperET, the projector, LoRA or a MemVP model")
        return self.build_optimization(groups, self._optimizer_spec, self._scheduler_spec)

    # ------------------------------------------------------------------------------------------------ steps

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """LM loss on the tokens the batch's ``labels`` mark."""
        # No KV cache in training: recomputed (checkpointed) layers would append to it a second time.
        out = self.llava(**self._model_inputs(batch), labels=batch["labels"], use_cache=False)
        if all_ranks_finite(out.loss, self.attached_strategy()):
            self.log("train/loss", out.loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
            return out.loss
        self._non_finite("loss", float(out.loss.detach()))
        # Skipped: a finite zero loss keeps backward (and DDP / FSDP2 collectives) running on every rank alike, and
        # on_before_optimizer_step drops the step's gradients. (Lightning refuses a None loss when distributed.)
        self._drop_update = True
        return out.loss.nan_to_num(0.0, 0.0, 0.0) * 0.0

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Drop the gradients of a skipped step, so the optimiser leaves every parameter as it is."""
        if self._drop_update:
            _drop_gradients(optimizer)
            self._drop_update = False

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Lightning's clipping, then the non-finite check of the clipped gradients' norm (when clipping is on)."""
        if gradient_clip_val is None:
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: the norm over all shards
        if not all_ranks_finite(norm, self.attached_strategy()):
            self._non_finite("gradient norm", float(norm))
            _drop_gradients(optimizer)

    def _non_finite(self, what: str, value: float) -> None:
        """Stop (``NonFiniteLossError``) or count a skipped step, as ``non_finite`` says."""
        if self.hparams.non_finite == "stop":
            raise NonFiniteLossError(stop_message(what, value, self.global_step))
        self.skipped_steps += 1
        log.warning(
            "skipped step %d: non-finite %s (%s); %d skipped", self.global_step, what, value, self.skipped_steps
        )
        self.log("train/skipped_non_finite_steps", float(self.skipped_steps))
        if self.skipped_steps > self.hparams.max_skipped_steps:
            raise NonFiniteLossError(
                f"{self.skipped_steps} steps with a non-finite {what} (more than max_skipped_steps "
                f"{self.hparams.max_skipped_steps}); training stopped at step {self.global_step}"
            )

    def _metric(self, stage: str) -> Any:
        """The stage's metric, built on first use by the datamodule's ``build_metric`` (exact match without one)."""
        attr = f"{stage}_metric"
        if getattr(self, attr) is None:
            datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            build = getattr(datamodule, "build_metric", None)
            if build is None:
                from lit_hyperet.metrics import ExactMatch as build  # a datamodule without its own metric
            setattr(self, attr, build().to(self.device))
        return getattr(self, attr)

    def generate_texts(self, batch: dict[str, Any]) -> list[str]:
        """Greedy generation from left-padded prompts; returns the decoded new tokens."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        max_new = getattr(datamodule, "eval_max_new_tokens", None) or self.hparams.max_new_tokens
        tokenizer = self.processor.tokenizer
        inputs = self._model_inputs(batch)
        generated = self.llava.generate(
            **inputs,
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._metric("val").update(self.generate_texts(batch), batch["meta"])

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._metric("test").update(self.generate_texts(batch), batch["meta"])

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, str]]:
        return [{"id": i, "text": t} for i, t in zip(batch["ids"], self.generate_texts(batch), strict=True)]

    def on_validation_epoch_end(self) -> None:
        self._log_metric("val", self._metric("val"))
        self._log_hyperet_report()

    def on_test_epoch_end(self) -> None:
        self._log_metric("test", self._metric("test"))
        self._log_hyperet_report()

    def on_fit_start(self) -> None:
        """Log trainable-parameter counts and what HyperET adapted as run parameters."""
        if self.logger is None:
            return
        groups = self.source.trainable_groups(self.llava)
        counts = {f"params/{k}": v for k, v in parameter_counts(self.llava, groups).items()}  # DTensor numel: global
        counts["params/hyperet_adapted_modules"] = len(adapted_module_names(self.llava))
        if (width := adapted_width(self.llava)) is not None:
            counts["params/hyperet_n"] = width  # n of the adapted n×n weights, as the sweep table shows it
        self.logger.log_hyperparams(counts)

    # ------------------------------------------------------------------------------------------------ helpers

    def _model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch entries the family's model reads (``pixel_values``: only when the batch has images)."""
        return {k: batch[k] for k in self.source.input_names if batch.get(k) is not None}

    def _log_metric(self, stage: str, metric: Any) -> None:
        results = metric.compute()
        self.log_dict({f"{stage}/{k}": v for k, v in results.items()}, sync_dist=False)
        metric.reset()

    def hyperet_report(self) -> dict[str, dict[str, float | int]]:
        """:func:`~lit_hyperet.hyperet.hyperet_report` of the model; under FSDP2 the adapted layers are gathered
        around it (a collective: every rank calls it)."""
        with gathered(self.llava, adapted_module_names(self.llava)):
            return hyperet_report(self.llava)

    def _log_hyperet_report(self) -> None:
        if self.hyperet_config is None or self.trainer.sanity_checking:
            return
        summary = summarize_report(self.hyperet_report())
        self.log("hyperet/identity_deviation_max", float(summary["identity_deviation_max"]))
        self.log("hyperet/clamp_fraction_mean", float(summary["clamp_fraction_mean"]))
