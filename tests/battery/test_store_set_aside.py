"""A damaged shard set aside is named at every later open of its store, with how many shards and episodes are set
aside and where, so no later run trains on fewer episodes than were collected without a word."""

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from envs import Episode, EpisodeStore, StoreWarning


def episode(seed: int, length: int = 6) -> Episode:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(length + 1, 3)).astype(np.float32)
    return Episode.from_transitions(
        obs, np.eye(2, dtype=np.float32)[rng.integers(0, 2, length)], rng.normal(size=length), terminated=False
    )


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def open_warnings(path: Path) -> tuple[EpisodeStore, list[str]]:
    """Open the store, returning it and the StoreWarnings of the open (every one, as a fresh process would show)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = EpisodeStore(path)
    return store, [str(w.message) for w in caught if issubclass(w.category, StoreWarning)]


def test_every_open_after_the_damage_says_what_is_set_aside(tmp_path):
    store = EpisodeStore(tmp_path)
    store.add_episodes([episode(0), episode(1)])  # shard 0: 2 episodes
    store.add_episodes([episode(2), episode(3), episode(4)])  # shard 1: 3 episodes
    store.add_episodes([episode(5)])  # shard 2: 1 episode
    shards = sorted((tmp_path / "shards").iterdir())
    flip_a_byte(shards[1])

    first, messages = open_warnings(tmp_path)
    assert len(first) == 3 and any("fails its sha256 check" in m for m in messages)

    for _ in range(3):  # every later open, not only the one that found the damage
        again, messages = open_warnings(tmp_path)
        assert len(again) == 3 and again.problems == []  # nothing new went wrong ...
        notes = [m for m in messages if "set aside" in m]
        assert len(notes) == 1, messages  # ... but the loss is said, once an open
        assert re.search(r"1 damaged shard\(s\) set aside, holding 3 episodes that are not used", notes[0])
        assert "serves the other 3 episodes" in notes[0]
        assert str(tmp_path / "shards") in notes[0] and shards[1].name + ".corrupt" in notes[0]


def test_a_shard_set_aside_without_a_record_is_still_said(tmp_path):
    # A store whose shard was set aside by an earlier version (no aside.jsonl): the episode count is unknown.
    store = EpisodeStore(tmp_path)
    store.add_episodes([episode(0), episode(1)])
    shard = next((tmp_path / "shards").iterdir())
    shard.rename(shard.with_name(shard.name + ".corrupt"))
    (tmp_path / "index.jsonl").write_text("")
    _, messages = open_warnings(tmp_path)
    assert any(
        "1 damaged shard(s) set aside, holding 0 episodes (and those of 1 shard(s) of unrecorded size)" in m
        for m in messages
    ), messages


def test_deleting_the_set_aside_shards_silences_the_warning(tmp_path):
    store = EpisodeStore(tmp_path)
    store.add_episodes([episode(0)])
    store.add_episodes([episode(1)])
    flip_a_byte(sorted((tmp_path / "shards").iterdir())[0])
    with pytest.warns(StoreWarning):
        EpisodeStore(tmp_path)
    for aside in (tmp_path / "shards").glob("*.corrupt"):
        aside.unlink()
    store, messages = open_warnings(tmp_path)
    assert len(store) == 1 and messages == []
