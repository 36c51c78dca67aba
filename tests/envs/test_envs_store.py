"""EpisodeStore: conventions, crash safety, checksums, window sampling against a reference, latents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from envs import CorruptShardError, EnvSpec, Episode, EpisodeStore, StoreWarning, Windows
from envs.store import OBS_CHUNK

REPO = Path(__file__).resolve().parents[2]


def make_episode(episode_id: int, length: int, terminated: bool = False, size: int = 4, dim: int = 3) -> Episode:
    """An episode whose data spell out where they came from: obs pixels = (episode_id, t % 256, 7),
    state = [episode_id, t], reward[t] = t, action[t] = one-hot(t % dim)."""
    steps = length + 1
    obs = np.zeros((steps, size, size, 3), np.uint8)
    obs[..., 0] = episode_id % 256
    obs[..., 1] = (np.arange(steps) % 256)[:, None, None]
    obs[..., 2] = 7
    actions = np.eye(dim, dtype=np.float32)[np.arange(1, steps) % dim]
    states = np.stack([np.full(steps, episode_id), np.arange(steps)], axis=1).astype(np.float32)
    return Episode.from_transitions(obs, actions, np.arange(1, steps, dtype=np.float32), terminated, states)


def assert_episodes_equal(a: Episode, b: Episode) -> None:
    for field in ("obs", "action", "reward", "is_first", "is_last", "is_terminal", "state"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_episode_conventions() -> None:
    episode = make_episode(3, 5, terminated=True)
    assert episode.length == 5 and episode.num_steps == 6
    assert episode.is_first.tolist() == [True] + [False] * 5
    assert episode.is_last.tolist() == [False] * 5 + [True]
    assert episode.is_terminal.tolist() == [False] * 5 + [True]
    assert not episode.action[0].any() and episode.reward[0] == 0  # nothing led to the first step
    assert episode.total_return == sum(range(1, 6))
    with pytest.raises(ValueError, match="zero action and zero reward"):
        Episode(**{**episode.__dict__, "reward": np.ones(6, np.float32)})
    with pytest.raises(ValueError, match="is_last must be True at the last step only"):
        Episode(**{**episode.__dict__, "is_last": np.zeros(6, bool)})
    with pytest.raises(ValueError, match=r"Episode.action must be float32"):
        Episode(**{**episode.__dict__, "action": episode.action.astype(np.float64)})


def test_round_trip_and_reopen(tmp_path: Path) -> None:
    episodes = [make_episode(i, n, terminated=i % 2 == 0) for i, n in enumerate([3, 40, 70, 1])]
    store = EpisodeStore(tmp_path / "episodes")
    store.add_episodes(episodes[:2])
    store.add_episode(episodes[2])
    store.add_episode(episodes[3])
    assert len(store) == 4 and store.num_steps == 4 + 41 + 71 + 2
    reopened = EpisodeStore(tmp_path / "episodes")
    assert len(reopened) == 4 and reopened.problems == []
    for expected, loaded in zip(episodes, reopened, strict=True):
        assert_episodes_equal(expected, loaded)
    assert_episodes_equal(episodes[-1], reopened.episode(-1))
    with pytest.raises(IndexError, match="out of range"):
        reopened.episode(4)


def test_shapes_and_specs_refuse_to_mix(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path)
    store.add_episode(make_episode(0, 5, size=4))
    with pytest.raises(ValueError, match=r"obs_shape: \(4, 4, 3\) != \(8, 8, 3\)"):
        store.add_episode(make_episode(1, 5, size=8))
    spec = EnvSpec("CartPole-v1", "pixels", (4, 4, 3), "uint8", True, 3, None, None, 500, 2)
    EpisodeStore(tmp_path / "with_spec", spec=spec).add_episode(make_episode(0, 5))
    other = EnvSpec("CartPole-v1", "pixels", (8, 8, 3), "uint8", True, 3, None, None, 500, 2)
    with pytest.raises(ValueError, match="recorded with another env spec: obs_shape"):
        EpisodeStore(tmp_path / "with_spec", spec=other)
    assert EpisodeStore(tmp_path / "with_spec", spec=spec).spec == spec


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from envs.store import Episode, EpisodeStore
    store = EpisodeStore(sys.argv[1])
    rng = np.random.default_rng(0)
    def episode(i, n, noisy=False):
        obs = np.full((n + 1, 64, 64, 3), i, np.uint8)
        if noisy:
            obs = rng.integers(0, 256, obs.shape, dtype=np.uint8)  # incompressible: a large, slow write
        return Episode.from_transitions(obs, np.zeros((n, 2), np.float32), np.ones(n, np.float32), False)
    for i in range(3):
        store.add_episode(episode(i, 10 + i))
    print("complete", flush=True)
    store.add_episodes([episode(99, 3000, noisy=True)])  # ~37 MB: killed while this is being written
    print("unreachable", flush=True)
    """
)


