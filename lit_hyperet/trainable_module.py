"""``TrainableOnlyModule``: what the project's LightningModules share.

A frozen model is built from a model source in ``configure_model``; only the adapters and heads train, so checkpoints
hold only the trainable tensors and a module is rebuilt from a checkpoint's stored hyper-parameters without running
anything the checkpoint names (:mod:`lit_hyperet.checkpoints`). Every module exposes ``processor`` (set in
``__init__``), which the CLI links into the datamodule. ``LAYOUT_HPARAMS`` names the hyper-parameters that change
which tensors are trainable: a checkpoint disagreeing in one of them cannot be loaded onto the configured model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lit_hyperet.checkpoints import CheckpointError, module_from_checkpoint
from lit_hyperet.class_paths import callable_from_spec, instantiate, is_spec
from lit_hyperet.models.loading import ModelSource
from lit_hyperet.run_record import FIT_RUN_KEY, mlflow_loggers
from lit_hyperet.schedule import WarmupCosineLR


def as_source(value: ModelSource | dict[str, Any], base: type[ModelSource] = ModelSource) -> ModelSource:
    """A model source, or one built from a ``class_path`` / ``init_args`` dict (an allowed subclass of ``base``)."""
    if isinstance(value, base):
        return value
    if is_spec(value):
        return instantiate(value, base=base)
    raise TypeError(f"model must be a {base.__name__} or a class_path/init_args dict, got {value!r}")


def as_dataclass(value: Any, cls: type) -> Any:
    """``value`` as a ``cls`` dataclass (from a dict of its fields); ``None`` stays ``None``."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls(**value)
    raise TypeError(f"expected {cls.__name__}, a dict of its fields, or None; got {value!r}")


def as_factory(value: Any, base: type) -> Any:
    """A callable from a ``class_path`` spec (an allowed subclass of ``base``), or the value as it is."""
    return callable_from_spec(value, base=base) if is_spec(value) else value


class TrainableOnlyModule(pl.LightningModule):
    """Base of the project's LightningModules (``HyperETLitModule``, ``HyperbolicAlignmentModule``).

    Subclasses set ``processor`` in ``__init__``, build their model in ``configure_model`` (idempotent: it may run
    again) and keep ``self.strict_loading = False`` (set here).
    """

    LAYOUT_HPARAMS: tuple[str, ...] = ()
    processor: Any

    def __init__(self) -> None:
        super().__init__()
        # Checkpoints hold only the trainable tensors; load_state_dict checks that exactly those are present.
        self.strict_loading = False

    def attached_strategy(self) -> Any:
        """The trainer's strategy, or ``None`` for a module used outside a trainer."""
        return self.trainer.strategy if self._trainer is not None else None

    def world_size(self) -> int:
        """The number of training processes (1 outside a trainer)."""
        return self.trainer.world_size if self._trainer is not None else 1

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """The module rebuilt from a checkpoint's stored hyper-parameters (``kwargs`` override them) with its
        trainable tensors loaded; never runs code the checkpoint names (see :mod:`lit_hyperet.checkpoints`)."""
        if hparams_file is not None:
            raise TypeError("hparams_file is not supported: the hyper-parameters come from the checkpoint")
        return module_from_checkpoint(cls, checkpoint_path, map_location, overrides=kwargs)

    def trainable_state_keys(self) -> set[str]:
        """State-dict keys of the trainable tensors (what checkpoints hold)."""
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def check_state_keys(self, keys: Any, source: str = "checkpoint") -> None:
        """``CheckpointError`` unless ``keys`` are exactly the trainable state keys of the configured model."""
        self.configure_model()
        expected, given = self.trainable_state_keys(), set(keys)
        if given != expected:
            missing, unexpected = sorted(expected - given), sorted(given - expected)
            raise CheckpointError(
                f"{source}: its tensors do not match the configured model's trainable parameters: "
                f"missing {missing[:10]} ({len(missing)}), "
                f"unexpected {unexpected[:10]} ({len(unexpected)})"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable tensors, and record the MLflow run that wrote the checkpoint."""
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        runs = [logger.run_id for logger in mlflow_loggers(self.trainer) if logger.run_id]
        if runs:  # evaluations of this checkpoint tag their MLflow run with it (rank 0 holds the run)
            checkpoint[FIT_RUN_KEY] = runs[0]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the tensors are the configured model's trainable set (naming the file) before Lightning loads them."""
        if "state_dict" in checkpoint:  # FSDP2Strategy has loaded (and checked) them already
            self.check_state_keys(checkpoint["state_dict"], source=str(self.trainer.ckpt_path))

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a trainable-only state dict onto the rebuilt frozen model; any other key set is an error.

        The frozen keys are checked to be exactly the ones left out, so none is reported missing.
        """
        self.check_state_keys(state_dict)
        expected = self.trainable_state_keys()
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        frozen = set(self.state_dict()) - expected
        if set(result.missing_keys) != frozen:
            raise RuntimeError(
                f"keys left unloaded are not the frozen ones: {sorted(set(result.missing_keys) ^ frozen)[:10]}"
            )
        return result._replace(missing_keys=[])  # the frozen weights came from the model source, as they should

    def build_optimization(self, groups: list[dict[str, Any]], optimizer: Any, lr_scheduler: Any) -> dict[str, Any]:
        """``configure_optimizers``' answer: the optimiser factory (or spec) over parameter ``groups``, the scheduler
        factory (or spec) over it, stepped per optimiser step; ``WarmupCosineLR`` with ``total_steps`` -1 gets the
        trainer's estimated number of steps."""
        built = as_factory(optimizer, torch.optim.Optimizer)(groups)
        scheduler = as_factory(lr_scheduler, torch.optim.lr_scheduler.LRScheduler)(built)
        if isinstance(scheduler, WarmupCosineLR) and scheduler.total_steps < 0:
            scheduler.set_total_steps(int(self.trainer.estimated_stepping_batches))
        return {"optimizer": built, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
