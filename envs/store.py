"""The episode store: append-only compressed shards on disk, sampled as fixed-length windows.

Layout of `runs/<run>/episodes/`:

    store.json          format version, the array layout (obs shape/dtype, action and state sizes), the EnvSpec
    index.jsonl         one line per shard: its file name, sequence number, sha256 and each episode's step count
    shards/NNNNNN-<sha16>.npz   np.savez_compressed of a few whole episodes, written atomically; obs are split
                        into pieces of OBS_CHUNK steps so a window decodes only what it needs
    shards/*.npz.corrupt        a damaged shard set aside, kept for inspection and never loaded
    aside.jsonl         one line per shard set aside: its file, the episodes it held and why
    latents/<key>/      cached encoder outputs, one float32 .npy per episode (see `LatentCache`)

Conventions (the world model depends on them). An episode of L transitions holds L+1 steps; step t has
`obs[t]`; `action[t]`, the action that led to obs[t] (zeros at t=0; discrete actions one-hot);
`reward[t]`, received on arriving at obs[t] (0 at t=0); `is_first[t]` (t=0 only); `is_last[t]` (the
last step only: the episode ended there, by termination or truncation); `is_terminal[t]` (ended by
termination: no future; `cont = 1 - is_terminal`); `state[t]`, the true state when the env has one.

Crash safety: a shard is written to a temp file, fsynced and renamed, then its index line is appended and
fsynced. A crash mid-write leaves only a temp file (reported, never loaded); a crash between the rename
and the index append leaves a complete shard that the next open re-indexes after checking the sha256 that
its name carries. Every shard's sha256 is checked when it is read (and, by default, for all shards at open),
so a damaged shard is reported with a warning naming it and never loaded. A shard found damaged at open is set
aside, and every later open warns how many shards and episodes are set aside, so no run trains on fewer episodes
than were collected without being told. One writer at a time; readers in other
processes see what it added after `refresh` (how the processes of a torchrun job share a store).

Memory: only the index (per-episode step counts) lives in memory; obs pieces and the small per-episode arrays
are decoded on demand into a byte-bounded LRU cache (and compressed shards into a smaller one), so a store far
larger than RAM can be sampled.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from envs.atomic import atomic_write_bytes, sha256_bytes, sha256_file
from envs.spec import EnvSpec

FORMAT_VERSION = 1
OBS_CHUNK = 32  # steps per separately compressed piece of an episode's obs: a window decodes 1-2 pieces, not all
_SHARD_NAME = re.compile(r"^(\d{6})-([0-9a-f]{16})\.npz")  # the name's start; ".npz" ends a live shard
_ASIDE = ".corrupt"  # suffix of a damaged shard moved out of the way
_ASIDE_LOG = "aside.jsonl"  # what each set-aside shard held: its episodes are unreadable once it is damaged
_TEMP_NAME = re.compile(r"^\.(.+)\.tmp-(\d+)$")
_LATENT_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FIELDS = ("obs", "action", "reward", "is_first", "is_last", "is_terminal", "state")
_SMALL_FIELDS = _FIELDS[1:]


class StoreWarning(UserWarning):
    """Something in an episode store was skipped or repaired (a damaged or half-written file)."""


class CorruptShardError(RuntimeError):
    """A shard's bytes no longer match its checksum when read."""


