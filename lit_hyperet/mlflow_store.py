"""Where runs are tracked: the default MLflow store, and creating a sqlite store safely (torch-free, so the sweep and
radius tools import it without the model stack)."""

from __future__ import annotations

import os
from pathlib import Path

#: MLflow ≥ 3.13 refuses the ``./mlruns`` file store that ``MLFlowLogger`` would otherwise default to.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a sqlite store ``mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def prepare_tracking_store(uri: str) -> None:
    """Create (and migrate) a ``sqlite:///`` MLflow store under an exclusive file lock beside the database.

    MLflow creates the schema of a new sqlite store on first use; two processes doing that at once (two fits, the
    nodes of a job) collide in the migration and can leave the store unreadable. Other stores are left alone. The
    lock needs a filesystem with working ``flock`` (local disks do; some network filesystems do not).
    """
    if not uri.startswith("sqlite:///"):
        return
    import fcntl

    from mlflow import MlflowClient

    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
