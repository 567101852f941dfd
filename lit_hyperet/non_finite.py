"""What a training step does with a non-finite loss or gradient norm: stop the run, or skip the step (counted)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

NonFinitePolicy = Literal["stop", "skip"]
NON_FINITE_POLICIES = ("stop", "skip")


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss or gradient norm (the message names the step and what to change)."""


def all_ranks_finite(value: torch.Tensor, strategy: object | None) -> bool:
    """Whether ``value`` is finite on every rank (a collective when a strategy is given, so all ranks decide alike)."""
    import torch  # here: the error type above is imported by the command line before torch is needed

    finite = bool(torch.isfinite(value.detach()).all())
    reduce = getattr(strategy, "reduce_boolean_decision", None)
    return bool(reduce(finite, all=True)) if reduce is not None else finite


def stop_message(what: str, value: float, step: int) -> str:
    """The message of a run stopped by a non-finite value."""
    return (
        f"non-finite {what} ({value}) at step {step}; training stopped. Lower the learning rates, or set "
        "model.init_args.non_finite: skip to skip such steps (counted as train/skipped_non_finite_steps)"
    )
