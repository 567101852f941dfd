"""``FSDP2Strategy``: Lightning's ``ModelParallelStrategy`` as pure FSDP2 data parallelism (``fsdp.yaml``).

The module shards itself in ``configure_model`` (:func:`lit_hyperet.sharding.shard_model`); this strategy fixes the
mesh to data parallelism over every process of every node (no tensor parallelism), so the same YAML runs on 1..N GPUs
(NCCL) or CPU processes (gloo) and on any number of nodes, and keeps checkpoints to what this suite can resume: one
``.ckpt`` file of plain, full trainable tensors.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy

from lit_hyperet.checkpoints import read_checkpoint
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

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Check the checkpoint is one file holding exactly the module's trainable keys, then load it sharded.

        Lightning's sharded load skips absent keys silently when ``strict_loading`` is off (as it is for
        trainable-only checkpoints), so the key check the module does on ``load_state_dict`` is done here.
        """
        path = Path(self.broadcast(checkpoint_path))
        checkpoint = read_checkpoint(path, mmap=True)  # refuses directories (sharded checkpoints) and foreign files
        check = getattr(self.lightning_module, "check_state_keys", None)
        if check is not None:
            check(checkpoint["state_dict"].keys(), source=str(path))
        del checkpoint
        return super().load_checkpoint(path, weights_only=weights_only)
