"""The import direction ARCHITECTURE.md describes: adapter core (and the alignment maths) → models; data → tasks; both →
the LightningModules → tools."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lit_hyperet"
CORE = ("geometry", "structured", "hyperet_config", "hyperet", "encoders", "chat_templates")
TOOLS = (
    "cli",
    "__main__",
    "cli_errors",
    "cli_help",
    "run_record",
    "results_table",
    "progress",
    "tables",
    "radius",
    "sweep",
    "export",
)
AREAS = tuple(
    path.stem if path.suffix == ".py" else path.name
    for path in PACKAGE.iterdir()
    if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()
)
# the LightningModules and their shared base: they join model families and tasks
LIT_MODULES = ("lit_module", "alignment_module", "trainable_module")
# area -> areas it must never import (an area is a top-level module or subpackage of lit_hyperet)
FORBIDDEN = {
    **{core: ("models", "data", "tasks", "alignment", *LIT_MODULES, *TOOLS) for core in CORE},
    # image–text alignment maths: model-agnostic like the adapter core (torch, geoopt and geometry only)
    "alignment": ("models", "data", "tasks", "metrics", "hyperet", "structured", "encoders", *LIT_MODULES, *TOOLS),
    "models": ("data", "tasks", "metrics", *LIT_MODULES, *TOOLS),
    "data": ("models", "tasks", *LIT_MODULES, *TOOLS),
    "tasks": ("models", *LIT_MODULES, *TOOLS),
    "metrics": ("models", "data", "tasks", *LIT_MODULES, *TOOLS),
    # the user's-mistake exceptions: a leaf every layer may import
    "user_errors": tuple(area for area in AREAS if area != "user_errors"),
}


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "lit_hyperet" else ""


def _imports(path: Path) -> set[str]:
    """Every ``lit_hyperet…`` module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("lit_hyperet.")}


def _files(area: str) -> list[Path]:
    package = PACKAGE / area
    return sorted(package.rglob("*.py")) if package.is_dir() else [PACKAGE / f"{area}.py"]


@pytest.mark.parametrize("area", sorted(FORBIDDEN))
def test_imports_flow_one_way(area: str) -> None:
    files = _files(area)
    assert files and all(f.is_file() for f in files), f"{area} is not in the tree"
    wrong = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in files
        for name in sorted(_imports(path))
        if _area(name) in FORBIDDEN[area]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_documented_tree_is_the_tree() -> None:
    """Every module of the package is named in ARCHITECTURE.md, and every subpackage."""
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        named = f"{relative.parent}/" if path.name == "__init__.py" else path.name
        if relative.parent != Path(".") and named not in text or path.name != "__init__.py" and named not in text:
            missing.append(str(relative))
    assert not missing, f"not described in ARCHITECTURE.md: {missing}"
