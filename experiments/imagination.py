"""The actor-critic trained in a world model's imagination, then scored in the real env:
`wm evolve --set evolve.agent=actor_critic`.

    wm evolve --world-model runs/<wm train run> --set evolve.agent=actor_critic      # actor_critic.* settings

The life of a run: load the world model (its checkpoint must fit this config's env and model shape) -> encode the
pool of start states `wm evolve` scores controllers from (dream.start_windows, seeded by run.seed) -> for
`actor_critic.steps` steps: imagine `actor_critic.starts` trajectories from the pool and update the critic, the actor
and the target critic (agents/actor_critic.py) -> the actor's dream return, scored as a controller's is (the same
fresh starts and noise, the dream's own horizon and ending) -> its real return over `evolve.eval_episodes` episodes,
on the episodes an evolved controller is scored on -> summary.json: dream_return, eval_return_mean/std, the
dream-real gap and the milliseconds a decision took.

The learner's state (networks, target critic, optimisers, return scale, its generator) is checkpointed every
run.checkpoint_every steps, at the end and on SIGINT/SIGTERM; `--resume` continues the training bit for bit (at
the same thread count), so a killed run ends with the parameters an uninterrupted one ends with. It writes no
best.pt: there is no controller for `wm eval`, `wm video` or `wm export` to replay, as with the planner.

`wm cycle --set evolve.agent=actor_critic` trains the same way (`ImaginationTraining`) once per iteration, inside its
own checkpoints and on its own step axis.

The loop lives in experiments/ rather than agents/ because it drives checkpoints and logging, which live in
experiments/ and which agents/ may not import.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from agents.actor_critic import ActorCritic, ActorCriticAgent, ActorCriticSettings
from agents.agent import decision_ms
from envs import EnvSpec
from experiments import config as config_lib
from experiments.checkpoint import CheckpointError, load_latest, save_checkpoint
from experiments.config import ActorCriticConfig, Config
from experiments.evolution import STREAM_FINAL, STREAM_FINAL_NOISE, eval_envs, score_in_env, success_text
from experiments.load import LoadedWorldModel, action_space, dream_settings, load_world_model, start_pool
from experiments.progress import Progress
from experiments.rundir import GracefulStop, Interrupted, NonFiniteGuard, Run, RunFailure, checkpoint_differences
from experiments.runtime import (
    rebalance_threads,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    set_threads,
    step_generator,
    step_rng,
)
from worldmodel.dream.rollout import DreamSettings, DreamState, draw_noise, rollout
from worldmodel.dynamics.world_model import WorldModel

NONFINITE_LIMIT = 5  # training steps in a row with a non-finite loss or gradient before the run stops


def actor_critic_settings(cfg: ActorCriticConfig, seed: int) -> ActorCriticSettings:
    """The learner's settings from its config section (all but `steps`), seeded by run.seed."""
    fields = {key: value for key, value in dataclasses.asdict(cfg).items() if key != "steps"}
    return ActorCriticSettings(**fields, seed=seed)


def build_learner(model: WorldModel, spec: EnvSpec, cfg: Config, seed: int, device: torch.device) -> ActorCritic:
    """A fresh actor-critic (actor_critic.*, seeded by `seed`) imagining in `model`'s dream (dream.*) of the env of
    `spec`: `wm evolve`'s, and each of `wm cycle`'s before it loads its state."""
    settings = actor_critic_settings(cfg.actor_critic, seed)
    return ActorCritic(model, action_space(spec), settings, dream_settings(cfg.dream), device)


