"""The evolution loop (`Evolution`), its scorers (`DreamScorer` in the dream, `RealScorer` and `score_in_env` in the
real env), choosing and saving the controller (`choose_controller`, `save_controller`) and a whole `wm evolve` run
(`evolve`): evolve a controller with CMA-ES inside a trained world model, then score it in the real env.

    wm evolve --config configs/cartpole.yaml --world-model runs/<wm train run>
    wm evolve --config configs/cartpole.yaml --world-model runs/<wm train run> --in real     # model-free baseline
    wm evolve --config configs/cartpole.yaml --world-model runs/<run> --controller runs/<evolve run>  # warm start

The life of a run: load the world model (its checkpoint must fit this config's env and model shape) -> encode
`dream.start_windows` real windows of its episode store into a pool of start states -> for each generation: ask
CMA-ES for `evolve.population` candidates, score each by its mean return over `evolve.episodes` rollouts (all of
them at once, in one batched dream rollout; with `--in real` in the real env instead), tell -> choose between the
search's mean and its best-ever candidate by their dream return on fresh starts -> score the choice in the real
env over `evolve.eval_episodes` episodes -> summary.json: dream_return, eval_return_mean/std, the dream-real gap.

The loop lives in experiments/ rather than agents/ because it drives checkpoints, logging and torchrun, which live in
experiments/ and which agents/ may not import.

Every candidate of a generation meets the same starts and the same noise (common random numbers: their ranking
reflects the candidates, not their luck), drawn from generators seeded by (seed, generation), so a resumed search
repeats exactly what an uninterrupted one would have done; the ES state (with its own RNG) is in the checkpoint.

Under torchrun (see experiments/distributed.py) every process runs the same search and scores its share of each
generation's population (`Evolution.score`); in the dream a share's fitness is exactly its rows of the whole
population's, so the search is the one a single process runs.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from agents.agent import LatentAgent, decision_ms
from agents.controllers import Controller
from agents.evolution import CMAES, Generation, NonFiniteFitnessError
from envs import make_vector_env
from envs.atomic import sha256_bytes
from experiments import config as config_lib
from experiments import distributed
from experiments.checkpoint import CheckpointError, load_latest, read_checkpoint, save_checkpoint
from experiments.config import Config
from experiments.load import LoadedWorldModel, build_controller, dream_settings, load_world_model, start_pool
from experiments.progress import Progress
from experiments.rundir import GracefulStop, Interrupted, Run, RunFailure, checkpoint_differences
from experiments.runtime import (
    rebalance_threads,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    set_threads,
    step_generator,
    step_rng,
    step_seed,
)
from experiments.scoring import run_episodes
from worldmodel.dream.rollout import DreamSettings, DreamState, Rollout, draw_noise, rollout
from worldmodel.dynamics.world_model import WorldModel

# Streams of per-generation randomness (see runtime.step_seed); 1 and 8 are the start pool's (experiments/load.py).
STREAM_STARTS, STREAM_NOISE, STREAM_REAL, STREAM_FINAL, STREAM_EVAL = 2, 3, 4, 5, 6
STREAM_FINAL_NOISE = 7
SCORING_MODES = ("dream", "real")


# ------------------------------------------------------------------------------------------------------
# Scoring a population


class Scorer(Protocol):
    """Fitness of a population: candidates (P, n) -> (P,), higher is better; `key` seeds its randomness."""

    def __call__(self, candidates: np.ndarray, key: int, episodes: int) -> np.ndarray: ...

    def figures(self) -> dict[str, float]: ...


class DreamScorer:
    """Each candidate's mean return over `episodes` dream rollouts, the whole population in one batched rollout."""

    def __init__(
        self,
        model: WorldModel,
        controller: Controller,
        pool: DreamState,
        settings: DreamSettings,
        seed: int,
        stream: int = STREAM_STARTS,
        noise_stream: int = STREAM_NOISE,
    ):
        self.model, self.controller, self.pool, self.settings = model, controller, pool, settings
        self.seed, self.stream, self.noise_stream = seed, stream, noise_stream
        self.last: Rollout | None = None

    @torch.no_grad()
    def __call__(self, candidates: np.ndarray, key: int, episodes: int) -> np.ndarray:
        population = len(candidates)
        device = self.pool.latent.device
        params = torch.as_tensor(candidates, dtype=torch.float32, device=device)  # (P, n)
        index = step_rng(self.seed, key, self.stream).integers(0, len(self.pool.latent), size=episodes)
        rows = torch.as_tensor(np.tile(index, population), device=device)  # (P*E,) candidate-major
        noise = draw_noise(
            episodes,
            self.settings,
            self.model.latent_dim,
            step_generator(self.seed, key, self.noise_stream),
            prior=self.model.samples_prior,
        )
        noise = noise._replace(
            **{
                k: None if v is None else v.repeat(population, *[1] * (v.ndim - 1)).to(device)
                for k, v in noise._asdict().items()
            }
        )  # (E, ...) -> (P*E, ...)
        self.last = rollout(
            self.model, self.controller.policy(params, episodes), self.pool.select(rows), self.settings, noise
        )
        return self.last.returns.reshape(population, episodes).mean(dim=1).double().cpu().numpy()  # (P*E,) -> (P,)

    def figures(self) -> dict[str, float]:
        if self.last is None:
            return {}
        return {
            "dream/length_mean": self.last.lengths.float().mean().item(),
            "dream/disagreement_mean": self.last.disagreement.mean().item(),
            "dream/penalty_mean": self.last.penalty.mean().item(),
        }


