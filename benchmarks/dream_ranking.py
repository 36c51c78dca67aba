"""How well the dream ranks controllers: the same controllers scored in the dream and in the real env.

    python benchmarks/dream_ranking.py --world-model RUN
    python benchmarks/dream_ranking.py --world-model RUN --variant dream.latent_noise=0.1 \
        --variant dream.cont_mode=expected
    python benchmarks/dream_ranking.py --world-model RUN --controllers set.npz --add-controller runs/<wm evolve run>
    python benchmarks/dream_ranking.py --world-model RUN --quick      # tiny sizes: a check that it runs

A search in the dream picks its controller by the dream's return, so what it finds is only as good as the dream's
ranking of controllers is faithful to the real env's. This measures that ranking on one `wm train` (or `wm cycle`)
run's world model, under its own config (`--set` overrides it):

1. The controllers (K of them): the means of a CMA-ES search in the dream (`--dream-generations`, the config's
   evolve settings), taken at `--snapshots` evenly spaced generations, and its best-ever candidate; then the means of a
   search warm-started from the dream's final mean and scored in the real env (`--real-generations` of
   `--real-population` candidates x 2 episodes), which climbs where reality, not the dream, says up.
2. Each controller's real return: the mean over `--real-episodes` episodes, the same reset seeds for every one.
3. Each controller's dream return under the config's dream settings and under each `--variant` (dream.* overrides,
   comma-separated): the mean over `--dream-episodes` rollouts, every controller from the same starts with the same
   noise (common random numbers), and each variant on those same starts.

Prints JSON lines {"bench": "dream_ranking", "metric", "value", "unit", "variant", ...}, per dream setting:
    rank_correlation     Spearman's rank correlation of dream and real returns over the K controllers (1: the dream
                         orders them as reality does; null when either is the same for every controller)
    pair_agreement       of the pairs of controllers whose real returns differ by more than 2 standard errors, the
                         share the dream orders the same way (`pairs`: how many; null without any)
    pick_real_return     the real return of the controller the dream rates best
    pick_regret          the best real return among the K minus pick_real_return (0: the dream's pick is reality's)
and one "controller" line per controller (value: its real return; `dream` holds its dream return per setting).
Controllers are scored once in the real env and reused by every variant, so the variants are compared on the very
same controllers and real returns. Steps 1 and 2 take minutes (the real env); `--save-controllers NPZ` keeps their
outcome, and `--controllers NPZ` ranks it again under other variants in seconds (same world model only).
`--add-controller RUN` puts a `wm evolve` run's controller (evolved on the same world model) into the set: it plays
the set's real episodes, on the same reset seeds, so that a search's own result is ranked beside the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import math
import sys
from pathlib import Path
from typing import NamedTuple

_REPO = Path(__file__).resolve().parents[1]
# Run as a file, this script's folder is sys.path[0]: put the repository there instead.
if sys.path and Path(sys.path[0]).resolve() == _REPO / "benchmarks":
    sys.path[0] = str(_REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agents.agent import LatentAgent  # noqa: E402
from agents.evolution import CMAES  # noqa: E402
from envs.atomic import atomic_write_bytes  # noqa: E402
from experiments import config as config_lib  # noqa: E402
from experiments.checkpoint import CheckpointError, read_checkpoint  # noqa: E402
from experiments.evolution import DreamScorer, RealScorer, eval_envs, read_controller  # noqa: E402
from experiments.load import build_controller, dream_settings, load_world_model, run_checkpoint, start_pool  # noqa: E402
from experiments.progress import Progress  # noqa: E402
from experiments.runtime import resolve_device, seed_everything  # noqa: E402
from experiments.scoring import run_episodes  # noqa: E402

BASELINE = "the run's dream"
REAL_SEARCH_EPISODES = 2  # episodes per candidate in the real-env search (as the model-free baseline in docs/)
KEY_RANKING = 10_000  # the DreamScorer key of the ranking rollouts: no search generation uses it
REAL_SEED_OFFSET = 7  # the real episodes that score the set reset from --seed + this (the real search's are --seed)


def emit(metric: str, value: float, unit: str, **extra) -> None:
    """One JSON line; a value that is not finite (an undefined correlation) is written as null."""
    value = round(float(value), 4) if math.isfinite(value) else None
    record = {"bench": "dream_ranking", "metric": metric, "value": value, "unit": unit, **extra}
    print(json.dumps(record), flush=True)


def ranks(values: np.ndarray) -> np.ndarray:
    """(K,) ranks 1..K of `values`, ties given the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values), dtype=np.float64)
    ranked[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranked[tied] = ranked[tied].mean()
    return ranked


def pair_agreement(dream: np.ndarray, real: np.ndarray, real_se: np.ndarray, z: float = 2.0) -> tuple[float, int]:
    """Of the pairs of controllers whose real returns differ by more than `z` standard errors of the difference, the
    share that the dream orders the same way (a tie in the dream counts half), and how many such pairs there are;
    nan without any. Unlike the rank correlation, pairs that the real returns cannot tell apart do not count.

    Args:
        dream, real, real_se: (K,) dream returns, real mean returns and the standard errors of those means.
    """
    agree, pairs = 0.0, 0
    for i in range(len(real)):
        for j in range(i + 1, len(real)):
            if abs(real[i] - real[j]) <= z * math.hypot(real_se[i], real_se[j]):
                continue
            pairs += 1
            agree += (1 + np.sign(dream[i] - dream[j]) * np.sign(real[i] - real[j])) / 2  # 1 same order, 0.5 a tie
    return (agree / pairs if pairs else float("nan")), pairs


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of a (K,) and b (K,): the Pearson correlation of their ranks; nan when either
    is constant."""
    ra, rb = ranks(np.asarray(a, dtype=np.float64)), ranks(np.asarray(b, dtype=np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    scale = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / scale) if scale > 0 else float("nan")


def snapshot_generations(generations: int, snapshots: int) -> list[int]:
    """The generations after which a search's mean is kept: up to `snapshots` evenly spaced in 1..generations,
    ending at the last. Not the start: a linear controller's cold start is zeros, a controller that every dream
    rates as badly as reality does, which would only flatter the figures."""
    return sorted({max(1, round(i * generations / snapshots)) for i in range(1, snapshots + 1)})


def search(es: CMAES, score, generations: int, keep: list[int], label: str) -> list[np.ndarray]:
    """Run `generations` generations of `es`, scoring with `score(candidates, key=generation)`; the means after each
    generation in `keep`."""
    kept = []
    bar = Progress(generations, label, unit="generation")
    for generation in range(1, generations + 1):
        es.step(functools.partial(score, key=generation))
        bar.update(1)
        if generation in keep:
            kept.append(es.mean)
    bar.close()
    return kept


def pool_key(cfg: config_lib.DreamConfig) -> tuple:
    """The dream settings that decide the start pool (`experiments.load.encode_start_pool`)."""
    return cfg.burn_in, cfg.start_windows, cfg.reset_starts


def variant_config(cfg: config_lib.Config, variant: str) -> config_lib.Config:
    """The run's config with a variant's overrides, which may change dream.* keys only."""
    overrides = [part for part in variant.split(",") if part]
    for text in overrides:
        if not text.split("=", 1)[0].strip().startswith("dream."):
            raise SystemExit(f"--variant {variant!r}: {text!r} is not a dream.* key (a variant changes the dream only)")
    try:
        return config_lib.load_config([], overrides, base=config_lib.to_dict(cfg))
    except config_lib.ConfigError as error:
        raise SystemExit(f"--variant {variant!r}: {error}") from None


class ControllerSet(NamedTuple):
    """The controllers a ranking is measured on, with their real returns (what `--save-controllers` keeps)."""

    sources: list[str]
    """(K,) where each controller came from."""
    parameters: np.ndarray
    """(K, n) the controllers."""
    real_returns: np.ndarray
    """(K, real_episodes) each controller's real return per episode, every controller on the same reset seeds."""
    search_real_env_steps: int
    """Real env steps the real-env search took."""
    model_sha256: str
    """The world model's checkpoint: a controller means something only over the features it was evolved on."""
    real_seed: int | None
    """The seed of the real episodes' resets (every controller plays the same ones); None in a set saved before it
    was recorded, which takes no added controllers."""


def real_env(cfg: config_lib.Config, world, controller, seed: int):
    """The vector env and agent that play controllers in the real env (the caller closes the env)."""
    agent = LatentAgent(world.model, controller, np.zeros(controller.num_params), cfg.evolve.eval_envs)
    return eval_envs(cfg, seed), agent


def real_returns(envs, agent, parameters: np.ndarray, episodes: int, seed: int) -> np.ndarray:
    """(K, episodes) the real return of each of the (K, n) controllers, every one on the same reset seeds."""
    returns = np.zeros((len(parameters), episodes))
    bar = Progress(len(parameters) * episodes, "real returns", unit="episode")
    for k, controller_parameters in enumerate(parameters):
        jobs = np.repeat(controller_parameters[None], episodes, axis=0)  # (episodes, n)
        returns[k] = run_episodes(envs, agent, jobs, seed=seed, on_step=bar.update).returns
    bar.close()
    return returns


def build_controller_set(args, cfg: config_lib.Config, world, controller, pool) -> ControllerSet:
    """Steps 1 and 2: a dream search's means and best candidate, a real search's means from there, and the real
    return of each."""
    ecfg = cfg.evolve
    envs, agent = real_env(cfg, world, controller, args.seed)
    try:
        generations = ecfg.generations if args.dream_generations is None else args.dream_generations
        dream = DreamScorer(world.model, controller, pool, dream_settings(cfg.dream), args.seed)
        x0 = controller.initial_parameters(args.seed)  # the cold start `wm evolve` searches from
        es = CMAES(x0, ecfg.sigma, ecfg.population, args.seed, diagonal=ecfg.diagonal)
        keep = snapshot_generations(generations, args.snapshots)
        dream_means = search(es, functools.partial(dream, episodes=ecfg.episodes), generations, keep, "dream search")
        real_es = CMAES(es.mean, ecfg.sigma, args.real_population, args.seed + 1, diagonal=ecfg.diagonal)
        real = RealScorer(envs, agent, args.seed, None)
        real_keep = snapshot_generations(args.real_generations, args.snapshots)
        real_means = search(
            real_es,
            functools.partial(real, episodes=REAL_SEARCH_EPISODES),
            args.real_generations,
            real_keep,
            "real search",
        )
        sources = (
            [f"dream search, generation {g}" for g in keep]
            + ["dream search, best candidate"]
            + [f"real search, generation {g}" for g in real_keep]
        )
        parameters = np.stack(dream_means + [es.best] + real_means)  # (K, n)
        returns = real_returns(envs, agent, parameters, args.real_episodes, args.seed + REAL_SEED_OFFSET)
    finally:
        envs.close()
    return ControllerSet(sources, parameters, returns, real.env_steps, world.sha256, args.seed + REAL_SEED_OFFSET)


def evolved_controller(run: Path, world, controller) -> np.ndarray:
    """The (n,) controller a `wm evolve` run kept (its checkpoints/best.pt, or that file), refused unless it was
    evolved on this world model and has this config's controller shape."""
    try:
        parameters, state = read_controller(run, controller, flag="--add-controller")
    except CheckpointError as error:
        raise SystemExit(str(error)) from None
    if state["command"] != "evolve":
        raise SystemExit(
            f"--add-controller {run} is a `wm cycle` controller, which sees through its own world model "
            "(add `wm evolve` runs only)"
        )
    if state["data"].get("world_model_sha256") != world.sha256:
        raise SystemExit(
            f"--add-controller {run} was evolved on another world model ({state['data'].get('world_model')})"
        )
    return parameters


def add_controllers(
    controllers: ControllerSet, runs: list[Path], cfg: config_lib.Config, world, controller, seed: int
) -> ControllerSet:
    """The set with each run's controller added, scored on the set's own real episodes."""
    if controllers.real_seed is None:
        raise SystemExit(
            "--add-controller: this set does not record the seed of its real episodes (it was saved "
            "before that was kept), so an added controller could not play the same ones; build it again"
        )
    parameters = np.stack([evolved_controller(run, world, controller) for run in runs])  # (K', n)
    envs, agent = real_env(cfg, world, controller, seed)
    try:
        returns = real_returns(envs, agent, parameters, controllers.real_returns.shape[1], controllers.real_seed)
    finally:
        envs.close()
    return controllers._replace(
        sources=controllers.sources + [f"wm evolve run {run}" for run in runs],
        parameters=np.concatenate([controllers.parameters, parameters]),
        real_returns=np.concatenate([controllers.real_returns, returns]),
    )


def save_controller_set(path: Path, controllers: ControllerSet) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        sources=np.array(controllers.sources),
        parameters=controllers.parameters,
        real_returns=controllers.real_returns,
        search_real_env_steps=controllers.search_real_env_steps,
        model_sha256=np.array(controllers.model_sha256),
        **({} if controllers.real_seed is None else {"real_seed": controllers.real_seed}),
    )
    atomic_write_bytes(path, buffer.getvalue())


