"""Shared fixtures: one tiny LLaVA, one tiny BLIP-2 and one demo dataset per test session, built through the public
commands' code."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# No hub access anywhere: fail loudly instead of trying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def restore_environment() -> Iterator[None]:
    """Each test leaves ``os.environ`` as it found it: an in-process Lightning launcher sets ``LOCAL_RANK``,
    ``NODE_RANK``, ``MASTER_PORT`` …, which would make a later test's subprocess wait for ranks nobody starts."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP-tower LLaVA written by ``make-tiny-model`` code, loaded back with ``from_pretrained``."""
    from lit_hyperet.models.llava.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_clip"), vision="clip", seed=0)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """Tiny LLaVA dirs for each supported vision tower."""
    from lit_hyperet.models.llava.tiny import make_tiny_model

    dirs = {"clip": tiny_model_dir}
    for vision in ("siglip", "dinov2"):
        dirs[vision] = make_tiny_model(tmp_path_factory.mktemp(f"tiny_{vision}"), vision=vision, seed=0)
    return dirs


@pytest.fixture(scope="session")
def tiny_memvp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaMA + CLIP tower pair written by ``make-tiny-model --family memvp`` code."""
    from lit_hyperet.models.memvp.tiny import make_tiny_memvp

    return make_tiny_memvp(tmp_path_factory.mktemp("tiny_memvp"), seed=0)


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset in the ScienceQA raw layout, written by ``make-demo-data`` code."""
    from lit_hyperet.tasks.scienceqa.demo import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo_data"), num_problems=120, seed=0)


@pytest.fixture
def one_process_group(tmp_path: Path) -> Iterator[Any]:
    """A gloo group of world size 1 and its 1-D data-parallel mesh (what FSDP2Strategy builds, at size 1)."""
    import datetime

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=datetime.timedelta(seconds=60))
    try:
        yield init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="session")
def tiny_blip2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BLIP-2 image–text retrieval model written by ``make-tiny-model --family blip2-itm`` code."""
    from lit_hyperet.models.blip2 import make_tiny_blip2_itm

    return make_tiny_blip2_itm(tmp_path_factory.mktemp("tiny_blip2_itm"), seed=0)