class RealScorer:
    """Each candidate's mean return over `episodes` real-env episodes of at most `max_steps` steps (`--in real`)."""

    def __init__(self, envs, agent: LatentAgent, seed: int, max_steps: int | None):
        self.envs, self.agent, self.seed, self.max_steps = envs, agent, seed, max_steps
        self.env_steps = 0
        self.last_lengths: np.ndarray | None = None

    def __call__(self, candidates: np.ndarray, key: int, episodes: int) -> np.ndarray:
        jobs = np.repeat(candidates, episodes, axis=0)  # (P, n) -> (P*E, n) candidate-major
        result = run_episodes(
            self.envs, self.agent, jobs, step_seed(self.seed, key, STREAM_REAL) % 2**31, self.max_steps
        )
        self.env_steps += result.env_steps
        self.last_lengths = result.lengths
        return result.returns.reshape(len(candidates), episodes).mean(axis=1)

    def figures(self) -> dict[str, float]:
        figures = {"real/env_steps": float(self.env_steps)}
        if self.last_lengths is not None:
            figures["real/length_mean"] = float(self.last_lengths.mean())
        return figures


def weighted_figures(figures: list[dict[str, float]], weights: list[int]) -> dict[str, float]:
    """Each figure averaged over parts (processes' shares of a population), weighted by their candidates; a part
    without candidates reports nothing."""
    parts = [(part, weight) for part, weight in zip(figures, weights, strict=True) if weight]
    keys = parts[0][0] if parts else {}
    total = sum(weight for _, weight in parts)
    return {key: sum(part[key] * weight for part, weight in parts) / total for key in keys}


# ------------------------------------------------------------------------------------------------------
# The search


