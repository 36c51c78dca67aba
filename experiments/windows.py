"""The windows a world model trains on: an episode store split by episode into training and held-out episodes
(`split_episodes`), and the source of training and evaluation windows (`StoreWindows`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from envs import Episode, EpisodeStore, Windows
from experiments.rundir import RunFailure


@dataclass(frozen=True)
class EpisodeSplit:
    """Episodes [0, first_held_out) of a store train; [first_held_out, num_episodes) are held out.

    In the store's concatenation of episodes (its window offsets), training windows lie in [0, train_steps)
    and held-out windows in [train_steps, total_steps), so even windows that span episodes never mix the two.
    """

    num_episodes: int
    first_held_out: int
    train_steps: int
    total_steps: int


def split_episodes(episode_steps: np.ndarray, eval_fraction: float) -> EpisodeSplit:
    """Hold out the last round(E * eval_fraction) of E episodes (at least one each side).

    Under a random policy the episodes are alike, so the last ones are as good a test set as any.

    Args:
        episode_steps: (E,) steps of each episode, in store order.
    """
    count = len(episode_steps)
    if count < 2:
        raise RunFailure(f"the episode store holds {count} episodes; at least 2 are needed (train and held out)")
    held_out = min(max(round(count * eval_fraction), 1), count - 1)
    first = count - held_out
    return EpisodeSplit(count, first, int(episode_steps[:first].sum()), int(episode_steps.sum()))


class WindowSource(Protocol):
    """Where the trainer's data comes from."""

    def train_windows(
        self, batch_size: int, length: int, rng: np.random.Generator, rows: slice = slice(None)
    ) -> Windows: ...

    def held_out_windows(self, count: int, length: int) -> Windows: ...

    def held_out_episode(self) -> Episode: ...


class StoreWindows:
    """Windows of an episode store split by episode (see `EpisodeSplit`), with cached latents when keyed."""

    def __init__(self, store: EpisodeStore, split: EpisodeSplit, latent_key: str | None = None):
        self.store, self.split, self.latent_key = store, split, latent_key

    def train_windows(
        self, batch_size: int, length: int, rng: np.random.Generator, rows: slice = slice(None)
    ) -> Windows:
        """`batch_size` windows of `length` steps (see `train_starts`), of which only rows `rows` are loaded: a
        process's share of a batch split across processes."""
        starts = self.train_starts(batch_size, length, rng)  # (B,)
        return self.store.windows_at(starts[rows], length, latent_key=self.latent_key)

    def train_starts(self, batch_size: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """Starts (B,) of `batch_size` windows of `length` steps from the training episodes, uniformly; they may
        span episodes."""
        if self.split.train_steps < length:
            raise RunFailure(
                f"the training episodes hold {self.split.train_steps} steps, fewer than one window of {length}; "
                "collect more steps or shorten world_model.sequence_length"
            )
        return rng.integers(0, self.split.train_steps - length + 1, size=batch_size)  # one draw: (B,)

    def held_out_windows(self, count: int, length: int) -> Windows:
        """Up to `count` non-overlapping windows tiling the held-out episodes from their start (fixed, no RNG)."""
        available = (self.split.total_steps - self.split.train_steps) // length
        if available < 2:
            raise RunFailure(
                f"the held-out episodes hold {self.split.total_steps - self.split.train_steps} steps, fewer than "
                f"two evaluation windows of {length}; collect more steps or raise world_model.eval_fraction"
            )
        starts = self.split.train_steps + length * np.arange(min(count, available))
        return self.store.windows_at(starts, length, latent_key=self.latent_key)

    def held_out_episode(self) -> Episode:
        """The longest held-out episode (the earliest of equals): the clip of the dream-vs-real video."""
        steps = self.store.episode_steps[self.split.first_held_out : self.split.num_episodes]
        return self.store.episode(self.split.first_held_out + int(np.argmax(steps)))
