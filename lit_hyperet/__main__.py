"""``python -m lit_hyperet``: LightningCLI subcommands and the project's tool subcommands under one ``--help``."""

from __future__ import annotations

import importlib
import os
import sys

from lit_hyperet.cli_errors import TRACEBACK_ENV

# Tool subcommands: name -> ("module:function", one-line help). Each function takes ``argv: list[str]`` and returns
# an exit code. Modules are imported lazily so ``--help`` and light tools start fast.
TOOLS: dict[str, tuple[str, str]] = {
    "make-tiny-model": (
        "lit_hyperet.models.tiny_command:main",
        "write a random-initialised tiny LLaVA or BLIP-2 retrieval model with its processor",
    ),
    "make-demo-data": (
        "lit_hyperet.tasks.scienceqa.demo:main",
        "write a synthetic dataset in the ScienceQA raw layout",
    ),
    "make-caption-demo-data": (
        "lit_hyperet.tasks.captions.demo:main",
        "write a synthetic caption dataset in the Karpathy layout",
    ),
    "scienceqa-score": (
        "lit_hyperet.tasks.scienceqa.scoring:main",
        "score predictions with the official ScienceQA categories",
    ),
    "export": (
        "lit_hyperet.export:main",
        "merge HyperET (and LoRA) into plain HF dirs: a LLaVA, or MemVP's CLIP tower + its tensors",
    ),
    "import-memvp-checkpoint": (
        "lit_hyperet.memvp_import:main",
        "MemVP's / HyperET's released adapter checkpoint as a checkpoint test / predict load",
    ),
    "sweep": ("lit_hyperet.sweep:main", "run a grid of trials as CLI subprocesses under an MLflow parent run"),
    "radius": ("lit_hyperet.radius:main", "hyperbolic radius of visual tokens or of image and caption embeddings"),
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _usage() -> str:
    width = max(map(len, [*TOOLS, *LIGHTNING_COMMANDS]))
    lines = ["usage: python -m lit_hyperet <command> [options]", "", "Lightning commands (LightningCLI):"]
    lines += [f"  {c:<{width}} see `python -m lit_hyperet {c} --help`" for c in LIGHTNING_COMMANDS]
    lines += ["", "Tools:"]
    lines += [f"  {name:<{width}} {help_}" for name, (_, help_) in TOOLS.items()]
    return "\n".join(lines)


def _load(target: str):
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command. A user's mistake (:class:`~lit_hyperet.user_errors.UserError`: an option, a path, data,
    a checkpoint) ends with its message on stderr and exit 2, a run stopped by a non-finite loss with one line and
    exit 1; internal errors keep their traceback."""
    from lit_hyperet.non_finite import NonFiniteLossError
    from lit_hyperet.user_errors import UserError

    try:
        return _dispatch(argv)
    except (UserError, NonFiniteLossError) as err:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, UserError) else 1


def _dispatch(argv: list[str] | None) -> int:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in TOOLS:
        return int(_load(TOOLS[command][0])(rest) or 0)
    if command in LIGHTNING_COMMANDS:
        from lit_hyperet.cli import cli_main

        # From the shell LightningCLI reads sys.argv itself (it warns when given both).
        cli_main(None if from_command_line else [command, *rest])
        return 0
    print(f"unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