def test_killed_writer_leaves_complete_episodes_and_reports_the_partial_shard(tmp_path: Path) -> None:
    path = tmp_path / "episodes"
    for _attempt in range(3):  # the kill must land while the temp file exists; retry if it was missed
        if path.exists():
            import shutil

            shutil.rmtree(path)
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout.readline().strip() == "complete"
        temp = None
        deadline = time.monotonic() + 60
        while temp is None and writer.poll() is None and time.monotonic() < deadline:
            temp = next((p for p in (path / "shards").iterdir() if p.name.startswith(".")), None)
            time.sleep(0.0005)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        if temp is not None and temp.exists():
            break
    else:
        pytest.fail("never caught the writer mid-shard")
    assert writer.returncode == -signal.SIGKILL

    with pytest.warns(StoreWarning, match=rf"half-written shard .*{temp.name}.*ignored"):
        store = EpisodeStore(path)
    assert len(store) == 3
    assert [e.length for e in store] == [10, 11, 12]
    assert [int(e.obs[0, 0, 0, 0]) for e in store] == [0, 1, 2]
    assert any(temp.name in p for p in store.problems)
    assert not temp.exists() and EpisodeStore(path).problems == []  # cleaned up: reported once
    # Appending after the crash works.
    obs = np.zeros((5, 64, 64, 3), np.uint8)
    store.add_episode(Episode.from_transitions(obs, np.ones((4, 2), np.float32), np.ones(4, np.float32), True))
    assert len(EpisodeStore(path)) == 4