class Evolution:
    """CMA-ES over a controller's parameters, scored by `scorer`, logged to `run`, checkpointed with its state.

    `wm cycle` evolves once per iteration: it passes its own checkpoint (`checkpointer`, in place of `save`'s) and
    shifts the step of every log line onto its own step axis (`log_offset`).
    """

    def __init__(
        self,
        es: CMAES,
        scorer: Scorer,
        controller: Controller,
        cfg: Config,
        run: Run,
        mode: str,
        provenance: dict,
        checkpointer: Callable[[], None] | None = None,
        log_offset: int = 0,
    ):
        self.es, self.scorer, self.controller, self.cfg, self.run = es, scorer, controller, cfg, run
        self.mode, self.provenance = mode, provenance
        self.checkpointer, self.log_offset = checkpointer, log_offset
        self.figures: dict[str, float] = {}  # the scorer's figures of the last generation, over every process

    def state_dict(self) -> dict:
        return {
            "command": "evolve",
            "step": self.es.generation,
            "mode": self.mode,
            "config": config_lib.to_dict(self.cfg),
            "data": self.provenance,
            "controller": self.controller.describe(),
            "es": self.es.state_dict(),
            "env_steps": getattr(self.scorer, "env_steps", 0),
            "rng": rng_state(),
        }

    def save(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer()
            return
        save_checkpoint(self.run.checkpoint_dir / "latest.pt", self.state_dict())
        self.run.write_summary(step=self.es.generation)

    def load_state(self, state: dict, path: Path) -> None:
        self.es = CMAES.from_state_dict(state["es"])
        if hasattr(self.scorer, "env_steps"):
            self.scorer.env_steps = int(state["env_steps"])
        set_rng_state(state["rng"])
        print(f"resumed from {path} at generation {self.es.generation}", file=sys.stderr)

    def score(self, candidates: np.ndarray, key: int, episodes: int) -> np.ndarray:
        """The fitness (P,) of a generation's candidates (P, n).

        Under torchrun every process holds the same search, hence the same candidates (checked); each scores its
        contiguous share of the population (shares differ by one candidate at most, P need not divide evenly) and
        the fitness is all-gathered in rank order. Real-env steps are summed over processes and the scorer's other
        figures (means over rollouts) averaged, weighted by the shares.
        """
        if not distributed.active():
            fitness = self.scorer(candidates, key, episodes)
            self.figures = self.scorer.figures()
            return fitness
        rows = distributed.share(len(candidates))
        steps = getattr(self.scorer, "env_steps", None)
        own = self.scorer(candidates[rows], key, episodes) if rows.stop > rows.start else np.empty(0)
        new_steps = 0 if steps is None else self.scorer.env_steps - steps
        shares = distributed.all_gather_object((own, sha256_bytes(candidates.tobytes()), new_steps))
        if len({digest for _, digest, _ in shares}) > 1:
            raise RunFailure(
                f"generation {key}: the processes' CMA-ES searches proposed different candidates; they must run the "
                "same code on the same kind of machine"
            )
        if steps is not None:
            self.scorer.env_steps = steps + sum(count for *_, count in shares)
        self.figures = weighted_figures(
            distributed.all_gather_object(self.scorer.figures() if len(own) else {}),
            [len(fitness) for fitness, *_ in shares],
        )
        return np.concatenate([fitness for fitness, *_ in shares])

    def evolve(self, stop: GracefulStop, generations: int | None = None) -> None:
        """Run the search up to generation `generations` (default evolve.generations), saving on the way."""
        ecfg = self.cfg.evolve
        total = ecfg.generations if generations is None else generations
        self.run.start_at(self.es.generation + self.log_offset)
        bar = Progress(total, "evolve", initial=self.es.generation, unit="gen", enabled=self.cfg.run.progress)
        while self.es.generation < total:
            rebalance_threads()  # a neighbour that came or went since the last look
            key = self.es.generation
            start = time.monotonic()
            try:
                generation: Generation = self.es.step(functools.partial(self.score, key=key, episodes=ecfg.episodes))
            except NonFiniteFitnessError as error:
                raise RunFailure(f"{error}; the world model may be diverging on these controllers") from None
            metrics = {
                f"{self.mode}/fitness_best": generation.best_fitness,
                f"{self.mode}/fitness_mean": generation.mean_fitness,
                f"{self.mode}/fitness_best_ever": self.es.best_fitness,
                "es/sigma": self.es.sigma,
                "es/nonfinite": generation.nonfinite,
                "perf/generation_s": time.monotonic() - start,
                "perf/ask_tell_s": generation.ask_tell_s,
                "perf/score_s": generation.score_s,
                **self.figures,
            }
            # every generation: each is seconds of work, worth a line
            self.run.log(self.es.generation + self.log_offset, metrics)
            bar.update(1, best=generation.best_fitness, mean=generation.mean_fitness)
            done = self.es.generation == total
            stopping = stop.check()
            if done or self.es.generation % ecfg.checkpoint_every == 0 or stopping:
                self.save()
            if stopping and not done:
                bar.close()
                raise Interrupted
        bar.close()


# ------------------------------------------------------------------------------------------------------
# A whole run, and the controller it keeps


# The config keys behind each fact of `Controller.describe()`, to say what to change when a warm start is refused.
CONTROLLER_KEYS = {
    "kind": "evolve.controller",
    "hidden": "evolve.controller_hidden",
    "in_dim": "world_model.latent_dim + world_model.hidden_dim",
    "action_dim": "the env's actions",
    "discrete": "the env's actions",
    "num_params": "the controller's shape",
}


def read_warm_start(path: Path, controller: Controller) -> np.ndarray:
    """The controller of an earlier `wm evolve` or `wm cycle` run (its checkpoints/best.pt) or of a checkpoint file,
    as x0."""
    return read_controller(path, controller)[0]


def read_controller(path: Path, controller: Controller, flag: str = "--controller") -> tuple[np.ndarray, dict]:
    """The (n,) parameters of the controller an `evolve` or `cycle` run kept (its checkpoints/best.pt, or that file)
    and the checkpoint they came from, refused unless `controller` has their shape; errors name `flag`."""
    checkpoint = path / "checkpoints" / "best.pt" if path.is_dir() else path
    try:
        state = read_checkpoint(checkpoint)
    except CheckpointError as error:
        raise CheckpointError(f"{flag} {path}: {error}") from None
    if state.get("command") not in ("evolve", "cycle") or "parameters" not in state:
        raise CheckpointError(f"{flag} {checkpoint} holds no evolved controller (use an evolve or cycle run's best.pt)")
    theirs, ours = state["controller"], controller.describe()
    if theirs != ours:
        differences = [
            f"{key}: {theirs.get(key)!r} in the checkpoint, {ours.get(key)!r} here ({CONTROLLER_KEYS.get(key, key)})"
            for key in sorted(theirs.keys() | ours.keys())
            if theirs.get(key) != ours.get(key)
        ]
        raise CheckpointError(
            f"{flag} {checkpoint} is another controller than this config builds:\n  " + "\n  ".join(differences)
        )
    parameters = state["parameters"].double().numpy()
    if parameters.shape != (controller.num_params,):
        raise CheckpointError(
            f"{flag} {checkpoint} holds parameters of shape {parameters.shape}, expected ({controller.num_params},)"
        )
    return parameters, state


def evolve(
    run: Run,
    stop: GracefulStop,
    world_model: Path,
    mode: str,
    warm_start: Path | None = None,
    world: LoadedWorldModel | None = None,
) -> dict:
    """Load the world model (unless `world` is the one already loaded from `world_model`), evolve (or resume),
    choose the final controller and score it in the real env."""
    cfg, ecfg = run.cfg, run.cfg.evolve
    device = resolve_device(cfg.run.device)
    set_threads(cfg.run, device)
    print(f"run {run.path}: device {device}, scoring in the {mode}", file=sys.stderr)
    if world is None:
        world = load_world_model(world_model, cfg)
    world.model.to(device)
    seed_everything(cfg.run.seed)  # after building the model, whose initialisation draws from the global RNG
    resume = None
    if run.resumed:
        resume = load_latest(run.checkpoint_dir)
        differences = checkpoint_differences(resume[0], resume[1], "evolve", cfg)
        if resume[0]["mode"] != mode:
            differences.append(f"scoring: the run scored in the {resume[0]['mode']}, not in the {mode}")
        if resume[0]["data"].get("world_model_sha256") != world.sha256:
            differences.append(
                f"--world-model: {world.checkpoint} is not the world model the run evolved in "
                f"({resume[0]['data'].get('world_model')}; their SHA-256 differ)"
            )
        if differences:
            raise CheckpointError(f"{resume[1]} was written under another config:\n  " + "\n  ".join(differences))
        warm_start = resume[0]["data"].get("warm_start")  # provenance only: the search itself comes from the ES state
    model = world.model
    controller = build_controller(world.model, world.spec, ecfg)
    if warm_start is None or resume is not None:
        x0 = controller.initial_parameters(cfg.run.seed)
    else:
        x0 = read_warm_start(Path(warm_start), controller)
    es = CMAES(
        x0,
        ecfg.sigma,
        ecfg.population,
        cfg.run.seed,
        diagonal=ecfg.diagonal,
        max_nonfinite_fraction=ecfg.max_nonfinite_fraction,
    )
    settings = dream_settings(cfg.dream)
    pool = start_pool(world, cfg, device)
    dream = DreamScorer(model, controller, pool, settings, cfg.run.seed)
    envs = eval_envs(cfg, cfg.run.seed)
    agent = LatentAgent(model, controller, x0, ecfg.eval_envs)
    scorer: Scorer = dream if mode == "dream" else RealScorer(envs, agent, cfg.run.seed, settings.horizon)
    provenance = {
        "world_model": str(world.checkpoint.resolve()),
        "world_model_sha256": world.sha256,
        "warm_start": None if warm_start is None else str(Path(warm_start).resolve()),
        "start_states": len(pool.latent),
    }
    evolution = Evolution(es, scorer, controller, cfg, run, mode, provenance)
    run.write_summary(
        device=str(device), env=world.spec.to_dict(), data=provenance, scoring=mode, controller=controller.describe()
    )
    if resume is not None:
        evolution.load_state(*resume)
    try:
        evolution.evolve(stop)
        results = finish(evolution, dream, envs, agent, cfg, run)
    finally:
        envs.close()
    return results


def finish(evolution: Evolution, dream: DreamScorer, envs, agent: LatentAgent, cfg: Config, run: Run) -> dict:
    """Choose the final controller, score it in the real env, save it as checkpoints/best.pt and return the
    summary's figures."""
    ecfg, es = cfg.evolve, evolution.es
    warm = evolution.provenance.get("warm_start") is not None
    parameters, choice = choose_controller(es, dream, ecfg.final_episodes, warm)
    agent.decisions, agent.seconds = 0, 0.0  # the evaluation's decisions alone (a search in the real env made more)
    real = score_in_env(envs, agent, parameters, ecfg.eval_episodes, cfg.run.seed, cfg.run.progress)
    gap = choice["dream_return"] - real["eval_return_mean"]
    figures = {**choice, **real, "dream_real_gap": gap, "decision_ms": decision_ms(agent)}
    if evolution.mode == "real":
        figures["real_env_steps"] = int(evolution.scorer.env_steps)
    numbers = {f"eval/{key.removeprefix('eval_')}": v for key, v in figures.items() if isinstance(v, (int, float))}
    run.log(es.generation, numbers)
    save_controller(
        run.checkpoint_dir / "best.pt", "evolve", evolution.controller, parameters, cfg, evolution.provenance, figures
    )
    print(
        f"dream return {figures['dream_return']:.1f} ({figures['chosen']} candidate); real return "
        f"{figures['eval_return_mean']:.1f} ± {figures['eval_return_std']:.1f} over {ecfg.eval_episodes} episodes"
        f"{success_text(figures)}; gap {figures['dream_real_gap']:.1f}; {figures['decision_ms']:.1f} ms a decision for "
        f"{ecfg.eval_envs} sub-envs",
        file=sys.stderr,
    )
    return figures


def choose_controller(es: CMAES, dream: DreamScorer, episodes: int, warm: bool = False) -> tuple[np.ndarray, dict]:
    """Choose between the search's mean and its best-ever candidate by their mean dream return over `episodes`
    fresh starts with fresh noise (the best-ever candidate may owe its fitness to lucky starts). With `warm`, the
    search's start (an earlier controller) competes too, so that a warm-started search never ends with a controller
    the dream itself rates below the one it was given: with noisy fitness, CMA-ES can drift downhill.

    Returns:
        the chosen parameters (n,) and figures for summary.json.
    """
    names = ("mean", "best", "start") if warm else ("mean", "best")
    finalists = np.stack([getattr(es, name) for name in names])  # (2 or 3, n): CMAES.mean, .best, .start
    final = DreamScorer(
        dream.model,
        dream.controller,
        dream.pool,
        dream.settings,
        dream.seed,
        stream=STREAM_FINAL,
        noise_stream=STREAM_FINAL_NOISE,
    )
    final_returns = final(finalists, 0, episodes)  # (2 or 3,)
    chosen = int(np.argmax(final_returns))
    return finalists[chosen], {
        "dream_return": float(final_returns[chosen]),
        "chosen": names[chosen],
        **{f"dream_return_{name}_candidate": float(value) for name, value in zip(names, final_returns, strict=True)},
        "best_fitness": float(es.best_fitness),
        "generations": int(es.generation),
    }


def eval_envs(cfg: Config, seed: int):
    """The run's env as `evolve.eval_envs` real sub-envs, sub-env i seeded `seed + i`: where every agent is scored."""
    envs, _ = make_vector_env(
        cfg.env.id,
        cfg.evolve.eval_envs,
        obs=cfg.env.obs,
        size=cfg.env.size,
        action_repeat=cfg.env.action_repeat,
        seed=seed,
    )
    return envs


def score_in_env(
    envs,
    agent: LatentAgent,
    parameters: np.ndarray,
    episodes: int,
    seed: int,
    show_progress: bool = True,
    label: str = "evaluate",
) -> dict:
    """The real return of controller `parameters` (n,) over `episodes` episodes without exploration noise, the
    episodes seeded by `seed`; figures for summary.json (`eval_env_steps`: the env steps they took, the agent steps
    times the envs' action repeat; `eval_returns` and `eval_lengths`: each episode's, in agent steps;
    `eval_success_rate`, the share of episodes that ended in success, for an env that reports `info["success"]`).
    `label` names the progress bar."""
    bar = Progress(episodes, label, unit="episode", enabled=show_progress)
    agent.exploration = 0.0
    real = run_episodes(
        envs,
        agent,
        np.repeat(parameters[None], episodes, axis=0),
        step_seed(seed, 0, STREAM_EVAL) % 2**31,
        on_step=bar.update,
    )
    bar.close()
    success = {} if real.successes is None else {"eval_success_rate": float(real.successes.mean())}
    return {
        "eval_return_mean": float(real.returns.mean()),
        "eval_return_std": float(real.returns.std()),
        "eval_episodes": int(episodes),
        "eval_length_mean": float(real.lengths.mean()),
        "eval_env_steps": real.env_steps,
        "eval_returns": real.returns.tolist(),
        "eval_lengths": real.lengths.tolist(),
        **success,
    }


def success_text(figures: dict) -> str:
    """The tail ", N% successful" for figures of an env that reports success, else nothing."""
    rate = figures.get("eval_success_rate")
    return "" if rate is None else f", {100 * rate:.0f}% successful"


def save_controller(
    path: Path,
    command: str,
    controller: Controller,
    parameters: np.ndarray,
    cfg: Config,
    provenance: dict,
    figures: dict,
    world_model: dict | None = None,
) -> None:
    """A controller checkpoint (best.pt): what `--controller` warm-starts from and `wm eval`/`wm video` play.

    `world_model` ({"model": ..., "decoder": ..., "env_spec": ...} state dicts) is the model the controller sees
    through, for a run whose model keeps changing after it (`wm cycle`); a `wm evolve` controller's model is the
    checkpoint named in `provenance`.
    """
    save_checkpoint(
        path,
        {
            "command": command,
            "controller": controller.describe(),
            "config": config_lib.to_dict(cfg),
            "data": provenance,
            "parameters": torch.as_tensor(parameters),
            "figures": figures,
            "world_model": world_model,
        },
        keep_previous=False,
    )
