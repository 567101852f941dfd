"""What an MLflow run records about itself: a name that tells runs apart, tags that link an evaluation to the fit run
it evaluates, and the parameters that were actually used (flattened, nothing internal, nothing overridden)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger

from lit_hyperet.checkpoints import flatten

#: Checkpoint key under which the LightningModule stores the MLflow run id of the fit that wrote it.
FIT_RUN_KEY = "mlflow_run_id"
#: Trainer settings recorded as ``trainer/<key>`` parameters.
TRAINER_KEYS = (
    "accelerator",
    "devices",
    "num_nodes",
    "precision",
    "max_steps",
    "max_epochs",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "val_check_interval",
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "strategy",
)
#: Keys of a subcommand's configuration that do not change what is computed (left out of the config hash): where
#: outputs go, logging and display, the checkpoint to load, and the evaluation commands' own arguments.
NOT_HASHED = (
    "config",
    "ckpt_path",
    "verbose",
    "return_predictions",
    "weights_only",
    "trainer.logger",
    "trainer.enable_progress_bar",
    "trainer.default_root_dir",
    "prediction_writer",
    "checkpoint",
)


def default_run_name(config_files: Sequence[str | Path], stage: str) -> str:
    """``<config stems joined by +>-<stage>-<6 hex>``, e.g. ``demo-fit-3f9a1c`` or ``base+clip+diagonal-test-07b2de``;
    strategy configs (files under a ``strategy`` dir) say how, not what, and are left out of the name."""
    stems = [Path(str(path)).stem for path in config_files if Path(str(path)).parent.name != "strategy"]
    return f"{'+'.join(stems) or 'run'}-{stage}-{uuid.uuid4().hex[:6]}"


def config_hash(config: Mapping[str, Any]) -> str:
    """12 hex of the SHA-256 of the configuration that decides the computation (logger, paths of outputs and the
    checkpoint to load left out), so runs of one configuration share it."""
    kept = {key: value for key, value in flatten(config, ".").items() if not key.startswith(NOT_HASHED)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """Flattened parameters of a subcommand's configuration: the LightningModule's init args under their own names (as
    the sweep report reads them; its class as ``module/class_path``), ``data/…`` and ``trainer/…``. Left out:
    internal keys, the optimiser's own ``lr`` and ``weight_decay`` (each parameter group sets ``hyperet_lr`` /
    ``projector_lr`` / ``lora_lr`` and ``weight_decay``), HyperET options its variant does not use, and the
    datamodule's processor."""
    model = dict(_get(config, "model", "init_args"))
    params = flatten({key: value for key, value in model.items()}, "/")
    params = {key: value for key, value in params.items() if not _unused(key, model)}
    params["module/class_path"] = _get(config, "model").get("class_path")
    data = _get(config, "data")
    params["data/class_path"] = data.get("class_path")
    data_args = {key: value for key, value in dict(data.get("init_args") or {}).items() if key != "processor"}
    params |= {f"data/{key}": value for key, value in flatten(data_args, "/").items()}
    trainer = _get(config, "trainer")
    params |= {f"trainer/{key}": _plain(trainer.get(key)) for key in TRAINER_KEYS if key in trainer}
    params["seed_everything"] = config.get("seed_everything")
    return {key: value for key, value in params.items() if not any(part.startswith("_") for part in key.split("/"))}


def _unused(key: str, model: Mapping[str, Any]) -> bool:
    if key in ("optimizer/init_args/lr", "optimizer/init_args/weight_decay"):
        return True
    hyperet = model.get("hyperet")
    variant = hyperet.get("variant") if isinstance(hyperet, Mapping) else None
    if key == "hyperet/band_width":
        return variant != "banded"
    if key in ("hyperet/num_blocks", "hyperet/block_size"):
        return variant != "block_diagonal"
    return False


def _get(config: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    value: Any = config
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def _plain(value: Any) -> Any:
    """A class-path value as its class name; anything else as it is."""
    if isinstance(value, Mapping) and "class_path" in value:
        return value["class_path"]
    return value


def run_tags(
    config: Mapping[str, Any], stage: str, config_files: Sequence[str | Path], fit_run_id: str | None
) -> dict[str, str]:
    """``stage``, ``config_hash``, ``config_files``; with ``ckpt_path`` the checkpoint and, when it records one, the
    MLflow run of the fit that wrote it (``fit_run_id``)."""
    tags = {"stage": stage, "config_hash": config_hash(config), "config_files": ",".join(map(str, config_files))}
    if config.get("ckpt_path"):
        tags["checkpoint"] = str(config["ckpt_path"])
    if fit_run_id:
        tags["fit_run_id"] = fit_run_id
    return tags


def name_runs(loggers: Sequence[Any], config_files: Sequence[str | Path], stage: str) -> bool:
    """Give each MLflow logger that will create a run without a configured name :func:`default_run_name`; whether
    every MLflow logger creates its run (``False`` when one continues a run made beforehand, as a sweep's trial)."""
    creates = True
    for logger in loggers:
        if not isinstance(logger, MLFlowLogger):
            continue
        # MLFlowLogger keeps its run_name and run_id arguments as _run_name / _run_id until it starts the run.
        creates = creates and logger._run_id is None
        if logger._run_name is None and logger._run_id is None:
            logger._run_name = default_run_name(config_files, stage)
    return creates


class RunRecord(Callback):
    """When a stage starts (rank 0), sets :func:`run_tags` (only ``config_hash`` on a run made beforehand: its
    creator tags it, and its stages share it) and logs :func:`run_params` on every MLflow logger's run; at the start
    of training adds the schedule's resolved length, which the configuration leaves at -1."""

    def __init__(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        self.params, self.tags = dict(params), dict(tags)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:  # the MLflow run lives on rank 0
            return
        for logger in mlflow_loggers(trainer):
            for key, value in self.tags.items():
                logger.experiment.set_tag(logger.run_id, key, value)
            logger.log_hyperparams(self.params)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        total = [getattr(c.scheduler, "total_steps", None) for c in trainer.lr_scheduler_configs]
        if trainer.is_global_zero and total and total[0] is not None:
            for logger in mlflow_loggers(trainer):
                logger.log_hyperparams({"lr_scheduler/total_steps_resolved": total[0]})


def mlflow_loggers(trainer: Trainer) -> list[MLFlowLogger]:
    """The trainer's MLflow loggers."""
    return [logger for logger in trainer.loggers if isinstance(logger, MLFlowLogger)]