# ============================================================================ episodes


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == has no single truth value
class Episode:
    """One episode of L transitions as L+1 steps (see the module docstring for the conventions).

    obs (L+1, *obs_shape) uint8 or float32; action (L+1, A) float32; reward (L+1,) float32;
    is_first / is_last / is_terminal (L+1,) bool; state (L+1, S) float32 or None.
    """

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    is_first: np.ndarray
    is_last: np.ndarray
    is_terminal: np.ndarray
    state: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.obs, np.ndarray):
            raise ValueError(f"Episode.obs must be a numpy array, got {type(self.obs).__name__}")
        n = len(self.obs)
        if n < 2:
            raise ValueError(f"an episode needs at least one transition (2 steps), got {n} steps")
        expected = {
            "action": (np.float32, 2),
            "reward": (np.float32, 1),
            "is_first": (np.bool_, 1),
            "is_last": (np.bool_, 1),
            "is_terminal": (np.bool_, 1),
            "state": (np.float32, 2),
        }
        for name, (dtype, ndim) in expected.items():
            value = getattr(self, name)
            if value is None and name == "state":
                continue
            if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != ndim or len(value) != n:
                got = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
                raise ValueError(f"Episode.{name} must be {np.dtype(dtype)} with {ndim} dims and {n} steps, got {got}")
        if self.obs.dtype not in (np.uint8, np.float32):
            raise ValueError(f"Episode.obs must be uint8 (pixels) or float32 (state), got {self.obs.dtype}")
        if not (self.is_first[0] and not self.is_first[1:].any()):
            raise ValueError("Episode.is_first must be True at step 0 only")
        if not (self.is_last[-1] and not self.is_last[:-1].any()):
            raise ValueError("Episode.is_last must be True at the last step only")
        if self.is_terminal[:-1].any():
            raise ValueError("Episode.is_terminal can only be True at the last step")
        if self.action[0].any() or self.reward[0] != 0:
            raise ValueError("Episode step 0 must have a zero action and zero reward (nothing led to it)")

    @classmethod
    def from_transitions(
        cls,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: bool,
        states: np.ndarray | None = None,
    ) -> Episode:
        """Build an episode from L transitions.

        Args:
            obs: (L+1, *obs_shape), the reset observation then one per transition.
            actions: (L, A) float32 action vectors (discrete: one-hot).
            rewards: (L,).
            terminated: whether it ended by termination (else truncation or a cut).
            states: (L+1, S) or None.
        """
        obs = np.asarray(obs)
        actions = np.asarray(actions, dtype=np.float32)
        n = len(obs)
        if actions.ndim != 2 or len(actions) != n - 1:
            raise ValueError(f"actions must be (L, A) with L = len(obs) - 1 = {n - 1}, got shape {actions.shape}")
        flags = np.zeros(n, dtype=bool)
        is_first, is_last, is_terminal = flags.copy(), flags.copy(), flags.copy()
        is_first[0] = True
        is_last[-1] = True
        is_terminal[-1] = bool(terminated)
        return cls(
            obs=obs,
            action=np.concatenate([np.zeros((1, actions.shape[1]), np.float32), actions]),
            reward=np.concatenate([[0.0], np.asarray(rewards, dtype=np.float64)]).astype(np.float32),
            is_first=is_first,
            is_last=is_last,
            is_terminal=is_terminal,
            state=None if states is None else np.asarray(states, dtype=np.float32),
        )

    @property
    def length(self) -> int:
        """Transitions L (steps minus one)."""
        return len(self.obs) - 1

    @property
    def num_steps(self) -> int:
        """Steps L+1."""
        return len(self.obs)

    @property
    def terminated(self) -> bool:
        return bool(self.is_terminal[-1])

    @property
    def total_return(self) -> float:
        return float(self.reward.sum(dtype=np.float64))

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in _FIELDS if getattr(self, f) is not None)


class Windows(NamedTuple):
    """A batch of fixed-length windows, batch-major.

    obs (B, T, *obs_shape) uint8 (pixels) or float32 (state); action (B, T, A) float32; reward (B, T) float32;
    cont (B, T) float32 = 1 - is_terminal; is_first, is_last (B, T) bool; state (B, T, S) float32 or None;
    latent (B, T, D) float32 or None (cached encoder outputs, when a latent key was given).
    """

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    cont: np.ndarray
    is_first: np.ndarray
    is_last: np.ndarray
    state: np.ndarray | None = None
    latent: np.ndarray | None = None


@dataclass(frozen=True)
class StoreLayout:
    """Array shapes every episode of a store shares."""

    obs_shape: tuple[int, ...]
    obs_dtype: str
    action_dim: int
    state_dim: int | None

    @classmethod
    def of_episode(cls, episode: Episode) -> StoreLayout:
        return cls(
            obs_shape=tuple(int(v) for v in episode.obs.shape[1:]),
            obs_dtype=str(episode.obs.dtype),
            action_dim=int(episode.action.shape[1]),
            state_dim=None if episode.state is None else int(episode.state.shape[1]),
        )

    @classmethod
    def of_spec(cls, spec: EnvSpec) -> StoreLayout:
        # Discrete actions are stored one-hot, so both kinds take action_dim floats.
        return cls(spec.obs_shape, spec.obs_dtype, spec.action_dim, spec.state_dim)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["obs_shape"] = list(self.obs_shape)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreLayout:
        return cls(
            tuple(int(v) for v in data["obs_shape"]),
            str(data["obs_dtype"]),
            int(data["action_dim"]),
            None if data["state_dim"] is None else int(data["state_dim"]),
        )

    def differences(self, other: StoreLayout) -> list[str]:
        return [f"{k}: {v!r} != {getattr(other, k)!r}" for k, v in asdict(self).items() if v != getattr(other, k)]


