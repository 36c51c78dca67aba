"""What each controller kind can reach when perception is perfect: CMA-ES on the env's true state, no world model.

    python benchmarks/controllers.py                          # Pendulum-v1, linear and mlp: docs/dream-and-evolution.md
    python benchmarks/controllers.py --env CartPole-v1 --generations 30
    python benchmarks/controllers.py --quick                  # 3 generations of 8 x 2: a check that it runs
    python benchmarks/controllers.py --env Parking-v0 --controller mlp --generations 150 \
        --hide 0,1,2,3 --scale 6,0.6,20,20,1,1 --success-weight 10   # the car's view alone; parking pays

A controller evolved in the dream acts on [z, h]; here the same `agents.controllers.Controller` acts on the true
state the env returns (`obs: state`), scored in the real env by the same `agents.evolution.CMAES`. What a kind cannot
reach here it cannot reach from pixels either: this is the ceiling of the controller class, not of the world model.
The final controller is the search's mean or its best-ever candidate, whichever scores higher on `--final-episodes`
fresh episodes (as `wm evolve` chooses in the dream), then scored on `--eval-episodes` other fresh episodes.
`--hide` keeps state dimensions from the controller (Parking-v0's 0-3 are the car's pose in the lot: hidden, it sees
what the car itself could, its speed and steering and where the space is from it), `--scale` divides each dimension
the controller sees by a number (inputs of order one keep the MLP's tanh units out of saturation), and
`--success-weight W` scores a candidate by its mean return plus W times its share of successful episodes, for an env
that says (Parking-v0). The progress bar shows each generation's mean and best fitness and, for such an env, its
share of successful episodes.

Prints JSON lines {"bench": "controllers", "metric", "value", "unit", "env", "controller"}: `num_params`,
`return_mean` and `return_std` (the chosen controller over the evaluation episodes), `success_rate` for an env that
reports `info["success"]` (Parking-v0), and `search_s`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
# Run as a file, this script's folder is sys.path[0]: put the repository there instead.
if sys.path and Path(sys.path[0]).resolve() == _REPO / "benchmarks":
    sys.path[0] = str(_REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agents.controllers import CONTROLLER_KINDS, Controller  # noqa: E402
from agents.evolution import CMAES  # noqa: E402
from envs.make import make_vector_env  # noqa: E402
from experiments.load import action_space  # noqa: E402
from experiments.progress import Progress  # noqa: E402
from experiments.scoring import successes_said  # noqa: E402

FINAL, EVAL = 1, 2  # seed streams of the final choice and the evaluation, apart from the search's generations


def emit(metric: str, value: float, unit: str, **extra) -> None:
    print(json.dumps({"bench": "controllers", "metric": metric, "value": value, "unit": unit, **extra}), flush=True)


def episode_returns(
    envs,
    controller: Controller,
    candidates: np.ndarray,
    episodes: int,
    seed: int,
    successes: np.ndarray | None = None,
    view: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """The return of one episode per (candidate, episode) pair: candidates (P, n) -> (P, E), the P * E sub-envs
    of `envs` candidate-major, sub-env i reset with seed `seed + i`. `successes` (P * E,) float, if given, receives
    each episode's `info["success"]` (1 or 0) at its last step, and keeps its NaN where the env does not say.
    `view` maps the envs' observations (P * E, S) to what the controller sees (P * E, F); by default all of them."""
    population = len(candidates)
    params = torch.as_tensor(candidates, dtype=torch.float32)  # (P, n)
    obs, _ = envs.reset(seed=seed)
    returns = np.zeros(population * episodes)
    going = np.ones(population * episodes, dtype=bool)
    while going.any():
        seen = obs if view is None else view(obs)
        features = torch.as_tensor(seen, dtype=torch.float32).reshape(population, episodes, -1)  # (P, E, F)
        actions = controller.env_actions(controller.act(params, features)).reshape(population * episodes, -1)
        obs, reward, terminated, truncated, info = envs.step(actions.squeeze(-1) if controller.discrete else actions)
        returns += np.where(going, reward, 0.0)
        ending = going & (terminated | truncated)
        said = successes_said(info)
        if successes is not None and said is not None:
            successes[ending] = said[ending]
        going &= ~ending  # a sub-env's later episodes (autoreset) are not counted
    return returns.reshape(population, episodes)


def state_view(size: int, hide: list[int], scale: list[float] | None) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """What the controller sees of a batch of true states (N, size): the dimensions not in `hide`, each divided by
    its entry of `scale` (one per dimension seen; None: as they are). Returns the view and its width F."""
    if any(not 0 <= i < size for i in hide):
        raise SystemExit(f"--hide: state dimensions are 0..{size - 1}, got {hide}")
    kept = [i for i in range(size) if i not in hide]
    if not kept:
        raise SystemExit("--hide: the controller must see at least one state dimension")
    divisor = np.ones(len(kept), dtype=np.float32) if scale is None else np.asarray(scale, dtype=np.float32)
    if divisor.shape != (len(kept),) or not (np.isfinite(divisor).all() and (divisor > 0).all()):
        raise SystemExit(f"--scale: one positive number per state dimension seen ({len(kept)}), got {scale}")
    return (lambda obs: obs[:, kept] / divisor), len(kept)


