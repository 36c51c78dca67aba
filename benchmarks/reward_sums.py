"""Do a world model's dream returns add up? Its predicted reward sums along real held-out episodes beside the real ones.

    python benchmarks/reward_sums.py --world-model RUN
    python benchmarks/reward_sums.py --world-model RUN --episodes 50 --burn-in 5
    python benchmarks/reward_sums.py --world-model RUN --quick      # a few episodes: a check that it runs
    python benchmarks/reward_sums.py --world-model RUN --store DIR  # every episode of another store of the same env

A controller is chosen by the sum of the dream's predicted rewards over hundreds of steps, so per-step reward errors
that look small in the training metrics (`reward_error`, one step, teacher-forced) can add up to more than what
tells a good episode from a bad one (Parking's success bonus is 5). This measures the sums on one `wm train` (or
`wm cycle`) run's world model, along the episodes of its store that it did not train on (the held-out episodes of its
split; the store's last ones when no split is recorded), or along every episode of another store of the same env
(`--store`: e.g. a scripted policy's episodes that reach the success a random policy rarely does). For each episode
of L transitions (steps 0..L, rewards r_1..r_L, actions a_1..a_L; see `worldmodel.dynamics.world_model` for the time
convention):

    teacher-forced   every frame filtered (`WorldModel.filter_step`: the stochastic model's posterior mean, the
                     deterministic model's encoder latent), the reward head read at each state h_t, z_t; the sum over
                     steps 1..L against the real return.
    open-loop        steps 0..burn_in filtered (the dream's start windows of burn_in + 1 steps), then the rest of
                     the episode imagined under the real actions (`WorldModel.step` without noise: the stochastic
                     model's prior mean); the sum of the predicted rewards of steps burn_in+1..L against the real sum
                     of the same steps. Episodes of L <= burn_in have nothing to imagine and do not count here.
    open-loop, expected   the same rollout with each predicted reward weighted by the predicted chance the episode is
                     still going, the product of the earlier imagined steps' continue probabilities: what the dream's
                     'expected' mode scores (without its cut-off at a weight of 1e-3).

Prints JSON lines {"bench": "reward_sums", "metric", "value", "unit", ...the setting}:
    teacher_forced_error_median, teacher_forced_error_mean      |predicted sum - real sum| over the episodes
    open_loop_error_median, open_loop_error_mean                (each with `bias`: the mean signed error)
    open_loop_expected_error_median, open_loop_expected_error_mean
    open_loop_zero_error_median, open_loop_zero_error_mean   the same of a head predicting 0 at every step (|real sum|):
                                a head must beat it to tell episodes apart at all
    real_return_median          the median real return of the episodes
    episodes, mean_length       how many episodes, and their mean number of transitions L
    open_loop_error_of_bonus    open_loop_error_median / the env's success bonus (only where the env module names one,
                                as a SUCCESS_BONUS constant)
    bonus_episodes, penalty_episodes   (with a bonus only) how many episodes hold a step paid at least half the bonus
                                (Parking: parked), or charged at least half of it (Parking: left the lot)
    bonus_teacher_forced_error_median, bonus_open_loop_error_median, and the same for penalty_: the median errors
                                over those episodes alone (null where there are none)

The episodes are padded to the longest and run as one batch: one loop over time steps, every episode in each step.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

_REPO = Path(__file__).resolve().parents[1]
# Run as a file, this script's folder is sys.path[0]: put the repository there instead.
if sys.path and Path(sys.path[0]).resolve() == _REPO / "benchmarks":
    sys.path[0] = str(_REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from envs import Episode, EpisodeStore  # noqa: E402
from experiments.checkpoint import read_checkpoint  # noqa: E402
from experiments.collection import check_episode_store  # noqa: E402
from experiments.load import load_world_model, run_checkpoint  # noqa: E402
from experiments.runtime import resolve_device  # noqa: E402
from experiments.windows import split_episodes  # noqa: E402
from worldmodel.dynamics.world_model import WorldModel  # noqa: E402

QUICK_EPISODES = 4  # --quick: at most this many held-out episodes
ENCODE_BATCH = 256  # frames encoded per call
SUCCESS_BONUSES = {name: ("envs.parking", "SUCCESS_BONUS") for name in ("Parking-v0", "ParkingLot-v0")}
"""Env id (without its namespace) -> the module and constant holding its success bonus, read only where it exists."""


def emit(metric: str, value: float, unit: str, **extra) -> None:
    """One JSON line; a value that is not finite (a median of no episodes) is written as null."""
    value = round(float(value), 4) if math.isfinite(value) else None
    print(json.dumps({"bench": "reward_sums", "metric": metric, "value": value, "unit": unit, **extra}), flush=True)


# ------------------------------------------------------------------------------------------------------
# Which episodes


def held_out_episodes(state: dict, store: EpisodeStore, eval_fraction: float) -> tuple[list[int], str]:
    """The store indices of the episodes a run did not train on, and where that came from.

    A `wm cycle` checkpoint records its split (iteration 0's, whose held-out episodes no iteration trains on); a
    `wm train` checkpoint records how many episodes it split, which `split_episodes` splits again exactly as it did.
    Without either: the store's last round(E * eval_fraction) episodes (at least one).
    """
    if state.get("command") == "cycle" and state.get("split") is not None:
        split = state["split"]
        return list(range(split["first_held_out"], split["num_episodes"])), "the run's recorded split"
    trainer = state["trainer"] if state.get("command") == "cycle" and state.get("trainer") else state
    num_episodes = trainer.get("data", {}).get("num_episodes")
    if num_episodes is not None:
        split = split_episodes(store.episode_steps[:num_episodes], eval_fraction)
        return list(range(split.first_held_out, split.num_episodes)), "the run's split"
    count = len(store)
    held_out = min(max(round(count * eval_fraction), 1), count)
    return list(range(count - held_out, count)), "the store's last episodes (no split recorded)"


def success_bonus(env_id: str) -> float | None:
    """The env's success bonus where its module names one (`SUCCESS_BONUSES`), else None."""
    where = SUCCESS_BONUSES.get(env_id.rsplit("/", 1)[-1])
    if where is None:
        return None
    value = getattr(importlib.import_module(where[0]), where[1], None)
    return None if value is None else float(value)


# ------------------------------------------------------------------------------------------------------
# The sums


class EpisodeBatch(NamedTuple):
    """B episodes padded to the longest (T = max L + 1 steps); steps past an episode's end are zeros."""

    embedding: torch.Tensor
    """(B, T, E) `WorldModel.encode` of every frame, what `filter_step` reads."""
    action: torch.Tensor
    """(B, T, A) the action that led to step t (zeros at step 0)."""
    reward: torch.Tensor
    """(B, T) float64 the reward received on arriving at step t (0 at step 0)."""
    length: torch.Tensor
    """(B,) int64 transitions L of each episode (its steps are 0..L)."""


@torch.no_grad()
def episode_batch(
    model: WorldModel,
    episodes: Sequence[Episode],
    features: Sequence[np.ndarray | None] | None = None,
    device: torch.device | str = "cpu",
) -> EpisodeBatch:
    """Encode and pad episodes into one batch.

    Args:
        episodes: B episodes.
        features: per episode, its frozen-encoder features (L+1, F) from the store's latent cache, or None to
            encode its observations; default None for every one.
    """
    features = [None] * len(episodes) if features is None else features
    steps = max(episode.num_steps for episode in episodes)  # T
    embeddings = []
    for episode, cached in zip(episodes, features, strict=True):
        parts = []
        for start in range(0, episode.num_steps, ENCODE_BATCH):
            rows = slice(start, start + ENCODE_BATCH)
            if cached is not None:
                parts.append(model.encode(features=torch.tensor(cached[rows], device=device)))
            else:
                parts.append(model.encode(torch.tensor(episode.obs[rows], device=device)))
        embedding = torch.cat(parts)  # (L+1, E)
        embeddings.append(torch.nn.functional.pad(embedding, (0, 0, 0, steps - len(embedding))))  # -> (T, E)

    def padded(field: str, dtype: torch.dtype) -> torch.Tensor:
        rows = [torch.tensor(getattr(episode, field), dtype=dtype) for episode in episodes]
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True).to(device)  # (B, T, ...)

    return EpisodeBatch(
        embedding=torch.stack(embeddings),
        action=padded("action", model.gru.weight_hh.dtype),
        reward=padded("reward", torch.float64),
        length=torch.tensor([episode.length for episode in episodes], dtype=torch.long, device=device),
    )


