"""Scoring a run's controller in the real env again (what `wm eval` runs): `evaluate` plays the episodes
`score_in_env` plays for a run, seeded by default as the run's own evaluation (`evaluation_seed`)."""

from __future__ import annotations

from datetime import datetime, timezone

from envs import make_vector_env
from experiments.cycle import iteration_seed
from experiments.evolution import score_in_env
from experiments.load import Player


def evaluation_seed(player: Player, seed: int | None) -> int:
    """The seed the episodes derive from: by default the one the run evaluated its controller under (a cycle's
    later iterations each have their own)."""
    if seed is not None:
        return seed
    if player.iteration is not None:
        return iteration_seed(player.cfg.run.seed, player.iteration)
    return player.cfg.run.seed


def evaluate(player: Player, episodes: int, envs_count: int, seed: int, show_progress: bool) -> dict:
    """The controller's return over `episodes` real episodes (no exploration), per episode and summed up: the
    episodes `score_in_env` plays for a run with run.seed = `seed`."""
    cfg = player.cfg
    envs, _ = make_vector_env(
        cfg.env.id, envs_count, obs=cfg.env.obs, size=cfg.env.size, action_repeat=cfg.env.action_repeat, seed=seed
    )
    try:
        figures = score_in_env(envs, player.agent(envs_count), player.parameters, episodes, seed, show_progress)
    finally:
        envs.close()
    return {
        "run": str(player.path),
        "controller": player.source,
        "env": cfg.env.id,
        "seed": seed,
        **figures,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