@dataclass(frozen=True)
class _Shard:
    name: str
    sequence: int
    sha256: str
    steps: tuple[int, ...]  # steps (L+1) of each episode in it


class _LRU:
    """A dict bounded by the total bytes of its values (`nbytes`), dropping the least recently used."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()

    def get(self, key: Any) -> Any:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Any, value: Any, nbytes: int) -> None:
        if key in self._items:
            self.bytes -= self._items.pop(key)[1]
        self._items[key] = (value, nbytes)
        self.bytes += nbytes
        while self.bytes > self.max_bytes and len(self._items) > 1:
            _, (_, size) = self._items.popitem(last=False)
            self.bytes -= size

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


# ============================================================================ the store


class EpisodeStore:
    """Append-only store of episodes in compressed shards, with window sampling and a latent cache.

    Args:
        path: the store's directory (created if missing), e.g. runs/<run>/episodes.
        spec: the env's spec; recorded on creation, and an existing store recorded with a different one refuses
            to open (naming what differs).
        cache_mb: bound on decoded data kept in memory (compressed shards get another quarter of it).
        verify: check every shard's sha256 at open (reads the whole store once); shards are also checked whenever
            they are read.
    """

    def __init__(
        self, path: str | os.PathLike, spec: EnvSpec | None = None, cache_mb: float = 512, verify: bool = True
    ) -> None:
        self.path = Path(path)
        self.shard_dir = self.path / "shards"
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self._cache = _LRU(int(cache_mb * 2**20))  # ("small", episode) and ("obs", episode, piece) -> arrays
        self._shard_cache = _LRU(int(cache_mb * 2**20 / 4))  # shard -> open NpzFile over its verified bytes
        self._latent_caches: dict[str, LatentCache] = {}
        self.problems: list[str] = []
        """What was skipped or repaired at open or since, one line each (also issued as `StoreWarning`s)."""

        self._spec: EnvSpec | None = None
        self._layout: StoreLayout | None = None
        self._read_meta(spec)
        self._shards: list[_Shard] = []
        # Per episode, as growing lists (appends stay O(1)); `_index_arrays` turns them into numpy when read.
        self._episode_shard: list[int] = []  # index into _shards
        self._episode_slot: list[int] = []  # position inside its shard
        self._episode_steps: list[int] = []  # L+1
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None  # (steps (E,), starts (E,)) for the lists above
        self._set_aside_now: set[str] = set()  # set aside by this open, so already reported
        self._load_index(verify)
        self._warn_set_aside()

    def refresh(self) -> None:
        """Re-read the index, to see the episodes another process added since this one opened the store (the writer
        of a torchrun job is rank 0). Shards are checked when read, as always."""
        self._shards, self._episode_shard, self._episode_slot, self._episode_steps = [], [], [], []
        self._arrays = None
        self._cache.clear()
        self._shard_cache.clear()
        self._read_meta(None)
        self._load_index(verify=False)
        for cache in self._latent_caches.values():
            cache.refresh()

    # ------------------------------------------------------------------ metadata

    @property
    def spec(self) -> EnvSpec | None:
        """The EnvSpec recorded with the store, if any."""
        return self._spec

    @property
    def layout(self) -> StoreLayout | None:
        """Shapes shared by all episodes; None until the first episode or spec."""
        return self._layout

    def _read_meta(self, spec: EnvSpec | None) -> None:
        meta_path = self.path / "store.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != FORMAT_VERSION:
                raise ValueError(f"{meta_path}: format {meta.get('format')!r}, this code reads {FORMAT_VERSION}")
            self._layout = None if meta["layout"] is None else StoreLayout.from_dict(meta["layout"])
            self._spec = None if meta["spec"] is None else EnvSpec.from_dict(meta["spec"])
        if spec is None:
            return
        if self._spec is not None and self._spec != spec:
            differences = "; ".join(self._spec.differences(spec))
            raise ValueError(f"episode store {self.path} was recorded with another env spec: {differences}")
        if self._layout is not None and self._layout != StoreLayout.of_spec(spec):
            raise ValueError(
                f"episode store {self.path} holds other shapes than this spec: "
                f"{'; '.join(self._layout.differences(StoreLayout.of_spec(spec)))}"
            )
        if self._spec is None:
            self._spec, self._layout = spec, StoreLayout.of_spec(spec)
            self._write_meta()

    def _write_meta(self) -> None:
        meta = {
            "format": FORMAT_VERSION,
            "layout": None if self._layout is None else self._layout.to_dict(),
            "spec": None if self._spec is None else self._spec.to_dict(),
        }
        atomic_write_bytes(self.path / "store.json", (json.dumps(meta, indent=1) + "\n").encode())

    def _report(self, message: str) -> None:
        self.problems.append(message)
        warnings.warn(message, StoreWarning, stacklevel=3)

    # ------------------------------------------------------------------ index

    def _load_index(self, verify: bool) -> None:
        index_path = self.path / "index.jsonl"
        entries: dict[str, _Shard] = {}
        rewrite = False
        if index_path.exists():
            raw = index_path.read_bytes()
            lines = raw.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            elif lines:
                rewrite = True  # a torn last line (no newline): the next append must not glue onto it
            for number, line in enumerate(lines, start=1):
                try:
                    record = json.loads(line)
                    shard = _Shard(
                        record["shard"],
                        int(record["sequence"]),
                        record["sha256"],
                        tuple(int(v) for v in record["steps"]),
                    )
                except (ValueError, KeyError, TypeError):
                    self._report(f"{index_path} line {number} is damaged (a crash while appending?); skipped")
                    rewrite = True
                    continue
                entries[shard.name] = shard

        on_disk: set[str] = set()
        sequences = [s.sequence for s in entries.values()]  # every number ever used, so none is reused
        for entry in os.scandir(self.shard_dir):
            temp = _TEMP_NAME.match(entry.name)
            shard_name = _SHARD_NAME.match(temp.group(1) if temp else entry.name)
            if shard_name:
                sequences.append(int(shard_name.group(1)))
            if temp:
                pid = int(temp.group(2))
                if not _process_alive(pid):  # a live writer's temp file is simply a write in progress
                    self._report(f"half-written shard {entry.path} (writer pid {pid} is gone); ignored and removed")
                    Path(entry.path).unlink(missing_ok=True)
            elif shard_name and entry.name.endswith(".npz"):
                on_disk.add(entry.name)
            elif not (shard_name and entry.name.endswith(_ASIDE)):
                self._report(f"unexpected file {entry.path} in the shard directory; ignored")

        shards = []
        for name, shard in entries.items():
            if name not in on_disk:
                self._report(f"shard {name} is in the index but missing from {self.shard_dir}; its episodes are lost")
                rewrite = True
            elif verify and sha256_file(self.shard_dir / name) != shard.sha256:
                self._set_aside(name, "fails its sha256 check (damaged on disk)", len(shard.steps))
                rewrite = True
            else:
                shards.append(shard)
        for name in sorted(on_disk - set(entries)):
            recovered = self._recover_shard(name)
            if recovered is not None:
                shards.append(recovered)
            rewrite = True

        self._next_sequence = 1 + max(sequences, default=-1)
        shards.sort(key=lambda s: s.sequence)
        for shard in shards:
            self._append_to_memory(shard)
        if rewrite:
            self._rewrite_index(shards)

    def _set_aside(self, name: str, why: str, episodes: int | None = None) -> None:
        """Report a damaged shard and rename it out of the way (kept for inspection, never loaded); `aside.jsonl`
        keeps how many episodes it held, for the warning of every later open."""
        path = self.shard_dir / name
        self._report(f"shard {path} {why}; ignored, moved aside to {name}{_ASIDE}")
        record = {"shard": name + _ASIDE, "episodes": episodes, "why": why}
        with open(self.path / _ASIDE_LOG, "ab") as log:
            log.write((json.dumps(record) + "\n").encode())
            log.flush()
            os.fsync(log.fileno())
        os.replace(path, path.with_name(name + _ASIDE))
        self._set_aside_now.add(name + _ASIDE)

    def set_aside(self) -> dict[str, int | None]:
        """The shards set aside as damaged and still in the shard directory: file name -> the episodes it held (None
        when unknown: a shard that was in no index, or one set aside by an older version)."""
        held: dict[str, int | None] = {}
        log = self.path / _ASIDE_LOG
        if log.exists():
            for line in log.read_bytes().splitlines():
                try:
                    record = json.loads(line)
                    held[record["shard"]] = None if record["episodes"] is None else int(record["episodes"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn line: that shard's episodes are simply unknown
        names = sorted(entry.name for entry in os.scandir(self.shard_dir) if entry.name.endswith(_ASIDE))
        return {name: held.get(name) for name in names if _SHARD_NAME.match(name)}

    def _warn_set_aside(self) -> None:
        """Say at every open that shards are set aside: reported once, a loss would go unnoticed by later runs."""
        aside = self.set_aside()
        if not set(aside) - self._set_aside_now:  # none, or only those this open set aside and just reported
            return
        lost = sum(n for n in aside.values() if n is not None)
        unknown = sum(n is None for n in aside.values())
        held = f"{lost} episodes" + (f" (and those of {unknown} shard(s) of unrecorded size)" if unknown else "")
        warnings.warn(
            f"episode store {self.path}: {len(aside)} damaged shard(s) set aside, holding {held} that are not used; "
            f"this store serves the other {len(self)} episodes. The shards are kept in {self.shard_dir} "
            f"({', '.join(aside)}); delete them once they are no longer needed to silence this warning",
            StoreWarning,
            stacklevel=3,
        )

    def _recover_shard(self, name: str) -> _Shard | None:
        """A complete shard the index does not list (crash between rename and index append): check and re-index."""
        path = self.shard_dir / name
        match = _SHARD_NAME.match(name)
        data = path.read_bytes()
        sha = sha256_bytes(data)
        if not sha.startswith(match.group(2)):
            self._set_aside(name, "is not in the index and fails its checksum")
            return None
        try:
            with np.load(io.BytesIO(data)) as npz:
                meta = json.loads(bytes(npz["meta"]).decode())
            steps = tuple(int(v) for v in meta["steps"])
        except Exception as error:  # any decoding failure means the file is not a usable shard
            self._set_aside(name, f"is not in the index and cannot be read ({error})")
            return None
        self._report(f"shard {path} was missing from the index (a crash after writing it?); re-indexed")
        return _Shard(name, int(match.group(1)), sha, steps)

    def _rewrite_index(self, shards: Sequence[_Shard]) -> None:
        lines = "".join(_index_line(s) for s in shards)
        atomic_write_bytes(self.path / "index.jsonl", lines.encode())

    def _append_to_memory(self, shard: _Shard) -> None:
        k = len(self._shards)
        self._shards.append(shard)
        self._episode_shard.extend([k] * len(shard.steps))
        self._episode_slot.extend(range(len(shard.steps)))
        self._episode_steps.extend(shard.steps)
        self._arrays = None

    def _index_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps (E,), starts (E,)) int64: each episode's L+1 and its offset in the concatenation of all."""
        if self._arrays is None:
            steps = np.asarray(self._episode_steps, dtype=np.int64)
            self._arrays = (steps, np.cumsum(steps) - steps)
        return self._arrays

    # ------------------------------------------------------------------ writing

    def add_episode(self, episode: Episode) -> None:
        """Append one episode (its own shard; `add_episodes` packs several into one)."""
        self.add_episodes([episode])

    def add_episodes(self, episodes: Sequence[Episode]) -> None:
        """Append episodes as one shard, durably: when this returns they survive a crash."""
        if not episodes:
            return
        for episode in episodes:
            if not isinstance(episode, Episode):
                raise TypeError(f"add_episodes takes Episode objects, got {type(episode).__name__}")
            layout = StoreLayout.of_episode(episode)
            if self._layout is None:
                self._layout = layout
                self._write_meta()
            elif layout != self._layout:
                raise ValueError(
                    f"episode does not match the store {self.path}: {'; '.join(self._layout.differences(layout))} "
                    "(store vs episode)"
                )
        arrays: dict[str, np.ndarray] = {}
        for j, episode in enumerate(episodes):
            for field in _SMALL_FIELDS:
                value = getattr(episode, field)
                if value is not None:
                    arrays[f"e{j}_{field}"] = value
            for piece, begin in enumerate(range(0, episode.num_steps, OBS_CHUNK)):
                arrays[f"e{j}_obs{piece}"] = episode.obs[begin : begin + OBS_CHUNK]
        steps = [e.num_steps for e in episodes]
        meta = {"format": FORMAT_VERSION, "steps": steps, "obs_chunk": OBS_CHUNK}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        data = buffer.getvalue()
        sha = sha256_bytes(data)
        shard = _Shard(f"{self._next_sequence:06d}-{sha[:16]}.npz", self._next_sequence, sha, tuple(steps))
        atomic_write_bytes(self.shard_dir / shard.name, data)
        self._next_sequence += 1
        with open(self.path / "index.jsonl", "ab") as index:
            index.write(_index_line(shard).encode())
            index.flush()
            os.fsync(index.fileno())
        self._append_to_memory(shard)

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self._episode_steps)

    @property
    def num_steps(self) -> int:
        """Steps (frames) over all episodes."""
        return int(self._index_arrays()[0].sum())

    @property
    def episode_steps(self) -> np.ndarray:
        """(E,) int64, steps (L+1) of each episode."""
        return self._index_arrays()[0].copy()

    def episode(self, index: int) -> Episode:
        """The episode at `index` (0 <= index < len(self); negative counts from the end)."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"episode index {index} is out of range for a store of {n} episodes")
        index %= n
        pieces = range(0, -(-self._episode_steps[index] // OBS_CHUNK))
        obs = np.concatenate([self._obs_piece(index, piece) for piece in pieces])
        return Episode(obs=obs, **self._small(index))

    def __iter__(self) -> Iterator[Episode]:
        for index in range(len(self)):
            yield self.episode(index)

    def _npz(self, shard_index: int) -> Any:
        """The open archive of a shard, its bytes checked against the sha256 first."""
        npz = self._shard_cache.get(shard_index)
        if npz is None:
            shard = self._shards[shard_index]
            data = (self.shard_dir / shard.name).read_bytes()
            if sha256_bytes(data) != shard.sha256:
                message = f"shard {self.shard_dir / shard.name} fails its sha256 check when read (damaged since open)"
                self._report(message)
                raise CorruptShardError(message)
            npz = np.load(io.BytesIO(data))
            self._shard_cache.put(shard_index, npz, len(data))
        return npz

    def _small(self, index: int) -> dict[str, np.ndarray | None]:
        """Everything but obs of one episode: action, reward, flags, state."""
        fields = self._cache.get(("small", index))
        if fields is None:
            npz = self._npz(self._episode_shard[index])
            slot = self._episode_slot[index]
            fields = {f: _read_only(npz[f"e{slot}_{f}"]) if f"e{slot}_{f}" in npz else None for f in _SMALL_FIELDS}
            self._cache.put(("small", index), fields, sum(v.nbytes for v in fields.values() if v is not None))
        return fields

    def _obs_piece(self, index: int, piece: int) -> np.ndarray:
        """obs of steps [piece * OBS_CHUNK, (piece + 1) * OBS_CHUNK) of one episode."""
        obs = self._cache.get(("obs", index, piece))
        if obs is None:
            npz = self._npz(self._episode_shard[index])
            obs = _read_only(npz[f"e{self._episode_slot[index]}_obs{piece}"])
            self._cache.put(("obs", index, piece), obs, obs.nbytes)
        return obs

    # ------------------------------------------------------------------ sampling

    def sample(
        self,
        batch_size: int,
        length: int,
        generator: np.random.Generator,
        cross_episodes: bool = False,
        latent_key: str | None = None,
    ) -> Windows:
        """Sample `batch_size` windows of `length` consecutive steps.

        Without `cross_episodes`, each window lies inside one episode, every such window equally likely; episodes
        shorter than `length` steps are skipped (an error if none is long enough). With it, windows are drawn from
        the concatenation of all episodes in store order and may span episodes; `is_first` marks the seam.

        Args:
            batch_size: B.
            length: T, in steps.
            generator: the only randomness used: one `generator.integers(0, n, size=B)` call.
            cross_episodes: allow windows that span episode boundaries.
            latent_key: also return cached latents from `self.latents(latent_key)`; all sampled episodes must have
                them (see `LatentCache.missing`).

        Returns:
            Windows with (B, T, ...) arrays.
        """
        starts = self.sample_starts(batch_size, length, generator, cross_episodes)
        return self.windows_at(starts, length, latent_key=latent_key)

    def sample_starts(
        self, batch_size: int, length: int, generator: np.random.Generator, cross_episodes: bool = False
    ) -> np.ndarray:
        """Where `sample` would start its windows: (B,) offsets into the concatenation of all episodes."""
        if batch_size < 1 or length < 1:
            raise ValueError(f"batch_size and length must be >= 1, got {batch_size} and {length}")
        if len(self) == 0:
            raise ValueError(f"episode store {self.path} is empty; collect episodes before sampling")
        if cross_episodes:
            if self.num_steps < length:
                raise ValueError(f"the store holds {self.num_steps} steps, fewer than the window length {length}")
            return generator.integers(0, self.num_steps - length + 1, size=batch_size)
        steps, starts = self._index_arrays()
        eligible = np.flatnonzero(steps >= length)
        if len(eligible) == 0:
            raise ValueError(
                f"no episode has at least {length} steps (the longest has {int(steps.max())}); "
                "use a shorter window or cross_episodes=True"
            )
        counts = steps[eligible] - length + 1  # window starts per episode
        ends = np.cumsum(counts)
        draws = generator.integers(0, ends[-1], size=batch_size)
        which = np.searchsorted(ends, draws, side="right")
        return starts[eligible[which]] + draws - (ends[which] - counts[which])

    def windows_at(self, starts: np.ndarray, length: int, latent_key: str | None = None) -> Windows:
        """Windows of `length` steps at the given (B,) offsets into the concatenation of all episodes."""
        layout = self._layout
        batch = len(starts)
        obs = np.empty((batch, length, *layout.obs_shape), dtype=layout.obs_dtype)
        action = np.empty((batch, length, layout.action_dim), dtype=np.float32)
        reward = np.empty((batch, length), dtype=np.float32)
        terminal = np.empty((batch, length), dtype=bool)
        is_first = np.empty((batch, length), dtype=bool)
        is_last = np.empty((batch, length), dtype=bool)
        state = None if layout.state_dim is None else np.empty((batch, length, layout.state_dim), np.float32)
        latents = None if latent_key is None else self.latents(latent_key)
        latent = None
        steps, episode_starts = self._index_arrays()
        total = int(steps.sum())
        for b, start in enumerate(np.asarray(starts, dtype=np.int64)):
            if not 0 <= start <= total - length:
                raise ValueError(f"window start {start} does not fit {length} steps in a store of {total}")
            t = 0
            index = int(np.searchsorted(episode_starts, start, side="right")) - 1
            offset = int(start - episode_starts[index])
            while t < length:  # more than one pass only when a window spans episodes
                take = min(length - t, int(steps[index]) - offset)
                piece = slice(offset, offset + take)
                small = self._small(index)
                action[b, t : t + take] = small["action"][piece]
                reward[b, t : t + take] = small["reward"][piece]
                terminal[b, t : t + take] = small["is_terminal"][piece]
                is_first[b, t : t + take] = small["is_first"][piece]
                is_last[b, t : t + take] = small["is_last"][piece]
                if state is not None:
                    state[b, t : t + take] = small["state"][piece]
                for chunk in range(offset // OBS_CHUNK, (offset + take - 1) // OBS_CHUNK + 1):
                    values = self._obs_piece(index, chunk)  # steps [chunk * C, chunk * C + len(values))
                    low = max(offset, chunk * OBS_CHUNK)
                    high = min(offset + take, chunk * OBS_CHUNK + len(values))
                    obs[b, t + low - offset : t + high - offset] = values[
                        low - chunk * OBS_CHUNK : high - chunk * OBS_CHUNK
                    ]
                if latents is not None:
                    values = latents.get(index)
                    if latent is None:
                        latent = np.empty((batch, length, values.shape[1]), dtype=np.float32)
                    latent[b, t : t + take] = values[piece]
                t += take
                index += 1
                offset = 0
        cont = 1.0 - terminal.astype(np.float32)
        return Windows(obs, action, reward, cont, is_first, is_last, state, latent)

    # ------------------------------------------------------------------ latents

    def latents(self, key: str) -> LatentCache:
        """The cache of encoder outputs for one encoder, keyed by its fingerprint (letters, digits, `._-`)."""
        if key not in self._latent_caches:
            self._latent_caches[key] = LatentCache(self, key)
        return self._latent_caches[key]

    def episode_key(self, index: int) -> str:
        """A name for episode `index` that stays the same even if an earlier shard is later found damaged."""
        shard = self._shards[self._episode_shard[index]]
        return f"{shard.sequence:06d}-{int(self._episode_slot[index]):04d}"


def _read_only(array: np.ndarray) -> np.ndarray:
    """Cached arrays are shared with callers (Episode fields): make writes to them fail instead of corrupting."""
    array.flags.writeable = False
    return array


def _index_line(shard: _Shard) -> str:
    record = {"shard": shard.name, "sequence": shard.sequence, "sha256": shard.sha256, "steps": list(shard.steps)}
    return json.dumps(record) + "\n"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ============================================================================ latent cache


LATENT_DTYPE = np.float32
"""How the latent cache keeps encoder outputs. It was float16 once, which rounds by up to 0.05%. A frozen random ViT's
features vary from frame to frame by only a few percent of their size (over Pendulum's blurred frames, 0.3%), and
standardisation scales that variation up, rounding included: a Pendulum model trained on rounded features read the
unrounded ones of the real env as latents ten times too large. Part of the encoder fingerprint, so a cache written in
another dtype is never reused."""


class LatentCache:
    """Encoder outputs for every step of every episode, so a frozen encoder runs once per frame.

    One float32 (L+1, D) array per episode in `<store>/latents/<key>/<episode key>-<sha16>.npy`, written
    atomically. A file that fails its checksum is reported, deleted and counts as missing, so the encoder
    simply runs again for it.

    The latents are kept exactly as the encoder gave them (LATENT_DTYPE): an agent in the real env encodes its
    frames afresh, and a model must meet there the very numbers it was trained on.
    """

    def __init__(self, store: EpisodeStore, key: str, cache_mb: float = 64) -> None:
        if not isinstance(key, str) or not _LATENT_KEY.match(key):
            raise ValueError(
                f"latent key {key!r} must be 1-128 characters of letters, digits, '.', '_' or '-', "
                "starting with a letter or digit (e.g. an encoder fingerprint)"
            )
        self.store = store
        self.key = key
        self.path = store.path / "latents" / key
        self.path.mkdir(parents=True, exist_ok=True)
        self._cache = _LRU(int(cache_mb * 2**20))  # ("small", episode) and ("obs", episode, piece) -> arrays
        self._shard_cache = _LRU(int(cache_mb * 2**20 / 4))  # shard -> open NpzFile over its verified bytes
        self._files: dict[str, str] = {}  # episode key -> file name
        self.dim: int | None = None
        self.refresh()

    def refresh(self) -> None:
        """List the cache's files again: those other processes wrote since (a torchrun job encodes in parallel)."""
        self._files.clear()
        for entry in os.scandir(self.path):
            match = re.match(r"^(\d{6}-\d{4})-([0-9a-f]{16})\.npy$", entry.name)
            temp = _TEMP_NAME.match(entry.name)
            if match:
                self._files[match.group(1)] = entry.name
            elif temp and not _process_alive(int(temp.group(2))):
                Path(entry.path).unlink(missing_ok=True)  # a put() that crashed: the latents are still missing
        meta = self.path / "meta.json"
        self.dim = json.loads(meta.read_text())["dim"] if meta.exists() else None

    def __contains__(self, index: int) -> bool:
        return self.store.episode_key(index) in self._files

    def missing(self) -> list[int]:
        """Indices of episodes without latents."""
        return [i for i in range(len(self.store)) if self.store.episode_key(i) not in self._files]

    def put(self, index: int, latents: np.ndarray) -> None:
        """Store latents (L+1, D) for episode `index` (as LATENT_DTYPE), replacing any old ones."""
        latents = np.array(latents, dtype=LATENT_DTYPE)  # our own copy: the in-memory cache hands it out read-only
        steps = int(self.store._episode_steps[index]) if 0 <= index < len(self.store) else None
        if steps is None:
            raise IndexError(f"episode index {index} is out of range for a store of {len(self.store)} episodes")
        if latents.ndim != 2 or latents.shape[0] != steps:
            raise ValueError(f"latents for episode {index} must be ({steps}, D), got shape {latents.shape}")
        if not np.all(np.isfinite(latents)):
            raise ValueError(f"latents for episode {index} contain non-finite values")
        if self.dim is None:
            self.dim = int(latents.shape[1])
            atomic_write_bytes(self.path / "meta.json", json.dumps({"dim": self.dim}).encode())
        elif latents.shape[1] != self.dim:
            raise ValueError(f"latent cache {self.key!r} holds D={self.dim}, got latents with D={latents.shape[1]}")
        buffer = io.BytesIO()
        np.save(buffer, latents)
        data = buffer.getvalue()
        episode_key = self.store.episode_key(index)
        name = f"{episode_key}-{sha256_bytes(data)[:16]}.npy"
        atomic_write_bytes(self.path / name, data)
        old = self._files.get(episode_key)
        if old is not None and old != name:
            (self.path / old).unlink(missing_ok=True)
        self._files[episode_key] = name
        self._cache.put(episode_key, _read_only(latents), latents.nbytes)

    def get(self, index: int) -> np.ndarray:
        """Latents (L+1, D) of episode `index` (LATENT_DTYPE; float16 in caches written before it); KeyError when
        missing."""
        episode_key = self.store.episode_key(index)
        cached = self._cache.get(episode_key)
        if cached is not None:
            return cached
        name = self._files.get(episode_key)
        if name is None:
            raise KeyError(
                f"no latents for episode {index} under key {self.key!r}; "
                f"{len(self.missing())} episodes are missing them (see missing())"
            )
        data = (self.path / name).read_bytes()
        if not sha256_bytes(data).startswith(name[-20:-4]):
            self.store._report(f"latent file {self.path / name} fails its checksum; deleted, to be recomputed")
            (self.path / name).unlink(missing_ok=True)
            del self._files[episode_key]
            raise KeyError(f"latents for episode {index} under key {self.key!r} were damaged and are now missing")
        values = _read_only(np.load(io.BytesIO(data)))
        self._cache.put(episode_key, values, values.nbytes)
        return values