class RewardSums(NamedTuple):
    """Per episode (B,), float64: the real and predicted reward sums."""

    real: torch.Tensor
    """The real return, steps 1..L."""
    teacher_forced: torch.Tensor
    """The predicted rewards at the filtered states, steps 1..L."""
    real_imagined: torch.Tensor
    """The real rewards of the imagined steps burn_in+1..L."""
    open_loop: torch.Tensor
    """The predicted rewards of the imagined steps."""
    open_loop_expected: torch.Tensor
    """The same, each times the product of the earlier imagined steps' continue probabilities."""
    imagined: torch.Tensor
    """(B,) bool: the episode has steps to imagine (L > burn_in)."""


@torch.no_grad()
def reward_sums(model: WorldModel, batch: EpisodeBatch, burn_in: int) -> RewardSums:
    """Teacher-forced and open-loop reward sums of a batch of episodes (see the module docstring).

    The open loop starts from the filtered state of step `burn_in` and steps every episode to the longest one's end;
    the steps past an episode's end are masked out of its sums.
    """
    B, T = batch.reward.shape
    step = torch.arange(T, device=batch.length.device)
    real_step = (step[None] >= 1) & (step[None] <= batch.length[:, None])  # (B, T): steps 1..L
    imagined_step = real_step & (step[None] > burn_in)  # (B, T): steps burn_in+1..L
    h = model.initial_state(B)  # (B, hidden_dim); z and the action before step 0 are zeros (the store's convention)
    z = torch.zeros(B, model.latent_dim, device=h.device, dtype=h.dtype)
    hidden, latent = [], []
    for t in range(T):
        h, z = model.filter_step(h, z, batch.action[:, t], batch.embedding[:, t])
        hidden.append(h)
        latent.append(z)
    predicted = model.reward(torch.stack(hidden, dim=1), torch.stack(latent, dim=1)).double()  # (B, T)

    open_loop = torch.zeros(B, T, dtype=torch.float64, device=predicted.device)  # (B, T) predicted rewards
    weight = torch.ones(B, T, dtype=torch.float64, device=predicted.device)  # (B, T) P(still going before step t)
    if burn_in < T - 1:
        h, z = hidden[burn_in], latent[burn_in]
        going = torch.ones(B, dtype=torch.float64, device=predicted.device)
        for t in range(burn_in + 1, T):
            h, z = model.step(h, z, batch.action[:, t])
            open_loop[:, t] = model.reward(h, z).double()
            weight[:, t] = going
            going = going * torch.sigmoid(model.cont(h, z)).double()

    def total(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, values, torch.zeros_like(values)).sum(dim=1)  # (B, T) -> (B,)

    return RewardSums(
        real=total(batch.reward, real_step),
        teacher_forced=total(predicted, real_step),
        real_imagined=total(batch.reward, imagined_step),
        open_loop=total(open_loop, imagined_step),
        open_loop_expected=total(open_loop * weight, imagined_step),
        imagined=batch.length > burn_in,
    )


