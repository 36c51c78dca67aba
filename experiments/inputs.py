"""What a run reads and writes outside its config, checked before its run directory is created.

A config can be valid and still name an image folder that is missing, empty or wholly unreadable, an env whose
package is not installed, or a runs directory that cannot be written. Found once the work has begun, each was a
traceback and a failed run directory left behind; `open_run` calls `check_inputs` first, for every command, so each
is one line naming what is wrong (`InputError`, exit 2 in experiments/cli.py) and nothing is created.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from experiments.config import Config, EnvConfig, PretrainConfig

if TYPE_CHECKING:  # envs imports gymnasium: only the env commands pay for it
    from envs.spec import EnvSpec

ENV_COMMANDS = ("train", "evolve", "cycle")
"""The commands that make `cfg.env`."""
MIN_READABLE_IMAGES = 2
"""Readable images a pretraining step needs (a batch with fewer is skipped): a folder with fewer cannot train."""


class InputError(ValueError):
    """What the config or command line names outside itself (a folder, an env, the runs directory) cannot serve."""


def check_inputs(cfg: Config, command: str, path: Path) -> None:
    """Raise InputError when the run directory `path` cannot be written or what `command` reads cannot serve it."""
    check_writable(path)
    if command == "pretrain":
        check_image_source(cfg.pretrain)
    if command in ENV_COMMANDS:
        env_spec(cfg.env)


def check_writable(path: Path) -> None:
    """`path` exists as a writable directory, or its nearest existing ancestor is one (so it can be created).

    A check, not a promise (a disk can fill up later: experiments/cli.py reports that in one line too), and as root
    only a read-only disk fails it, since root may write into any folder.
    """
    existing = path
    while not existing.exists():
        existing = existing.parent  # ends at "." or "/", which exist
    if not existing.is_dir():
        raise InputError(f"cannot create the run directory {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write the run directory {path}: {existing} is not writable (permissions or a "
            "read-only disk); choose another --runs or --run-dir"
        )


def check_image_source(cfg: PretrainConfig) -> None:
    """`pretrain.data.source` names a folder with readable images, or an env that can be made, and holds a batch."""
    data = cfg.data
    if data.kind == "env":
        env_spec(EnvConfig(id=data.target, obs="pixels", size=cfg.encoder.image_size), "pretrain.data.source")
    if data.kind != "folder":
        whole_classes = math.ceil(data.num_images / data.num_classes) * data.num_classes  # as build_dataset makes them
        count = data.num_images if data.kind == "env" else whole_classes
        check_batch(count, cfg.optim.batch_size, "pretrain.data.num_images")
        return
    from worldmodel.perception.data import ImageFolderDataset, find_readable  # only image folders need torch and Pillow

    try:
        folder = ImageFolderDataset(data.target, data.stored_size)
    except ValueError as error:
        raise InputError(f"pretrain.data.source: {error}") from None
    check_batch(len(folder), cfg.optim.batch_size, f"the image folder {str(folder.root)!r}")
    readable, failures = find_readable(folder, MIN_READABLE_IMAGES)
    if len(readable) < MIN_READABLE_IMAGES:
        raise InputError(
            f"pretrain.data.source: only {len(readable)} of the {len(folder)} images in {str(folder.root)!r} can be "
            f"read, and a training step needs {MIN_READABLE_IMAGES}; the first unreadable: {failures[0]}"
        )


def check_batch(images: int, batch_size: int, source: str) -> None:
    """A batch draws `batch_size` different images: the source must hold that many."""
    if images < batch_size:
        raise InputError(f"{source}: {images} images, fewer than a batch (pretrain.optim.batch_size={batch_size})")


@functools.lru_cache(maxsize=16)
def env_spec(cfg: EnvConfig, key: str = "env") -> EnvSpec:
    """The spec of the env `cfg` names, made once to check that it can be made here as configured (registered, its
    package installed, the observation available); InputError naming `key` otherwise.

    Cached (the config and the spec are frozen): the check before the run directory and the command's own call make
    the env once."""
    from envs.make import make_env  # only env commands need gymnasium

    try:
        env, spec = make_env(cfg.id, obs=cfg.obs, size=cfg.size, action_repeat=cfg.action_repeat)
    except ValueError as error:
        raise InputError(f"{key}: {error}") from None
    env.close()
    return spec
