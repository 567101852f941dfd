"""``FSDP2Strategy``: Lightning's ``ModelParallelStrategy`` as pure FSDP2 data parallelism (``fsdp.yaml``).

The module shards itself in ``configure_model`` (:func:`lit_hyperet.sharding.shard_model`); this strategy fixes the
mesh to data parallelism over every process of every node (no tensor parallelism), so the same YAML runs on 1..N GPUs
(NCCL) or CPU processes (gloo) and on any number of nodes, and keeps checkpoints to what this suite can resume: one
``.ckpt`` file of plain, full trainable tensors.

Trainable parameters that no FSDP2 unit holds (plain tensors: :func:`lit_hyperet.sharding.replicated_parameters`,
e.g. the alignment module's temperature and BLIP-2's query tokens) are kept replicated as DDP keeps them: broadcast
from rank 0 at setup, their gradients averaged over the ranks after each step's backward, before the optimiser (and
gradient clipping) sees them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor

from lit_hyperet.checkpoints import CheckpointError, read_checkpoint
from lit_hyperet.sharding import average_gradients, replicated_parameters
from lit_hyperet.user_errors import ConfigError


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over all processes: ``data_parallel_size`` = world size, ``tensor_parallel_size`` = 1.

    Args:
        save_distributed_checkpoint: must stay ``False``: checkpoints hold only the trainable tensors, gathered into
            one file on rank 0; a per-rank sharded checkpoint could not be resumed (its load asks for every key).
        process_group_backend: ``nccl`` / ``gloo``; default follows the accelerator.
        timeout: collective timeout.
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        if save_distributed_checkpoint:
            raise ConfigError(
                "FSDP2Strategy: save_distributed_checkpoint=true is not supported: checkpoints hold only the "
                "trainable tensors and are written as one file of full tensors (small: HyperET, projector, LoRA); "
                "remove the option"
            )
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=False,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def setup_environment(self) -> None:
        """Data parallel over every process of every node (known here, before the mesh is built)."""
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def _data_parallel_group(self) -> dist.ProcessGroup:
        return self.device_mesh["data_parallel"].get_group()

    def setup(self, trainer: pl.Trainer) -> None:
        """Lightning's setup, then every rank takes rank 0's replicated trainable parameters (as DDP does)."""
        super().setup(trainer)
        group = self._data_parallel_group()
        with torch.no_grad():
            for _, param in replicated_parameters(self.lightning_module):
                dist.broadcast(param.data, src=dist.get_global_rank(group, 0), group=group)

    def optimizer_step(self, optimizer: Any, closure: Callable[[], Any], model: Any = None, **kwargs: Any) -> Any:
        """Run the step's closure (forward, backward), average the replicated parameters' gradients over the ranks,
        then let Lightning step (its ``on_before_optimizer_step`` and clipping see the averaged gradients)."""
        params = [p for group in optimizer.param_groups for p in group["params"] if not isinstance(p, DTensor)]

        def closure_then_average() -> Any:
            result = closure()
            average_gradients(params, self._data_parallel_group())
            return result

        return super().optimizer_step(optimizer, closure_then_average, model, **kwargs)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Check the checkpoint is one file holding exactly the module's trainable keys and, when resuming, the run's
        optimiser groups; then load it sharded.

        Lightning's sharded load skips absent keys silently when ``strict_loading`` is off (as it is for
        trainable-only checkpoints), so the key check the module does on ``load_state_dict`` is done here.
        """
        path = Path(self.broadcast(checkpoint_path))
        checkpoint = read_checkpoint(path, mmap=True)  # refuses directories (sharded checkpoints) and foreign files
        check = getattr(self.lightning_module, "check_state_keys", None)
        if check is not None:
            check(checkpoint["state_dict"].keys(), source=str(path))
        saved = [
            [g.get("name") for g in state.get("param_groups", [])] for state in checkpoint.get("optimizer_states", [])
        ]
        current = [[g.get("name") for g in optimizer.param_groups] for optimizer in self.optimizers]
        if current and saved != current:  # torch would fail on the mismatch with a shape error deep in its loader
            raise CheckpointError(
                f"{path}: its optimiser groups {saved} are not this run's {current} (a checkpoint of another "
                "configuration, e.g. with other trainable parts); resume it with the config that wrote it"
            )
        del checkpoint
        return super().load_checkpoint(path, weights_only=weights_only)