def load_controller_set(path: Path, world, controller) -> ControllerSet:
    """A saved set, refused when it was made on another world model or for another controller shape."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            controllers = ControllerSet(
                [str(source) for source in saved["sources"]],
                saved["parameters"],
                saved["real_returns"],
                int(saved["search_real_env_steps"]),
                str(saved["model_sha256"]),
                int(saved["real_seed"]) if "real_seed" in saved else None,
            )
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"--controllers {path}: not a controller set saved by --save-controllers ({error})") from None
    if controllers.model_sha256 != world.sha256:
        raise SystemExit(
            f"--controllers {path} was made on another world model (checkpoint sha256 "
            f"{controllers.model_sha256[:12]}, this one {world.sha256[:12]})"
        )
    if controllers.parameters.shape[1] != controller.num_params:
        raise SystemExit(
            f"--controllers {path} holds controllers of {controllers.parameters.shape[1]} parameters, "
            f"this config's have {controller.num_params}"
        )
    return controllers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-model", metavar="RUN", required=True, help="a trained `wm train` or `wm cycle` run")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the run's config (repeatable)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=V[,KEY=V]",
        help="dream.* overrides to rank the same controllers under (repeatable)",
    )
    parser.add_argument("--dream-generations", type=int, help="the dream search's generations (default: the config's)")
    parser.add_argument("--snapshots", type=int, default=6, help="means kept from each search")
    parser.add_argument("--real-generations", type=int, default=6, help="the real-env search's generations")
    parser.add_argument("--real-population", type=int, default=16, help="the real-env search's candidates")
    parser.add_argument("--real-episodes", type=int, default=10, help="real episodes scoring each controller")
    parser.add_argument("--dream-episodes", type=int, default=256, help="dream rollouts scoring each controller")
    parser.add_argument("--save-controllers", metavar="NPZ", help="keep the controllers and their real returns here")
    parser.add_argument(
        "--controllers",
        metavar="NPZ",
        help="rank a set kept by --save-controllers on the same world model (no search, no real env)",
    )
    parser.add_argument(
        "--add-controller",
        dest="added",
        action="append",
        default=[],
        type=Path,
        metavar="RUN",
        help="a `wm evolve` run on the same world model whose controller joins the set (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: the run's run.threads)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a check that it runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.dream_generations, args.snapshots, args.real_generations = 2, 2, 1
        args.real_population, args.real_episodes, args.dream_episodes = 4, 2, 8
    least = {
        "--dream-generations": 1,
        "--snapshots": 1,
        "--real-generations": 1,
        "--real-population": 2,
        "--real-episodes": 2,
        "--dream-episodes": 1,
    }
    for flag, minimum in least.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and value < minimum:
            parser.error(f"{flag} must be >= {minimum}, got {value}")  # 2 real episodes: a standard error needs them

    saved = read_checkpoint(run_checkpoint(Path(args.world_model)))["config"]
    try:
        cfg = config_lib.load_config([], args.overrides, base=saved)
    except config_lib.ConfigError as error:
        raise SystemExit(f"--set: {error}") from None
    variants = {BASELINE: cfg, **{variant: variant_config(cfg, variant) for variant in args.variant}}
    torch.set_num_threads(args.threads or cfg.run.threads or torch.get_num_threads())
    seed_everything(args.seed)
    device = resolve_device(args.device)
    world = load_world_model(Path(args.world_model), cfg, device)
    controller = build_controller(world.model, world.spec, cfg.evolve)
    pools = {pool_key(cfg.dream): start_pool(world, cfg, device)}
    if args.controllers:
        controllers = load_controller_set(Path(args.controllers), world, controller)
    else:
        controllers = build_controller_set(args, cfg, world, controller, pools[pool_key(cfg.dream)])
    if args.added:
        controllers = add_controllers(controllers, args.added, cfg, world, controller, args.seed)
    if args.save_controllers:
        save_controller_set(Path(args.save_controllers), controllers)
    real_mean = controllers.real_returns.mean(axis=1)  # (K,)
    real_se = controllers.real_returns.std(axis=1, ddof=1) / math.sqrt(controllers.real_returns.shape[1])  # (K,)

    # 3. Their dream returns under each setting, from the same starts with the same noise (a variant that changes
    # how the start pool is drawn gets its own pool, drawn with the same seed).
    dream_returns = {}
    for name, variant in variants.items():
        if pool_key(variant.dream) not in pools:
            pools[pool_key(variant.dream)] = start_pool(world, variant, device)
        scorer = DreamScorer(
            world.model, controller, pools[pool_key(variant.dream)], dream_settings(variant.dream), args.seed
        )
        dream_returns[name] = scorer(controllers.parameters, KEY_RANKING, args.dream_episodes)  # (K,)

    setting = {
        "model": str(args.world_model),
        "env": f"{cfg.env.id}/{cfg.env.obs}{cfg.env.size}",
        "controllers": len(real_mean),
        "real_episodes": controllers.real_returns.shape[1],
        "dream_episodes": args.dream_episodes,
        "search_real_env_steps": controllers.search_real_env_steps,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
    }
    for k, source in enumerate(controllers.sources):
        emit(
            "controller",
            real_mean[k],
            "real return",
            source=source,
            real_std=round(float(controllers.real_returns[k].std()), 2),
            dream={name: round(float(value[k]), 2) for name, value in dream_returns.items()},
        )
    best_real = float(real_mean.max())
    for name, dream_return in dream_returns.items():
        settings = dataclasses.asdict(dream_settings(variants[name].dream))
        pick = int(np.argmax(dream_return))
        emit(
            "rank_correlation",
            spearman(dream_return, real_mean),
            "spearman",
            variant=name,
            **setting,
            dream_settings=settings,
        )
        agreement, pairs = pair_agreement(dream_return, real_mean, real_se)
        emit("pair_agreement", agreement, "share of pairs", variant=name, pairs=pairs, **setting)
        emit(
            "pick_real_return", real_mean[pick], "real return", variant=name, pick=controllers.sources[pick], **setting
        )
        emit(
            "pick_regret",
            best_real - real_mean[pick],
            "real return",
            variant=name,
            best_real_return=best_real,
            **setting,
        )


if __name__ == "__main__":
    main()