class ImaginationTraining:
    """The actor-critic's training loop over a pool of start states, logged to `run`, checkpointed with its state.

    `wm cycle` trains once per iteration: it passes its own checkpoint (`checkpointer`, in place of `save`'s, holding
    `learner_state`) and shifts the step of every log line onto its own step axis (`log_offset`), as for `Evolution`.
    """

    def __init__(
        self,
        learner: ActorCritic,
        pool: DreamState,
        cfg: Config,
        run: Run,
        provenance: dict,
        checkpointer: Callable[[], None] | None = None,
        log_offset: int = 0,
    ):
        self.learner, self.pool, self.cfg, self.run, self.provenance = learner, pool, cfg, run, provenance
        self.checkpointer, self.log_offset = checkpointer, log_offset
        self.guard = NonFiniteGuard(NONFINITE_LIMIT, "lower actor_critic.actor_lr and actor_critic.critic_lr")

    def learner_state(self) -> dict:
        """The learner's state and the non-finite guard's: what continues the training exactly."""
        return {"actor_critic": self.learner.state_dict(), "nonfinite": self.guard.state_dict()}

    def load_learner(self, state: dict, path: Path | str) -> None:
        """Continue from `learner_state()` (within a checkpoint at `path`, named in the error)."""
        try:
            self.learner.load_state_dict(state["actor_critic"])
        except (KeyError, ValueError) as error:
            raise CheckpointError(f"{path} holds no actor-critic of this shape: {error}") from None
        self.guard.load_state_dict(state["nonfinite"])

    def state_dict(self) -> dict:
        return {
            "command": "evolve",
            "agent": "actor_critic",
            "step": self.learner.steps,
            "config": config_lib.to_dict(self.cfg),
            "data": self.provenance,
            **self.learner_state(),
            "rng": rng_state(),
        }

    def save(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer()
            return
        save_checkpoint(self.run.checkpoint_dir / "latest.pt", self.state_dict())
        self.run.write_summary(step=self.learner.steps)

    def load_state(self, state: dict, path: Path) -> None:
        self.load_learner(state, path)
        set_rng_state(state["rng"])
        print(f"resumed from {path} at step {self.learner.steps}", file=sys.stderr)

    def train(self, stop: GracefulStop, until: int | None = None) -> None:
        """Train up to step `until` (default actor_critic.steps), logging every run.log_every steps and saving every
        run.checkpoint_every."""
        total, rcfg = self.cfg.actor_critic.steps if until is None else until, self.cfg.run
        self.run.start_at(self.learner.steps + self.log_offset)
        bar = Progress(total, "imagine", initial=self.learner.steps, unit="step", enabled=rcfg.progress)
        while self.learner.steps < total:
            rebalance_threads()  # a neighbour that came or went since the last look
            start = time.monotonic()
            try:
                result = self.learner.train_step(self.pool)
            except FloatingPointError as error:
                raise RunFailure(str(error)) from None
            self.guard.record(result.skipped, self.learner.steps, result.metrics["loss/actor"])
            if result.skipped:
                continue  # the same step again, on the next draws of the learner's generator
            step = self.learner.steps
            if step % rcfg.log_every == 0 or step == total:
                self.run.log(step + self.log_offset, {**result.metrics, "perf/step_s": time.monotonic() - start})
            bar.update(1, ret=result.metrics["dream/return_mean"])
            done = step == total
            stopping = stop.check()
            if done or step % rcfg.checkpoint_every == 0 or stopping:
                self.save()
            if stopping and not done:
                bar.close()
                raise Interrupted
        bar.close()


@torch.no_grad()
def dream_return(learner: ActorCritic, pool: DreamState, settings: DreamSettings, seed: int, episodes: int) -> float:
    """The actor's mean return over `episodes` dream rollouts, on the fresh starts and noise that score `wm evolve`'s
    final candidates (`experiments.evolution.choose_controller`): the two agents' dream returns compare."""
    device = pool.latent.device
    index = step_rng(seed, 0, STREAM_FINAL).integers(0, len(pool.latent), size=episodes)
    noise = draw_noise(
        episodes,
        settings,
        learner.model.latent_dim,
        step_generator(seed, 0, STREAM_FINAL_NOISE),
        prior=learner.model.samples_prior,
    )
    noise = noise._replace(**{key: None if v is None else v.to(device) for key, v in noise._asdict().items()})
    result = rollout(learner.model, learner.act, pool.select(torch.as_tensor(index, device=device)), settings, noise)
    return result.returns.mean().item()


def train_actor_critic(run: Run, stop: GracefulStop, world_model: Path, world: LoadedWorldModel | None = None) -> dict:
    """Load the world model (unless `world` is the one already loaded from `world_model`), train the actor-critic in
    its imagination (or resume), score the actor in the dream and in the real env; the summary's figures."""
    cfg, ecfg = run.cfg, run.cfg.evolve
    device = resolve_device(cfg.run.device)
    set_threads(cfg.run, device)
    print(f"run {run.path}: device {device}, the actor-critic in imagination", file=sys.stderr)
    world = world or load_world_model(world_model, cfg)
    model = world.model.to(device).eval()
    seed_everything(cfg.run.seed)
    resume = None
    if run.resumed:
        resume = load_latest(run.checkpoint_dir)
        differences = checkpoint_differences(resume[0], resume[1], "evolve", cfg)
        if resume[0]["data"].get("world_model_sha256") != world.sha256:
            differences.append(
                f"--world-model: {world.checkpoint} is not the world model the run trained in "
                f"({resume[0]['data'].get('world_model')}; their SHA-256 differ)"
            )
        if differences:
            raise CheckpointError(f"{resume[1]} was written under another config:\n  " + "\n  ".join(differences))
    settings = dream_settings(cfg.dream)
    pool = start_pool(world, cfg, device)
    learner = build_learner(model, world.spec, cfg, cfg.run.seed, device)
    provenance = {
        "world_model": str(world.checkpoint.resolve()),
        "world_model_sha256": world.sha256,
        "start_states": len(pool.latent),
    }
    training = ImaginationTraining(learner, pool, cfg, run, provenance)
    run.write_summary(
        device=str(device),
        env=world.spec.to_dict(),
        data=provenance,
        agent="actor_critic",
        actor_critic=dataclasses.asdict(cfg.actor_critic),
    )
    if resume is not None:
        training.load_state(*resume)
    training.train(stop)
    figures = {"dream_return": dream_return(learner, pool, settings, cfg.run.seed, ecfg.final_episodes)}
    agent = ActorCriticAgent(learner, ecfg.eval_envs)
    envs = eval_envs(cfg, cfg.run.seed)
    try:
        figures |= score_in_env(envs, agent, np.zeros((0,)), ecfg.eval_episodes, cfg.run.seed, cfg.run.progress)
    finally:
        envs.close()
    figures["dream_real_gap"] = figures["dream_return"] - figures["eval_return_mean"]
    figures["decision_ms"] = decision_ms(agent)
    figures["steps"] = learner.steps
    run.log(learner.steps, {f"eval/{key.removeprefix('eval_')}": v for key, v in figures.items() if _number(v)})
    print(
        f"the actor-critic: dream return {figures['dream_return']:.1f}; real return {figures['eval_return_mean']:.1f} "
        f"± {figures['eval_return_std']:.1f} over {ecfg.eval_episodes} episodes{success_text(figures)}; gap "
        f"{figures['dream_real_gap']:.1f}; {figures['decision_ms']:.1f} ms a decision for {ecfg.eval_envs} sub-envs",
        file=sys.stderr,
    )
    return figures


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
