"""LightningCLI for ``fit | validate | test | predict``, with MLflow on sqlite by default."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import torch
from jsonargparse import lazy_instance
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger

from lit_hyperet.callbacks import PredictionWriter
from lit_hyperet.checkpoints import CheckpointError, compare_hparams, read_checkpoint, stored_hparams
from lit_hyperet.class_paths import import_class
from lit_hyperet.cli_errors import TRACEBACK_ENV, short_error
from lit_hyperet.cli_help import EpilogHelpFormatter, add_options_epilog
from lit_hyperet.mlflow_store import prepare_tracking_store, tracking_uri
from lit_hyperet.progress import StepProgressBar
from lit_hyperet.results_table import ResultsTable
from lit_hyperet.run_record import FIT_RUN_KEY, RunRecord, mlflow_loggers, name_runs, run_params, run_tags
from lit_hyperet.trainable_module import TrainableOnlyModule
from lit_hyperet.user_errors import UserError

DEFAULT_EXPERIMENT = "lit_hyperet"
PROG = "python -m lit_hyperet"


def _configured_tracking_uris(config: Any) -> list[str]:
    loggers = config.get("trainer", {}).get("logger")
    loggers = loggers if isinstance(loggers, list) else [loggers]
    uris = []
    for logger in loggers:
        if hasattr(logger, "get") and str(logger.get("class_path", "")).endswith("MLFlowLogger"):
            # MLFlowLogger itself falls back to the environment when no URI is configured
            uris.append(logger.get("init_args", {}).get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI", ""))
    return uris


class MLflowSaveConfigCallback(SaveConfigCallback):
    """Logs the resolved ``config.yaml`` as an artifact of every MLflow run of the trainer.

    The stock callback writes to ``trainer.log_dir``, which is ``None`` for MLflow's sqlite/http stores (a bare
    ``AssertionError``) and one shared ``./mlruns`` folder for the file store; this one needs neither.
    """

    def __init__(
        self,
        parser: LightningArgumentParser,
        config: Any,
        config_filename: str = "config.yaml",
        overwrite: bool = False,
        multifile: bool = False,
        save_to_log_dir: bool = False,
    ) -> None:
        super().__init__(parser, config, config_filename, overwrite, multifile, save_to_log_dir=False)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        for logger in mlflow_loggers(trainer):
            logger.experiment.log_text(logger.run_id, text, self.config_filename)


class ShortErrorParser(LightningArgumentParser):
    """Reports a config or command-line mistake in a line or two naming the key and the closest valid choice (see
    :mod:`lit_hyperet.cli_errors`); ``LIT_HYPERET_TRACEBACK=1`` shows jsonargparse's full report instead."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get(TRACEBACK_ENV) == "1":
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        options = list(parser._option_string_actions)
        sys.stderr.write(f"error: {short_error(message, options)}\n")
        sys.stderr.write(f"       see: {parser.prog.replace(' [options]', '')} --help\n")
        self.exit(2)


