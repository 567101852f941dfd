"""The user's mistakes, told apart from internal errors: they end a command with a short message, not a traceback."""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in what the user gave (an option, a path, data, a checkpoint). The message names the key, file or
    record and what to do; ``python -m lit_hyperet`` prints it without a traceback and exits with status 2."""


class ConfigError(UserError):
    """An option value that cannot work (a block size that does not divide the width, a dir without a model, …)."""
