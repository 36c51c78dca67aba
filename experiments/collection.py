"""Random-policy collection into an episode store (`collect_episodes`, `collect_into`), split across processes under
torchrun (`collect_shared`), and opening and checking the stores a run trains on.

A collection is stored shard by shard as it fills, so that a run stopped while collecting resumes the collection.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from envs import CollectStats, EnvSpec, EpisodeStore, Policy, RandomPolicy, collect, make_vector_env
from envs.collect import EpisodeBuffer
from experiments import distributed
from experiments.config import Config, EnvConfig
from experiments.progress import Progress
from experiments.rundir import GracefulStop, Interrupted, RunError, recorded_path
from experiments.runtime import step_seed

STREAM_COLLECT = 5  # the seed of a collection continued after a stop; world-model training's streams, see training.py
SHARD_FRACTION, MIN_SHARD_STEPS, MAX_SHARD_STEPS = 8, 256, 4096  # shards of a collection: see `collect_share`


PolicyFactory = Callable[[int, int], Policy]
"""(sub-envs, seed) -> a policy acting in that many sub-envs, its own randomness seeded by seed."""


def collect_episodes(cfg: Config, store: EpisodeStore, stop: GracefulStop) -> CollectStats:
    """Random-policy rollouts until `store` holds `world_model.collect_steps` transitions (seeded by run.seed), each
    action held for `world_model.collect_hold` steps; stored shard by shard as they fill, so a stop keeps them.

    A store that holds some already (a run stopped while collecting) is continued, and the figures returned count
    its episodes too. The continuation is seeded by (run.seed, episodes stored), so it does not draw the episodes an
    uninterrupted run would have: those depend on each sub-env's state at the stop (its open episode is lost, its RNG
    has moved on), which no shard records. Making it exact would mean saving every env's state with every shard; the
    data stays random-policy rollouts from the same envs either way, which is all training assumes.
    """
    wcfg = cfg.world_model
    kept = stored_collection(store)
    if kept.steps >= wcfg.collect_steps:
        return kept
    seed = cfg.run.seed
    if len(store):
        seed = step_seed(cfg.run.seed, len(store), STREAM_COLLECT) % 2**31
        print(
            f"continuing the collection: {store.path} holds {kept.steps} of its {wcfg.collect_steps} steps",
            file=sys.stderr,
        )

    def policy(num_envs: int, seed: int) -> RandomPolicy:
        return RandomPolicy(store.spec, seed=seed, hold=wcfg.collect_hold)

    new = collect_into(
        store,
        cfg.env,
        policy,
        wcfg.collect_steps - kept.steps,
        wcfg.num_envs,
        seed,
        stop,
        cfg.run.progress,
        stopped=f"stopped while collecting; the episodes stored so far stay in {store.path}",
    )
    return CollectStats.combine([kept, new])


def stored_collection(store: EpisodeStore) -> CollectStats:
    """The figures of the episodes a store holds, as `collect` counts them (each as an episode that ended).

    Reads every episode once: done only when a stopped collection is continued."""
    episodes = [(episode.length, episode.total_return, episode.terminated) for episode in store]
    return CollectStats(
        steps=sum(length for length, _, _ in episodes),
        episodes=len(episodes),
        returns=tuple(total for _, total, _ in episodes),
        lengths=tuple(length for length, _, _ in episodes),
        terminated=sum(terminated for _, _, terminated in episodes),
    )


def collect_into(
    store: EpisodeStore,
    cfg: EnvConfig,
    policy: PolicyFactory,
    steps: int,
    num_envs: int,
    seed: int,
    stop: GracefulStop,
    show_progress: bool = True,
    stopped: str = "stopped while collecting",
    all_at_once: bool = False,
    start: dict | None = None,
) -> CollectStats:
    """Run a policy for `steps` transitions in `num_envs` envs (sub-env i seeded `seed + i`), into `store`.

    `policy(num_envs, seed)` builds the policy (seeded by `seed`). On SIGINT/SIGTERM prints `stopped` and raises
    Interrupted. With `all_at_once` every episode is buffered and written by one `store.add_episodes` call at the end
    (one shard, one index line: all or nothing after a crash). `start`: keyword arguments of the sub-envs'
    `set_start` (a Parking env's start distribution, `envs.curriculum`), applied before the first reset. Under
    torchrun see `collect_shared`.
    """
    if distributed.active():
        return collect_shared(
            store, cfg, policy, steps, num_envs, seed, stop, show_progress, stopped, all_at_once, start
        )
    return collect_share(
        store,
        cfg,
        policy(num_envs, seed),
        steps,
        range(num_envs),
        seed,
        stop,
        show_progress,
        stopped,
        all_at_once,
        start,
    )


def collect_share(
    target: EpisodeStore | EpisodeBuffer,
    cfg: EnvConfig,
    policy: Policy,
    steps: int,
    envs: range,
    seed: int,
    stop: GracefulStop,
    show_progress: bool,
    stopped: str,
    all_at_once: bool,
    start: dict | None = None,
) -> CollectStats:
    """`steps` transitions of sub-envs `envs` of a collection (sub-env i seeded `seed + i`) into `target`."""
    vector, _ = make_vector_env(
        cfg.id, len(envs), obs=cfg.obs, size=cfg.size, action_repeat=cfg.action_repeat, seed=seed + envs.start
    )
    if start is not None:
        vector.call("set_start", **start)
    bar = Progress(steps, f"collect {cfg.id}", unit="step", enabled=show_progress)

    def on_step(new: int) -> None:
        bar.update(new)
        if stop.signalled:
            print(stopped, file=sys.stderr)
            raise Interrupted

    # `collect` stops within one vector step of `steps`, so a buffer of more than steps + num_envs steps (each episode
    # holds one more step than transitions, at most all of them) is only written at the end. Otherwise a shard holds
    # about an eighth of the collection, within bounds: a kill loses at most one shard's worth, and a store of small
    # collections does not split into many tiny files.
    shard_steps = min(max(steps // SHARD_FRACTION, MIN_SHARD_STEPS), MAX_SHARD_STEPS)
    if all_at_once:
        shard_steps = 2 * (steps + len(envs))
    try:
        return collect(vector, policy, steps, target, on_step=on_step, shard_steps=shard_steps)
    finally:
        bar.close()
        vector.close()


def collect_shared(
    store: EpisodeStore,
    cfg: EnvConfig,
    policy: PolicyFactory,
    steps: int,
    num_envs: int,
    seed: int,
    stop: GracefulStop,
    show_progress: bool,
    stopped: str,
    all_at_once: bool,
    start: dict | None = None,
) -> CollectStats:
    """`collect_into` under torchrun: the sub-envs are split across the processes (each keeps the seeds its sub-envs
    have alone), the steps in proportion, and each process's policy draws from its own seed (`rank_seed`).

    Rank 0 alone writes: it gathers every process's episodes and adds them in rank order (one shard per process and
    buffer, or one in all with `all_at_once`); then the others re-read the store. Each process overshoots its steps
    by less than its sub-envs, so the whole collection, as one process's, holds fewer than steps + num_envs.
    """
    envs = range(num_envs)[distributed.share(num_envs)]
    sharing = min(num_envs, distributed.world_size())  # processes with at least one sub-env
    own_steps = len(range(steps)[distributed.share(steps, sharing)]) if envs else 0
    buffer, stats = EpisodeBuffer(), CollectStats(steps=0, episodes=0)
    if own_steps:
        try:
            stats = collect_share(
                buffer,
                cfg,
                policy(len(envs), distributed.rank_seed(seed)),
                own_steps,
                envs,
                seed,
                stop,
                show_progress and distributed.is_main(),
                stopped,
                all_at_once,
                start,
            )
        except Interrupted:
            pass  # this process was signalled: the others hear of it just below
    if stop.check():
        raise Interrupted
    shards = distributed.gather_object(buffer.shards)
    if shards is not None:  # rank 0
        batches = [episodes for process in shards for episodes in process]
        if all_at_once:
            batches = [[episode for episodes in batches for episode in episodes]]
        for episodes in batches:
            store.add_episodes(episodes)
    distributed.barrier()
    if not distributed.is_main():
        store.refresh()
    return CollectStats.combine(distributed.all_gather_object(stats))


def recorded_store(recorded: str, run: Path) -> Path:
    """Where the episode store that a run recorded lies now (see `recorded_path`); a RunError naming it when it is
    missing, never a new empty store made in its place."""
    path = recorded_path(recorded, run)
    if not (path / "store.json").is_file():
        raise RunError(f"the episode store {path} is missing (the run {run} recorded it as {recorded!r})")
    return path


def open_store(path: Path, spec: EnvSpec) -> EpisodeStore:
    """Open (or create) an episode store; under torchrun rank 0 first, since opening may repair what a crash left
    (and one writer at a time), then the others."""
    store = EpisodeStore(path, spec) if distributed.is_main() else None
    distributed.barrier()
    return store if store is not None else EpisodeStore(path, spec)


def check_episode_store(path: Path, spec: EnvSpec) -> Path:
    """A store given with --episodes, checked to exist, hold episodes and come from this run's env."""
    if not (path / "store.json").is_file():
        raise RunError(f"--episodes {path}: not an episode store (no store.json there)")
    store = EpisodeStore(path, verify=False)  # only the metadata is read here; training verifies every shard
    if store.spec is not None and store.spec != spec:
        raise RunError(
            f"--episodes {path} was recorded from another env than this run's env config: "
            + "; ".join(store.spec.differences(spec))
            + " (the store's value first)"
        )
    if len(store) < 2:
        raise RunError(f"--episodes {path} holds {len(store)} episodes; at least 2 are needed (train and held out)")
    return path.resolve()


def collection_figures(stats: CollectStats, action_repeat: int = 1) -> dict[str, float | int]:
    """What the random-policy collection did, for summary.json (plain numbers, as a checkpoint can hold): `steps`
    are its transitions (agent steps), `env_steps` those times the env's action_repeat."""
    return {
        "steps": stats.steps,
        "env_steps": stats.steps * action_repeat,
        "episodes": stats.episodes,
        "mean_return": stats.mean_return,
        "mean_length": float(np.mean(stats.lengths)) if stats.lengths else math.nan,
        "terminated": stats.terminated,
        "cut": stats.cut,
    }
