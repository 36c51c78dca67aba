"""Imports point one way (DESIGN.md): envs/ and worldmodel/ import nothing of ours, agents/ may import
worldmodel/, nothing imports experiments/ but experiments/ itself (and tests and benchmarks)."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = {"envs", "worldmodel", "agents", "experiments"}
ALLOWED = {"envs": {"envs"}, "worldmodel": {"worldmodel"}, "agents": {"agents", "worldmodel"}, "experiments": OURS}


def top_level_imports(path: Path) -> set[str]:
    """The top-level package of every absolute import in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package):
    wrong = {}
    for path in sorted((REPO / package).rglob("*.py")):
        bad = (top_level_imports(path) & OURS) - ALLOWED[package]
        if bad:
            wrong[str(path.relative_to(REPO))] = sorted(bad)
    assert not wrong, f"{package}/ may import only {sorted(ALLOWED[package])}: {wrong}"


def test_no_torchvision_anywhere():
    # torchvision has no CPU build here and would drag a CUDA torch in: Pillow decodes, torch augments.
    users = [str(p.relative_to(REPO)) for p in REPO.glob("[!.]*/**/*.py") if "torchvision" in top_level_imports(p)]
    assert users == []
