"""Imports point one way (DESIGN.md): envs/ and worldmodel/ import nothing of ours, agents/ may import
worldmodel/, nothing imports experiments/ but experiments/ itself (and tests and benchmarks)."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = {"envs", "worldmodel", "agents", "experiments"}
ALLOWED = {"envs": {"envs"}, "worldmodel": {"worldmodel"}, "agents": {"agents", "worldmodel"}, "experiments": OURS}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package):
    wrong = {}
    for path in sorted((REPO / package).rglob("*.py")):
        bad = imported_packages(path) - ALLOWED[package]
        if bad:
            wrong[str(path.relative_to(REPO))] = sorted(bad)
    assert not wrong, f"{package}/ may import only {sorted(ALLOWED[package])}: {wrong}"


def test_no_torchvision_anywhere():
    for path in REPO.glob("[!.]*/**/*.py"):
        assert "torchvision" not in imported_packages(path) | {
            a.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Import) for a in n.names
        }, path