def scored(returns: np.ndarray, successes: np.ndarray, success_weight: float) -> np.ndarray:
    """Each candidate's fitness: returns and successes (P, E) (successes 1, 0, or NaN where the env does not say, which
    counts as 0) -> (P,) mean return plus `success_weight` times the share of successful episodes."""
    return returns.mean(axis=1) + success_weight * np.nan_to_num(successes).mean(axis=1)


def success_share(successes: np.ndarray) -> float | None:
    """The share of successful episodes (NaN where the env does not say counts as none); None when no episode
    says, an env that reports no success."""
    return None if np.isnan(successes).all() else float(np.nan_to_num(successes).mean())


def evolve_on_state(env_id: str, kind: str, args: argparse.Namespace) -> None:
    """Search, choose and score one controller kind on `env_id`'s true state; emit its figures."""
    search_envs, spec = make_vector_env(env_id, args.population * args.episodes, obs="state")
    view, width = state_view(spec.obs_shape[0], args.hide, args.scale)
    controller = Controller(width, action_space(spec), kind, args.hidden)

    said: dict[str, float] = {}  # the last generation's share of successful episodes, where the env says

    def fitness(envs, candidates: np.ndarray, episodes: int, seed: int) -> np.ndarray:
        """(P,) the candidates' `scored` returns over `episodes` each."""
        successes = np.full(len(candidates) * episodes, np.nan)
        returns = episode_returns(envs, controller, candidates, episodes, seed, successes, view)
        if (share := success_share(successes)) is not None:
            said["success"] = share
        return scored(returns, successes.reshape(returns.shape), args.success_weight)

    es = CMAES(controller.initial_parameters(args.seed), args.sigma, args.population, args.seed)
    start = time.perf_counter()
    bar = Progress(args.generations, f"search {env_id} {kind}", unit="gen")
    for generation in range(args.generations):
        result = es.step(lambda c, g=generation: fitness(search_envs, c, args.episodes, args.seed + 100_000 * g))
        bar.update(1, mean=result.mean_fitness, best=result.best_fitness, **said)
    bar.close()
    search_s = time.perf_counter() - start
    search_envs.close()
    finalists = np.stack([es.mean, es.best])  # (2, n)
    final_envs, _ = make_vector_env(env_id, 2 * args.final_episodes, obs="state")
    final = fitness(final_envs, finalists, args.final_episodes, args.seed + 100_000 * FINAL)
    final_envs.close()
    chosen = finalists[int(np.argmax(final))]
    eval_envs, _ = make_vector_env(env_id, args.eval_episodes, obs="state")
    successes = np.full(args.eval_episodes, np.nan)
    seed = args.seed + 100_000 * EVAL
    returns = episode_returns(eval_envs, controller, chosen[None], args.eval_episodes, seed, successes, view)[0]
    eval_envs.close()
    tags = {"env": env_id, "controller": kind}
    emit("num_params", controller.num_params, "parameters", **tags)
    emit("return_mean", float(returns.mean()), "return", episodes=args.eval_episodes, **tags)
    emit("return_std", float(returns.std()), "return", episodes=args.eval_episodes, **tags)
    if (share := success_share(successes)) is not None:  # the env reports success (Parking-v0)
        emit("success_rate", share, "fraction", episodes=args.eval_episodes, **tags)
    emit("search_s", search_s, "s", generations=args.generations, **tags)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", action="append", help="gymnasium id (repeatable; default Pendulum-v1)")
    parser.add_argument("--controller", action="append", choices=CONTROLLER_KINDS, help="default: every kind")
    parser.add_argument("--generations", type=int, default=200)
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--episodes", type=int, default=8, help="episodes per candidate per generation")
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--hidden", type=int, default=32, help="the mlp's width (as evolve.controller_hidden)")
    parser.add_argument("--final-episodes", type=int, default=64)
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hide",
        type=lambda text: [int(i) for i in text.split(",")],
        default=[],
        help="comma-separated state dimensions the controller does not see",
    )
    parser.add_argument(
        "--scale",
        type=lambda text: [float(v) for v in text.split(",")],
        help="comma-separated divisors, one per state dimension the controller sees",
    )
    parser.add_argument(
        "--success-weight", type=float, default=0.0, help="fitness = mean return + this x share of successful episodes"
    )
    parser.add_argument("--quick", action="store_true", help="3 generations of 8 candidates x 2 episodes")
    args = parser.parse_args(argv)
    if args.quick:
        args.generations, args.population, args.episodes, args.final_episodes, args.eval_episodes = 3, 8, 2, 4, 4
    minimums = {"generations": 1, "population": 2, "episodes": 1, "hidden": 1, "final_episodes": 1, "eval_episodes": 1}
    for name, minimum in minimums.items():
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be >= {minimum}, got {getattr(args, name)}")
    torch.set_num_threads(1)
    for env_id in args.env or ["Pendulum-v1"]:
        for kind in args.controller or list(CONTROLLER_KINDS):
            evolve_on_state(env_id, kind, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