def test_flipped_byte_is_reported_and_skipped(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path)
    for i in range(3):
        store.add_episode(make_episode(i, 20))
    victim = sorted((tmp_path / "shards").iterdir())[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    # Without the check at open the damage is caught when the shard is read: an error, never wrong data.
    lazy = EpisodeStore(tmp_path, verify=False)
    assert len(lazy) == 3
    assert_episodes_equal(lazy.episode(0), make_episode(0, 20))
    with pytest.warns(StoreWarning), pytest.raises(CorruptShardError, match=victim.name):
        lazy.episode(1)

    with pytest.warns(StoreWarning, match=rf"{victim.name} fails its sha256 check.*moved aside"):
        reopened = EpisodeStore(tmp_path)
    assert len(reopened) == 2
    assert [int(e.state[0, 0]) for e in reopened] == [0, 2]  # never loaded the damaged one
    assert victim.with_name(victim.name + ".corrupt").exists()  # kept for inspection ...
    with pytest.warns(StoreWarning, match="1 damaged shard.* set aside, holding 1 episodes"):  # at every open ...
        assert EpisodeStore(tmp_path).problems == []  # ... but its damage is reported once


def test_crash_between_shard_and_index_is_recovered(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path)
    for i in range(3):
        store.add_episode(make_episode(i, 5))
    index = tmp_path / "index.jsonl"
    lines = index.read_bytes().splitlines(keepends=True)
    index.write_bytes(b"".join(lines[:2]) + lines[2][:17])  # the last append torn halfway
    with pytest.warns(StoreWarning) as record:
        reopened = EpisodeStore(tmp_path)
    messages = " ".join(str(w.message) for w in record)
    assert "line 3 is damaged" in messages and "re-indexed" in messages
    assert len(reopened) == 3 and int(reopened.episode(2).state[0, 0]) == 2
    # The repaired index is clean: a further open finds nothing to report.
    reopened.add_episode(make_episode(3, 5))
    assert len(EpisodeStore(tmp_path)) == 4 and EpisodeStore(tmp_path).problems == []
    assert all(json.loads(line) for line in index.read_text().splitlines())


def test_terminated_and_truncated_give_cont(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path)
    store.add_episode(make_episode(0, 4, terminated=True))
    store.add_episode(make_episode(1, 4, terminated=False))
    windows = store.sample(64, 5, np.random.default_rng(0))
    for b in range(64):
        episode_id = int(windows.state[b, 0, 0])
        assert windows.is_last[b].tolist() == [False] * 4 + [True]  # both end
        expected = [1.0] * 4 + ([0.0] if episode_id == 0 else [1.0])  # only termination ends the future
        assert windows.cont[b].tolist() == expected
    assert windows.cont.dtype == np.float32


def test_windows_never_mix_episodes(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path)
    rng = np.random.default_rng(1)
    for i in range(12):
        store.add_episode(make_episode(i, int(rng.integers(1, 90))))
    windows = store.sample(256, 16, np.random.default_rng(2))
    assert windows.obs.shape == (256, 16, 4, 4, 3) and windows.action.shape == (256, 16, 3)
    episode_ids, steps = windows.state[..., 0], windows.state[..., 1]
    assert (episode_ids == episode_ids[:, :1]).all()
    assert (np.diff(steps, axis=1) == 1).all()
    assert (windows.obs[..., 0] == episode_ids[:, :, None, None]).all()
    assert (windows.is_first == (steps == 0)).all()
    assert (windows.reward == steps).all()  # reward[t] arrived with obs[t]

    with pytest.raises(ValueError, match="no episode has at least 200 steps"):
        store.sample(4, 200, np.random.default_rng(0))


def reference_windows(episodes: list[Episode], batch: int, length: int, generator, cross: bool) -> Windows:
    """The simple version: list every allowed window start, pick with one integers() call, slice."""
    fields = ("obs", "action", "reward", "is_first", "is_last", "is_terminal", "state")
    if cross:
        joined = {f: np.concatenate([getattr(e, f) for e in episodes]) for f in fields}
        starts = [(None, s) for s in range(len(joined["obs"]) - length + 1)]
    else:
        starts = [(i, s) for i, e in enumerate(episodes) for s in range(e.num_steps - length + 1)]
    picks = [starts[k] for k in generator.integers(0, len(starts), size=batch)]
    out = {f: [] for f in fields}
    for i, s in picks:
        source = joined if cross else {f: getattr(episodes[i], f) for f in fields}
        for f in fields:
            out[f].append(source[f][s : s + length])
    stacked = {f: np.stack(v) for f, v in out.items()}
    return Windows(
        obs=stacked["obs"],
        action=stacked["action"],
        reward=stacked["reward"],
        cont=1.0 - stacked["is_terminal"].astype(np.float32),
        is_first=stacked["is_first"],
        is_last=stacked["is_last"],
        state=stacked["state"],
    )


@pytest.mark.parametrize("seed", range(6))
def test_sampling_matches_reference(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    episodes = [
        make_episode(i, int(rng.integers(1, 3 * OBS_CHUNK)), terminated=bool(rng.random() < 0.5))
        for i in range(int(rng.integers(1, 9)))
    ]
    # Small cache: forces evictions and re-reads, which must not change the result.
    store = EpisodeStore(tmp_path, cache_mb=0.01)
    position = 0
    while position < len(episodes):  # shards of 1 to 3 episodes
        count = int(rng.integers(1, 4))
        store.add_episodes(episodes[position : position + count])
        position += count
    longest = max(e.num_steps for e in episodes)
    for cross in (False, True):
        length = int(rng.integers(1, longest + 1))
        batch = int(rng.integers(1, 40))
        got = store.sample(batch, length, np.random.default_rng(seed + 100), cross_episodes=cross)
        want = reference_windows(episodes, batch, length, np.random.default_rng(seed + 100), cross)
        for field in Windows._fields:
            if getattr(want, field) is None:
                assert getattr(got, field) is None
            else:
                np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=f"{field} {cross}")
        assert got.obs.dtype == np.uint8 and got.reward.dtype == np.float32 and got.is_first.dtype == bool


def test_cross_episode_windows_mark_the_seam(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path)
    store.add_episodes([make_episode(0, 3), make_episode(1, 3)])  # 4 + 4 steps
    windows = store.windows_at(np.array([2]), 4)
    assert windows.state[0, :, 0].tolist() == [0, 0, 1, 1]
    assert windows.is_first[0].tolist() == [False, False, True, False]
    assert windows.is_last[0].tolist() == [False, True, False, False]


def test_cache_stays_bounded(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path, cache_mb=0.05)  # ~52 kB; each obs piece is 32 * 48 B, each episode more
    for i in range(20):
        store.add_episode(make_episode(i, 200))
    for seed in range(5):
        store.sample(32, 16, np.random.default_rng(seed))
    assert store._cache.bytes <= store._cache.max_bytes
    assert store._shard_cache.bytes <= max(
        store._shard_cache.max_bytes, max(p.stat().st_size for p in (tmp_path / "shards").iterdir())
    )


def test_latent_cache(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path)
    for i in range(3):
        store.add_episode(make_episode(i, 10 + i))
    latents = store.latents("vit-tiny.abc123")
    assert latents.missing() == [0, 1, 2]
    for i in (0, 2):
        steps = store.episode(i).num_steps
        latents.put(i, np.arange(steps * 5, dtype=np.float32).reshape(steps, 5) / 7)
    assert latents.missing() == [1] and 0 in latents and 1 not in latents
    # kept exactly as given (float32), not rounded: an agent encoding the frames afresh must meet the same numbers
    np.testing.assert_array_equal(latents.get(2), (np.arange(13 * 5, dtype=np.float32).reshape(13, 5) / 7))
    assert latents.get(2).dtype == np.float32
    with pytest.raises(KeyError, match="missing"):
        latents.get(1)
    with pytest.raises(ValueError, match=r"must be \(12, D\)"):
        latents.put(1, np.zeros((5, 5)))
    with pytest.raises(ValueError, match="D=5"):
        latents.put(1, np.zeros((12, 6)))
    with pytest.raises(ValueError, match="latent key"):
        store.latents("../escape")
    latents.put(1, np.ones((12, 5)))

    reopened = EpisodeStore(tmp_path)
    cache = reopened.latents("vit-tiny.abc123")
    assert cache.missing() == [] and cache.dim == 5
    windows = reopened.sample(16, 4, np.random.default_rng(0), latent_key="vit-tiny.abc123")
    assert windows.latent.shape == (16, 4, 5) and windows.latent.dtype == np.float32
    for b in range(16):
        episode, step = int(windows.state[b, 0, 0]), int(windows.state[b, 0, 1])
        np.testing.assert_array_equal(windows.latent[b], cache.get(episode)[step : step + 4])
    assert reopened.sample(2, 4, np.random.default_rng(0)).latent is None

    # A damaged latent file is reported, dropped and recomputed, never returned.
    victim = next(p for p in (tmp_path / "latents" / "vit-tiny.abc123").iterdir() if p.name.startswith("000001"))
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    fresh = EpisodeStore(tmp_path).latents("vit-tiny.abc123")
    with pytest.warns(StoreWarning, match="fails its checksum"), pytest.raises(KeyError):
        fresh.get(1)
    assert fresh.missing() == [1]
    assert not victim.exists()


def test_empty_store_errors(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path)
    assert len(store) == 0 and store.num_steps == 0
    with pytest.raises(ValueError, match="is empty"):
        store.sample(2, 2, np.random.default_rng(0))
    assert os.path.isdir(tmp_path / "shards")
