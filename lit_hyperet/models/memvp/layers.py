"""MemVP's trainable pieces: the CLIP MLP adapter, the visual projector and the FFN memory, attached to unmodified
transformers blocks by forward hooks.

``CLIPMLP`` and ``LlamaMLP`` are called on exactly the post-attention norm outputs MemVP uses (``ln_2(x)`` and
``ffn_norm(h)``), so a forward hook returning ``output + s · f(input)`` reproduces MemVP's blocks without forking
model code (MemVP's ``memvp/adapter.py``):

* CLIP block: ``x + mlp(ln_2(x)) + 0.1 · adapter_mlp(ln_2(x))``; the adapter is a child of the hooked ``CLIPMLP``
  (state-dict name ``…mlp.adapter_mlp.fc1.weight``), so FSDP units and checkpoints keep it with its block.
* LLaMA block: ``h + FFN(ffn_norm(h)) + s · Dropout(SiLU(x · Kᵀ)) · V`` with the per-batch keys ``K = V_img + E1`` and
  values ``V = V_img + E2`` held by a :class:`MemoryState` shared by every layer's hook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle


class VisionAdapter(nn.Module):
    """MemVP's CLIP adapter: Linear(w→r, no bias) → GELU → Dropout → Linear(r→w, no bias), the up-projection zero."""

    def __init__(self, width: int, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, dim, bias=False)
        self.fc2 = nn.Linear(dim, width, bias=False)
        nn.init.zeros_(self.fc2.weight)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(x.to(self.fc1.weight.dtype))))).to(x.dtype)


class Projector(nn.Module):
    """MemVP's ``adapter_proj``: Linear(w→h) → SiLU → Linear(h→d), Xavier-uniform weights and zero biases."""

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x.to(self.fc1.weight.dtype))))


def attach_vision_adapter(mlp: nn.Module, adapter: VisionAdapter, scale: float) -> RemovableHandle:
    """Register ``adapter`` as ``mlp.adapter_mlp`` and add ``scale · adapter(input)`` to ``mlp``'s output."""
    mlp.adapter_mlp = adapter

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return output + scale * module.adapter_mlp(args[0])

    return mlp.register_forward_hook(hook)


class MemoryState:
    """The keys and values of the current batch, set once per forward / ``generate`` and read by every FFN hook.

    They stay set after the forward (activation checkpointing recomputes the hooks during backward, and every decode
    step of ``generate`` reads them). Beam search and ``num_return_sequences`` repeat each sample ``k`` times in
    order (``repeat_interleave``), so a batch ``k`` times larger gets each sample's memory ``k`` times.
    """

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def set(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    def get(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None or self.values is None:
            raise RuntimeError("MemVP memory is not set: call the MemVP model (or its generate), not its LLM")
        n = self.keys.shape[0]
        if batch == n:
            return self.keys, self.values
        if batch % n:
            raise RuntimeError(f"MemVP memory holds {n} samples, the LLM runs a batch of {batch}")
        k = batch // n
        return self.keys.repeat_interleave(k, dim=0), self.values.repeat_interleave(k, dim=0)


def attach_ffn_memory(mlp: nn.Module, state: MemoryState, scale: float, dropout: float) -> RemovableHandle:
    """Add ``scale · Dropout(SiLU(x Kᵀ)) V`` (keys/values from ``state``) to ``mlp``'s output for input ``x``."""

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        keys, values = state.get(x.shape[0])
        weights = F.silu(x @ keys.to(x.dtype).transpose(1, 2))
        weights = F.dropout(weights, dropout, training=module.training)
        return output + scale * (weights @ values.to(x.dtype))

    return mlp.register_forward_hook(hook)