def error_figures(sums: RewardSums) -> dict[str, tuple[float, float, float]]:
    """{name: (median, mean absolute error, mean signed error)} of each predicted sum, and of a head that predicts 0
    at every step over the open loop's steps ("open_loop_zero": the floor a head must beat); NaN over no episodes."""
    pairs = {
        "teacher_forced": (sums.teacher_forced, sums.real, torch.ones_like(sums.imagined)),
        "open_loop": (sums.open_loop, sums.real_imagined, sums.imagined),
        "open_loop_expected": (sums.open_loop_expected, sums.real_imagined, sums.imagined),
        "open_loop_zero": (torch.zeros_like(sums.real_imagined), sums.real_imagined, sums.imagined),
    }
    figures = {}
    for name, (predicted, real, counted) in pairs.items():
        error = (predicted - real)[counted].cpu().numpy()  # (N,)
        if len(error) == 0:
            figures[name] = (math.nan, math.nan, math.nan)
        else:  # numpy's median: the mean of the two middle values of an even count (torch's takes the lower one)
            figures[name] = (float(np.median(np.abs(error))), float(np.abs(error).mean()), float(error.mean()))
    return figures


def bonus_episode_figures(
    sums: RewardSums, reward: torch.Tensor, bonus: float
) -> dict[str, tuple[int, dict[str, tuple[float, float, float]]]]:
    """The episodes a success bonus (or its penalty) was paid in, and `error_figures` over them alone: a random
    policy rarely parks, so the figures over all episodes say little about the steps a controller is chosen for.

    Args:
        sums: B episodes' sums; reward: (B, T) their real rewards; bonus: the env's success bonus.
    Returns:
        {"bonus": (count, figures), "penalty": (count, figures)}: episodes with a reward >= bonus / 2, <= -bonus / 2.
    """
    kinds = {"bonus": reward.max(dim=1).values >= bonus / 2, "penalty": reward.min(dim=1).values <= -bonus / 2}
    return {
        kind: (int(paid.sum()), error_figures(RewardSums(*(field[paid] for field in sums))))
        for kind, paid in kinds.items()
    }


