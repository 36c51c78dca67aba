"""Checkpoints: atomic, checksummed, verified before loading, never silently skipped.

`save_checkpoint` serialises in memory, keeps the current `latest.pt` as `previous.pt`, then writes the
new file and its SHA-256 sidecar atomically, in an order that leaves a valid checkpoint wherever a kill
lands. `read_checkpoint` checks the checksum before unpickling (a flipped byte otherwise loads silently
with wrong values) and always passes `weights_only=True`. A damaged newest checkpoint is reported and the
previous one used; when none is valid, it raises.

Under torchrun rank 0 alone writes (every process holds the same state); every process reads.
"""

from __future__ import annotations

import io
import os
import pickletools
import shutil
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from envs.atomic import atomic_write_bytes, atomic_write_text, fsync_directory, sha256_bytes, sha256_file
from experiments import distributed

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or belongs to another configuration."""


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(path: str | os.PathLike, state: dict, keep_previous: bool = True) -> None:
    """Write `state` to `path` atomically with a checksum; the file it replaces becomes `previous.pt`.

    On ranks other than 0 of a torchrun job it does nothing: their state is rank 0's.
    """
    if not distributed.is_main():
        return
    for _ in _save_steps(Path(path), _serialise(state), keep_previous):
        pass


def _serialise(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **state}, buffer)
    return buffer.getvalue()


def _save_steps(path: Path, data: bytes, keep_previous: bool) -> Iterator[None]:
    """The file operations of a save, yielding after each, in an order that a kill between any two leaves
    a valid checkpoint to resume from (the old one or the new one).

    A file and its sidecar cannot be renamed together, so the old latest is hard-linked (copied where the
    file system has no links) to `previous.pt` while it stays in place, and only then replaced. A damaged
    old latest (a save killed before its sidecar) is not kept: `previous.pt` is then the one worth keeping.
    """
    if keep_previous and _is_intact(path):
        previous = path.with_name("previous.pt")
        _sidecar(previous).unlink(missing_ok=True)  # previous.pt is invalid from here on; latest.pt is valid
        yield
        _link_or_copy(path, previous)
        yield
        atomic_write_text(_sidecar(previous), _sidecar(path).read_text())  # previous.pt valid again
        yield
    atomic_write_bytes(path, data)  # latest.pt mismatches its old sidecar: previous.pt is the valid one
    yield
    atomic_write_text(_sidecar(path), sha256_bytes(data) + "\n")
    yield


def _is_intact(path: Path) -> bool:
    return path.is_file() and _sidecar(path).is_file() and sha256_file(path) == _sidecar(path).read_text().strip()


def _link_or_copy(source: Path, destination: Path) -> None:
    """Make `destination` the same bytes as `source` atomically, by a hard link where possible."""
    temp = destination.with_name(f".{destination.name}.link-{os.getpid()}")
    temp.unlink(missing_ok=True)
    try:
        os.link(source, temp)
    except OSError:
        shutil.copyfile(source, temp)
    os.replace(temp, destination)
    fsync_directory(destination.parent)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load one checkpoint after verifying its checksum; raises CheckpointError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not _sidecar(path).is_file():
        raise CheckpointError(f"checkpoint {path} has no checksum file {_sidecar(path).name}; it may be incomplete")
    data = path.read_bytes()
    expected = _sidecar(path).read_text().strip()
    if sha256_bytes(data) != expected:
        raise CheckpointError(f"checkpoint {path} is damaged: its SHA-256 does not match {_sidecar(path).name}")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise CheckpointError(f"checkpoint {path} could not be read: {error}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a format-{FORMAT_VERSION} checkpoint of this toolkit")
    return state


def pickled_globals(path: str | os.PathLike) -> set[str]:
    """Every global ("module.name") that the pickle inside a torch checkpoint names: all that loading it could call.

    A checkpoint of this toolkit names only torch's tensor rebuilders and storages (tests/battery checks every
    command's); `weights_only=True` refuses anything else when loading, and this says what a file holds without
    loading it.
    """
    with zipfile.ZipFile(path) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith("data.pkl")]
        opcodes = list(pickletools.genops(archive.read(name)))
    found, strings = set(), []
    for opcode, argument, _ in opcodes:
        if opcode.name == "GLOBAL":
            found.add(argument.replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL":  # module and name are the two strings pushed last
            found.add(".".join(strings[-2:]))
        if isinstance(argument, str):
            strings.append(argument)
    return found


def load_latest(directory: str | os.PathLike) -> tuple[dict, Path]:
    """The newest valid checkpoint in `directory` (latest.pt, else previous.pt with a warning)."""
    directory = Path(directory)
    errors = []
    for name in ("latest.pt", "previous.pt"):
        try:
            state = read_checkpoint(directory / name)
        except CheckpointError as error:
            errors.append(str(error))
            continue
        if errors:
            warnings.warn(f"{errors[0]}; resuming from {name} instead", RuntimeWarning, stacklevel=2)
        return state, directory / name
    raise CheckpointError("no valid checkpoint to resume from:\n  " + "\n  ".join(errors))