class HyperETCLI(LightningCLI):
    """LightningCLI with the model's processor linked into the datamodule and project defaults; the model is any
    :class:`~lit_hyperet.trainable_module.TrainableOnlyModule` (``HyperETLitModule``, ``HyperbolicAlignmentModule``)."""

    #: MLflow run of the fit that wrote ``--ckpt_path`` (when the checkpoint records it).
    _fit_run_id: str | None = None
    #: Training step stored in ``--ckpt_path``.
    _checkpoint_step: int | None = None

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """The root and subcommand parsers: short errors, and ``python -m lit_hyperet`` as the program name."""
        kwargs.setdefault("prog", PROG)
        kwargs.setdefault("allow_abbrev", False)  # "--trainer.max_step" is a typo, not "--trainer.max_steps"
        kwargs.setdefault("formatter_class", EpilogHelpFormatter)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The model dir is named once: the datamodule takes the tokenizer and image processor from the model.
        parser.link_arguments("model.processor", "data.init_args.processor", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_argument(
            "--torch_num_threads",
            type=int | None,
            default=None,
            help="torch intra-op CPU threads (torch.set_num_threads); 1 suits tiny models on shared or small machines",
        )
        parser.set_defaults(
            {
                "checkpoint.dirpath": "outputs/checkpoints",
                "checkpoint.save_last": True,
                # last.ckpt is always the latest run's: no last-v1.ckpt that later commands would not read
                "checkpoint.enable_version_counter": False,
                "checkpoint.save_top_k": 0,
                "lr_monitor.logging_interval": "step",
                "prediction_writer.output_path": "outputs/predictions.json",
                "trainer.default_root_dir": "outputs",
                "trainer.logger": lazy_instance(
                    MLFlowLogger, experiment_name=DEFAULT_EXPERIMENT, tracking_uri=tracking_uri()
                ),
            }
        )

    def before_validate(self) -> None:
        self._say_which_weights()

    def before_test(self) -> None:
        self._say_which_weights()

    def before_predict(self) -> None:
        self._say_which_weights()

    def _say_which_weights(self) -> None:
        """Evaluating without ``--ckpt_path`` is allowed (a base model, zero-shot) but said before the run starts."""
        if not self.config[self.subcommand].get("ckpt_path") and self.trainer.is_global_zero:
            print(
                f"note: {self.subcommand} without --ckpt_path evaluates the model as configured (adapters at their "
                "initial values), not a trained run; pass --ckpt_path DIR/last.ckpt for a run's weights",
                file=sys.stderr,
            )

    def instantiate_classes(self) -> None:
        """jsonargparse reports a user error raised while building a class (a ``ConfigError`` from a value that
        cannot work) as a tree of Union alternatives; the user error itself is what the user needs to read."""
        try:
            super().instantiate_classes()
        except ValueError as err:
            cause: BaseException | None = err
            while cause is not None and not isinstance(cause, UserError):
                cause = cause.__cause__
            if cause is None or os.environ.get(TRACEBACK_ENV) == "1":
                raise
            raise cause from None

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):  # ResultsTable prints the results; --verbose true adds Lightning's
            parser.set_defaults({"verbose": False})
        add_options_epilog(parser)
        return parser

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        """The trainer with the project's console callbacks: the results table, and the step-aware progress bar
        unless the progress bar is off or the config names its own."""
        stage = self.subcommand or "run"
        subcommand_config = (self.config[self.subcommand] if self.subcommand else self.config).as_dict()
        files = [str(path) for path in subcommand_config.get("config") or []]
        loggers = config.get("logger")
        creates = name_runs(loggers if isinstance(loggers, list) else [loggers], files, stage)
        tags = run_tags(subcommand_config, stage, files, self._fit_run_id)
        if not creates:  # a run made beforehand (a sweep's trial) keeps its creator's tags; the hash is the CLI's
            tags = {"config_hash": tags["config_hash"]}
        callbacks = [
            *callbacks,
            ResultsTable(checkpoint_step=self._checkpoint_step),
            RunRecord(run_params(subcommand_config), tags),
        ]
        configured = config.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        own_bar = any(isinstance(c, ProgressBar) for c in [*configured, *callbacks])
        if config.get("enable_progress_bar", True) is not False and not own_bar:
            callbacks.append(StepProgressBar())
        return super()._instantiate_trainer(config, callbacks)

    def _parse_ckpt_path(self) -> None:
        """Compare ``--ckpt_path``'s stored hyper-parameters with the configured model instead of merging them in.

        LightningCLI would merge the checkpoint's hyper-parameters over the command line and config files (and hand
        their ``class_path`` entries to jsonargparse). Here what the user configured wins: differences that change
        the parameter layout stop the command (:class:`CheckpointError` listing them), others are reported on stderr.
        The checkpoint's tensors are loaded later, onto the configured model.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):  # Lightning's own names, no file yet
            return
        model_config = self.config[subcommand]["model"].as_dict()
        module_class = import_class(model_config["class_path"])
        checkpoint = read_checkpoint(ckpt_path, mmap=True)
        self._fit_run_id = checkpoint.get(FIT_RUN_KEY)
        self._checkpoint_step = checkpoint.get("global_step")
        stored = stored_hparams(checkpoint, module_class, ckpt_path)
        layout, other = compare_hparams(stored, model_config.get("init_args", {}), module_class)
        if layout:
            lines = "; ".join(f"{key}: checkpoint {a!r}, configured {b!r}" for key, a, b in layout)
            raise CheckpointError(f"{ckpt_path}: trained with a different parameter layout than configured: {lines}")
        for key, a, b in other:
            print(f"note: {ckpt_path} was trained with {key}={a!r}; using the configured {b!r}", file=sys.stderr)

    def before_instantiate_classes(self) -> None:
        """Apply ``torch_num_threads`` before any model is built; create MLflow sqlite stores before any logger."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("torch_num_threads"):
            torch.set_num_threads(config.torch_num_threads)
        for uri in _configured_tracking_uris(config):
            prepare_tracking_store(uri)


def cli_main(args: ArgsType = None, run: bool = True) -> HyperETCLI:
    """Entry point of ``python -m lit_hyperet fit|validate|test|predict``."""
    caller_group = _process_group_initialized()
    finished = False
    try:
        # Any of the project's LightningModules (HyperETLitModule, HyperbolicAlignmentModule), chosen by the config's
        # model.class_path; each exposes the `processor` linked into the datamodule.
        cli = HyperETCLI(
            TrainableOnlyModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=MLflowSaveConfigCallback,
            parser_class=ShortErrorParser,
            auto_configure_optimizers=False,
            args=args,
            run=run,
            parser_kwargs={"parser_mode": "yaml"},
        )
        finished = True
        return cli
    finally:
        if not caller_group and _process_group_initialized():
            # End the group the run created while the interpreter is alive. Lightning does this at exit for NCCL
            # only; a gloo group left to interpreter shutdown can abort a run that succeeded (SIGABRT, "terminate
            # called without an active exception"). After a run that finished, every rank first waits for the
            # others, so none tears down its end of the group (and rank 0 the store) while another still uses it.
            if finished:
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def configured(configs: list[str], overrides: list[str] = ()) -> HyperETCLI:
    """The model, datamodule and trainer that ``configs`` (``--config`` files, in order) and ``overrides`` (dotted
    ``key=value`` or ``--key value`` arguments) describe, built through the CLI without a logger and without running
    anything: what the tools (radius, import-memvp-checkpoint) evaluate or inspect. The model is not built yet
    (``configure_model``)."""
    args = [arg for config in configs for arg in ("--config", config)] + ["--trainer.logger=false"]
    args += [o if o.startswith("--") else f"--{o}" for o in overrides]
    saved_argv = sys.argv
    sys.argv = sys.argv[:1]  # LightningCLI warns when it sees both ``args`` and command-line arguments
    try:
        return cli_main(args, run=False)
    finally:
        sys.argv = saved_argv


def _process_group_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()