# ------------------------------------------------------------------------------------------------------
# The command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-model", metavar="RUN", required=True, help="a trained `wm train` or `wm cycle` run")
    parser.add_argument("--episodes", type=int, help="held-out episodes to use, the first ones (default: all)")
    parser.add_argument("--burn-in", type=int, help="filtered steps before the open loop (default: dream.burn_in)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help=f"at most {QUICK_EPISODES} episodes: a check that it runs")
    parser.add_argument("--store", metavar="DIR", help="use every episode of this episode store of the run's env")
    args = parser.parse_args(argv)
    least = {"--episodes": (args.episodes, 1), "--burn-in": (args.burn_in, 0), "--threads": (args.threads, 1)}
    for flag, (value, minimum) in least.items():
        if value is not None and value < minimum:
            parser.error(f"{flag} must be >= {minimum}, got {value}")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    state = read_checkpoint(run_checkpoint(Path(args.world_model)))
    world = load_world_model(Path(args.world_model), device=device)
    cfg = world.config
    burn_in = cfg.dream.burn_in if args.burn_in is None else args.burn_in
    if args.store is None:
        store = world.store
        indices, source = held_out_episodes(state, store, cfg.world_model.eval_fraction)
        cache = store.latents(world.latent_key) if world.latent_key is not None else None
    else:  # its frames are encoded here: the store's own latent cache may hold another encoder's features
        store = EpisodeStore(check_episode_store(Path(args.store), world.spec), world.spec)
        indices, source, cache = list(range(len(store))), f"every episode of {args.store}", None
    count = args.episodes if args.episodes is not None else (QUICK_EPISODES if args.quick else len(indices))
    indices = indices[:count]
    episodes = [store.episode(i) for i in indices]
    features = [cache.get(i) if cache is not None and i in cache else None for i in indices]

    batch = episode_batch(world.model, episodes, features, device)
    sums = reward_sums(world.model, batch, burn_in)
    setting = {
        "model": str(args.world_model),
        "env": f"{cfg.env.id}/{cfg.env.obs}{cfg.env.size}",
        "latent": cfg.world_model.latent,
        "burn_in": burn_in,
        "episodes_from": source,
        "threads": torch.get_num_threads(),
    }
    figures = error_figures(sums)
    imagined = int(sums.imagined.sum())
    for name, (median, mean, bias) in figures.items():
        counted = {"episodes": len(indices) if name == "teacher_forced" else imagined}
        emit(f"{name}_error_median", median, "return", **counted, **setting)
        bias = round(bias, 4) if math.isfinite(bias) else None
        emit(f"{name}_error_mean", mean, "return", bias=bias, **counted, **setting)
    emit("real_return_median", float(np.median(sums.real.cpu().numpy())), "return", **setting)
    emit("episodes", len(indices), "episodes", imagined=imagined, **setting)
    emit("mean_length", batch.length.double().mean().item(), "steps", **setting)
    bonus = success_bonus(cfg.env.id)
    if bonus is not None:
        emit("open_loop_error_of_bonus", figures["open_loop"][0] / bonus, "share of the bonus", bonus=bonus, **setting)
        for kind, (count, paid) in bonus_episode_figures(sums, batch.reward, bonus).items():
            emit(f"{kind}_episodes", count, "episodes", bonus=bonus, **setting)
            for name in ("teacher_forced", "open_loop"):
                emit(f"{kind}_{name}_error_median", paid[name][0], "return", episodes=count, **setting)


if __name__ == "__main__":
    main()
