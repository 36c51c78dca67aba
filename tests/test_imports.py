"""Imports point one way (DESIGN.md, "The house"): each room of the house imports only the rooms below it. envs/ and
worldmodel/ import nothing of ours above them; inside worldmodel/, perception -> dynamics -> dream; agents/ may import
worldmodel/; experiments/ imports everything and nothing imports it (nor benchmarks/), but tests and benchmarks. The
commands (experiments/commands/, one module per `wm <command>`) sit on top: a command imports no other command, and
nothing imports a command but experiments/cli.py, by name from its table."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORLDMODEL = ("worldmodel", "worldmodel.perception", "worldmodel.dynamics", "worldmodel.dream")

# A room is a package or subpackage of ours; a module belongs to the longest room its dotted name starts with
# ("worldmodel" alone is what sits at its top: schedules.py, shared by both trainers). Each room may import itself
# and the rooms in its row; every other room of ours (benchmarks/ included) is refused.
MAY_IMPORT = {
    "envs":                  (),
    "worldmodel":            (),
    "worldmodel.perception": ("worldmodel",),
    "worldmodel.dynamics":   ("worldmodel", "worldmodel.perception"),
    "worldmodel.dream":      ("worldmodel", "worldmodel.perception", "worldmodel.dynamics"),
    "agents":                WORLDMODEL,
    "experiments":           ("envs", *WORLDMODEL, "agents"),
    "experiments.commands":  ("envs", *WORLDMODEL, "agents", "experiments"),
}  # fmt: skip
ROOMS = (*MAY_IMPORT, "benchmarks")


def room_of(module: str) -> str | None:
    """The room a dotted module name belongs to, or None for a module not of ours."""
    rooms = [room for room in ROOMS if module == room or module.startswith(room + ".")]
    return max(rooms, key=len, default=None)


def imported_modules(path: Path) -> set[str]:
    """The dotted name of every absolute import in a file; `from a.b import c` names a.b.c (c may be a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def top_level_imports(path: Path) -> set[str]:
    """The top-level package of every absolute import in a file."""
    return {module.split(".")[0] for module in imported_modules(path)}


def folder(room: str) -> Path:
    return REPO / room.replace(".", "/")


def module_name(path: Path) -> str:
    """`worldmodel/dream/rollout.py` -> `worldmodel.dream.rollout`; a package's `__init__.py` is the package."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("room", sorted(MAY_IMPORT))
def test_imports_point_one_way(room):
    allowed = {room, *MAY_IMPORT[room]}
    wrong = {}
    for path in sorted(folder(room).rglob("*.py")):
        if room_of(module_name(path)) != room:
            continue  # a sub-room's file, checked in its own row
        bad = {target for target in imported_modules(path) if room_of(target) not in (None, *allowed)}
        if bad:
            wrong[str(path.relative_to(REPO))] = sorted(bad)
    assert not wrong, f"{room} may import only {sorted(allowed)}: {wrong}"


COMMANDS = "experiments.commands"


def test_commands_import_no_other_command():
    """A command is a thin `main` over the library: what two commands share lives in experiments/, not in one of
    them (DESIGN.md, "The house": commands never import commands)."""
    wrong = {}
    for path in sorted(folder(COMMANDS).glob("*.py")):
        own = module_name(path)
        bad = {target for target in imported_modules(path) if room_of(target) == COMMANDS and target != own}
        if bad:
            wrong[str(path.relative_to(REPO))] = sorted(bad)
    assert not wrong, f"a command may not import another command: {wrong}"


def test_nothing_imports_a_command():
    """Only experiments/cli.py reaches a command (importlib, by name); tests call commands through `cli.main` too."""
    users = {}
    for path in sorted(REPO.glob("[!.]*/**/*.py")):
        if path.is_relative_to(folder(COMMANDS)) or ".venv" in path.parts:
            continue
        bad = {target for target in imported_modules(path) if room_of(target) == COMMANDS}
        if bad:
            users[str(path.relative_to(REPO))] = sorted(bad)
    assert not users, f"only experiments/cli.py runs a command: {users}"


def test_every_package_folder_is_a_room():
    """A new subpackage gets its row in MAY_IMPORT (else its files would pass as their parent's)."""
    packages = {module_name(init) for room in MAY_IMPORT for init in folder(room).rglob("__init__.py")}
    assert packages <= set(MAY_IMPORT), sorted(packages - set(MAY_IMPORT))


def test_no_torchvision_anywhere():
    # torchvision has no CPU build here and would drag a CUDA torch in: Pillow decodes, torch augments.
    users = [str(p.relative_to(REPO)) for p in REPO.glob("[!.]*/**/*.py") if "torchvision" in top_level_imports(p)]
    assert users == []
