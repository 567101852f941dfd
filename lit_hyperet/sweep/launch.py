"""``--launcher slurm|local``: the sweep's workers submitted with submitit (``AutoExecutor``): a SLURM job array of
identical ``sweep FILE --worker`` processes, or local processes (submitit's ``LocalExecutor``) for trying it out.

submitit is an optional dependency (``pip install -e ".[cluster]"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lit_hyperet.sweep.spec import SweepError, parse_override


def run_worker(argv: list[str]) -> int:
    """What each submitted job runs: ``python -m lit_hyperet sweep FILE --worker …``."""
    from lit_hyperet.sweep import main

    return main(argv)


def submit(worker_argv: list[str], workers: int, cluster: str, folder: Path, options: list[str]) -> list[Any]:
    """Submit ``workers`` jobs running :func:`run_worker` (``options``: ``key=value`` executor parameters, e.g.
    ``slurm_partition=gpu``, ``gpus_per_node=8``, ``timeout_min=600``); returns the submitit jobs."""
    try:
        import submitit
    except ImportError as err:
        raise SweepError('--launcher needs submitit: pip install -e ".[cluster]"') from err
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = dict(parse_override(item, "--launcher-option") for item in options)
    try:
        executor.update_parameters(name=f"sweep-{Path(worker_argv[0]).stem}", **params)
    except (ValueError, TypeError) as err:
        raise SweepError(f"--launcher-option: {err}") from err
    return executor.map_array(run_worker, [worker_argv] * workers)
