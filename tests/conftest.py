"""Shared fixtures: one tiny model and one demo dataset per test session, built through the public commands' code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No hub access anywhere: fail loudly instead of trying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset in the ScienceQA raw layout, written by ``make-demo-data`` code."""
    from lit_hyperet.tasks.scienceqa.demo import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo_data"), num_problems=120, seed=0)
