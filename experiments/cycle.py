"""The cycle (`Cycle`, `run_cycle`), the toolkit's main job: collect -> train -> evolve -> evaluate, iterated; what
`wm cycle` runs.

    wm cycle --config configs/cartpole.yaml --name cartpole
    wm cycle --config configs/cartpole.yaml --encoder runs/<pretrain run>/checkpoints/latest.pt
    wm cycle --config configs/cartpole.yaml --set cycle.perception=pretrain
    wm cycle --resume --name cartpole

Iteration 0 is `wm train` followed by `wm evolve`, bit for bit under the same seed: world_model.collect_steps
random-policy steps, the world model trained world_model.steps steps on them (the last episodes held out for its
metrics), a controller evolved in its dream (evolve.*, dream.*) and scored in the real env over evolve.eval_episodes
episodes. Each later iteration:

    collect   cycle.collect_steps steps with the best controller so far plus cycle.exploration noise;
    train     cycle.train_steps more steps of the same model and optimizer, at the constant rate cycle.lr, on the
              training episodes of iteration 0 and every episode collected since (iteration 0's held-out episodes
              stay held out, so every iteration's model metrics are measured on the same episodes);
    evolve    cycle.generations generations of a new CMA-ES around the best controller (step size cycle.sigma),
              its dream starts drawn from every episode so far, so they include the states the controller visits;
    evaluate  the chosen controller in the real env; the best real return so far names the controller to beat
              (a controller evaluated before keeps its first score).

The agent (evolve.agent): 'es', the controller and CMA-ES above; 'planner', no evolve phase, the planner (planner.*)
acting through each iteration's model in the evaluation and, with the same exploration noise, in later collections;
'actor_critic', an evolve phase that trains the actor-critic (actor_critic.*) in the model's imagination, fresh in
iteration 0 and continued from the last iteration's after it, whose actor is evaluated and (with the noise) collects.
Neither keeps a best.pt; every record names its agent and the milliseconds a real decision took (docs/cycle.md).

Perception (cycle.perception): the world model's frozen ViT keeps its random initialisation ('random', the control),
or is the EMA target encoder of an I-JEPA run. With 'pretrain', iteration 0 runs a phase of its own between its
collection and its training: `wm pretrain` (pretrain.*) on every frame of iteration 0's training episodes (the held-out
ones stay unseen), as a run of its own in <run>/perception (its checkpoints, metrics, tensorboard events, probe
curve), probed beside a random-init twin when the env gives its true state; summary.json's `perception` holds its
figures. Later iterations keep that encoder: their features must keep their meaning, as the standardisation's. A
path names the checkpoint (or run) of an earlier `wm pretrain` instead.

The feature standardisation of iteration 0 is never changed: the controller's inputs must keep their meaning. The
cycle stops when an evaluation reaches cycle.target_return (by default the env's registered reward_threshold, as
CartPole-v1's 475), before an iteration whose collection would take the
env steps past cycle.max_env_steps, or after cycle.iterations iterations. The budget counts the env steps the agent
learns from (every collected transition, times env.action_repeat); evaluation episodes only measure, never enter
the store, and are reported apart (`eval_env_steps_total`), as model-based RL papers count interaction.

Pictures: learning_curve.png (real and dream return against the env steps), and per iteration
videos/iteration-KK.mp4 (also in tensorboard): the first evaluation episode, the controller in the real env beside
the model's open-loop dream of it under the same actions.

Data: one episode store, <run>/episodes. A collection lands in it with one `add_episodes` call, one shard and one
index line: after a crash it is there whole or not at all.

Checkpoints: checkpoints/latest.pt at every phase boundary, every run.checkpoint_every training steps and every
evolve.checkpoint_every generations. Randomness comes from streams seeded by (seed, iteration) and by (seed, step or
generation), so a resumed run ends in the state an uninterrupted one reaches. Log lines share one step axis that
counts training steps, generations and evaluations (so tensorboard's curves never step back); summary.json's
`history` and learning_curve.png show each iteration against the env steps used.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from gymnasium.envs.registration import parse_env_id

from agents.actor_critic import ActorCritic, ActorCriticAgent
from agents.agent import LatentAgent, ModelAgent, Recording, decision_ms
from agents.evolution import CMAES
from envs import EnvSpec, EpisodeStore, RandomPolicy
from envs.curriculum import StartCurriculum
from envs.make import PARKING_NAMES, reward_threshold
from experiments import config as config_lib
from experiments import distributed
from experiments.board import add_gif, write_hparams
from experiments.checkpoint import save_checkpoint
from experiments.collection import collect_into, open_store
from experiments.config import Config, ConfigError
from experiments.evolution import (
    DreamScorer,
    Evolution,
    choose_controller,
    eval_envs,
    save_controller,
    score_in_env,
    success_text,
)
from experiments.features import (
    encoder_fingerprint,
    fill_latent_cache,
    load_encoder_weights,
    load_pretrained_encoder,
    standardize_features,
)
from experiments.imagination import ImaginationTraining, build_learner, dream_return
from experiments.inputs import env_spec
from experiments.load import build_controller, dream_settings, encode_start_pool
from experiments.pictures import save_mask_picture, write_learning_curve
from experiments.planning import planning_agent
from experiments.pretraining import Pretrainer, print_probe
from experiments.pretraining import build_model as build_ijepa
from experiments.progress import Progress
from experiments.rundir import GracefulStop, Interrupted, Run, RunError, RunFailure, execute, path_in_run, start_run
from experiments.runtime import prepare_runtime, rng_state, set_rng_state, step_seed
from experiments.training import WorldModelTrainer, build_decoder, build_model, print_model_metrics, read_resume_state
from experiments.video import VIDEO_FPS, recorded_clip, write_mp4
from experiments.windows import EpisodeSplit, StoreWindows, split_episodes
from worldmodel.dream.rollout import DreamState
from worldmodel.dynamics.decoder import Decoder
from worldmodel.dynamics.world_model import WorldModel
from worldmodel.perception.data import TensorImageDataset

STREAM_ITERATION = 11  # seeds of iterations >= 1 (see `iteration_seed`)
STREAM_PERCEPTION = 12  # the initial weights of the I-JEPA model the perception phase trains
CURVE_PATH = "learning_curve.png"
PERCEPTION_DIR = "perception"  # the perception phase's `wm pretrain` run, inside the cycle's run


def iteration_seed(seed: int, iteration: int) -> int:
    """The seed of an iteration's collection, dream starts, search and evaluation: the run's own seed in iteration 0
    (which is then `wm train` + `wm evolve`), one drawn from (seed, iteration) after it."""
    return seed if iteration == 0 else step_seed(seed, iteration, STREAM_ITERATION) % 2**31


class CycleWindows(StoreWindows):
    """Training windows from iteration 0's training episodes and from every episode collected after iteration 0;
    held-out windows from iteration 0's held-out episodes, which no training window ever touches.

    In the store's concatenation of its first `episodes` episodes, [0, train_steps) trains, [train_steps,
    total_steps) is held out (the split of iteration 0, see `EpisodeSplit`) and [total_steps, end) trains again.
    """

    def __init__(self, store: EpisodeStore, split: EpisodeSplit, episodes: int, latent_key: str | None = None):
        super().__init__(store, split, latent_key)
        self.end = int(store.episode_steps[:episodes].sum())

    def train_starts(self, batch_size: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """Starts (B,) of `batch_size` windows of `length` steps, uniformly over the starts in both training ranges."""
        later = self.end - self.split.total_steps - length + 1  # window starts among the later episodes
        if later < 1:  # iteration 0 (or too little data since): the draw of `StoreWindows` itself
            return super().train_starts(batch_size, length, rng)
        first = max(self.split.train_steps - length + 1, 0)  # window starts among iteration 0's training episodes
        starts = rng.integers(0, first + later, size=batch_size)  # one draw: (B,)
        return np.where(starts < first, starts, starts - first + self.split.total_steps)  # skip the held-out range


# ------------------------------------------------------------------------------------------------------
# The loop


class Cycle:
    """The cycle's state and its phases (`phases`), over one run directory; every phase boundary is a checkpoint.

    Parts are built by `cycle` and injected: the world model (and decoder) it trains throughout, the episode store,
    the run it logs to.
    """

    def __init__(
        self,
        run: Run,
        spec: EnvSpec,
        store: EpisodeStore,
        model: WorldModel,
        decoder: Decoder | None,
        device: torch.device,
        precision: str,
        latent_key: str | None,
        encoder_path: str | None,
    ):
        self.run, self.cfg, self.spec, self.store = run, run.cfg, spec, store
        self.model, self.decoder, self.device, self.precision = model, decoder, device, precision
        self.latent_key, self.encoder_path = latent_key, encoder_path  # the frozen encoder's cache key, its source
        self.agent = self.cfg.evolve.agent  # what acts: 'es', 'planner' or 'actor_critic' (see `phases`)
        self.controller = build_controller(model, spec, self.cfg.evolve)
        target = self.cfg.cycle.target_return
        self.target = target if target is not None else reward_threshold(self.cfg.env.id)  # the return that stops it
        # What a checkpoint holds:
        self.iteration, self.phase = 0, "collect"
        self.env_steps = 0  # env steps of the collected transitions (the budget)
        self.eval_env_steps = 0  # steps of the evaluation episodes (reported, not budgeted)
        # Wall seconds spent in each phase, over every session, up to the last checkpoint (a profile of the run).
        self.phase_seconds = dict.fromkeys(phases(self.cfg), 0.0)
        self.running, self.running_since = "collect", time.monotonic()  # the phase being timed
        self.episodes_at_start = 0  # episodes in the store when this iteration's collection began
        self.episodes = 0  # episodes this iteration trains and evolves on (all, once it has collected)
        self.split: EpisodeSplit | None = None  # iteration 0's training / held-out split
        self.trainer: WorldModelTrainer | None = None  # built once iteration 0 has its episodes
        self.es: CMAES | None = None  # the search, during "evolve"
        self.chosen: np.ndarray | None = None  # the controller the search chose, to evaluate
        self.best: np.ndarray | None = None  # the controller with the best real return so far
        self.best_return, self.best_iteration = -math.inf, -1
        # evolve.agent=actor_critic: the learner's state (`ImaginationTraining.learner_state`) after its last training,
        # and the training under way during "evolve".
        self.learner_state: dict | None = None
        self.imagination: ImaginationTraining | None = None
        self.record: dict = {}  # this iteration's figures so far
        self.history: list[dict] = []  # one record per evaluated iteration
        self.generations_done = 0  # generations of the searches (or actor-critic steps) finished so far
        self.stopped: str | None = None  # why the cycle ended: "target", "budget" or "iterations"
        self.perception: dict | None = None  # the perception phase's figures (cycle.perception=pretrain)
        ccfg = self.cfg.cycle
        self.curriculum = (  # where the car starts (cycle.start_curriculum), widened as it parks
            StartCurriculum(threshold=ccfg.curriculum_threshold, window=ccfg.curriculum_window)
            if ccfg.start_curriculum
            else None
        )
        self.resuming = False  # the next phase continues a checkpoint (and says how)

    # -- checkpoints -----------------------------------------------------------------------------------
    def cycle_step(self) -> int:
        """The step of log lines and summary.json: training steps, generations and evaluations done so far."""
        trained = self.trainer.step if self.trainer is not None else 0
        return trained + self.generations_done + self.searched() + len(self.history)

    def searched(self) -> int:
        """Generations (or actor-critic steps) of the search under way, if one is."""
        if self.phase != "evolve":
            return 0
        if self.es is not None:
            return self.es.generation
        return 0 if self.imagination is None else self.imagination.learner.steps - self.generations_done

    def state_dict(self) -> dict:
        return {
            "command": "cycle",
            "config": config_lib.to_dict(self.cfg),
            "env_spec": self.spec.to_dict(),
            "iteration": self.iteration,
            "phase": self.phase,
            "env_steps": self.env_steps,
            "eval_env_steps": self.eval_env_steps,
            "phase_seconds": dict(self.phase_seconds),
            "episodes_at_start": self.episodes_at_start,
            "episodes": self.episodes,
            "split": None if self.split is None else asdict(self.split),
            "latent_key": self.latent_key,
            "encoder": self.encoder_path,
            # Before the trainer exists the model is as initialised (a pretrained encoder included).
            "trainer": None if self.trainer is None else self.trainer.state_dict(),
            "model": self.model.state_dict() if self.trainer is None else None,
            "es": None if self.es is None else self.es.state_dict(),
            "chosen": None if self.chosen is None else torch.as_tensor(self.chosen),
            "best": None if self.best is None else torch.as_tensor(self.best),
            "best_return": self.best_return,
            "best_iteration": self.best_iteration,
            "actor_critic": self.learner_state if self.imagination is None else self.imagination.learner_state(),
            "record": self.record,
            "history": self.history,
            "generations_done": self.generations_done,
            "stopped": self.stopped,
            "perception": self.perception,
            "curriculum": None if self.curriculum is None else self.curriculum.state_dict(),
            "rng": rng_state(),
        }

    def save(self) -> None:
        now = time.monotonic()
        self.phase_seconds[self.running] += now - self.running_since
        self.running_since = now
        save_checkpoint(self.run.checkpoint_dir / "latest.pt", self.state_dict())
        self.run.write_summary(
            step=self.cycle_step(),
            iteration=self.iteration,
            phase=self.phase,
            env_steps=self.env_steps,
            history=self.history,
            phase_seconds=rounded(self.phase_seconds),
        )

    def load_state(self, state: dict, path: Path) -> None:
        """Continue from a checkpoint that `read_resume_state` checked."""
        if "eval_env_steps" not in state:
            raise RunError(
                f"{path} is from an older wm cycle that counted evaluation steps in its budget; start a new run"
            )
        self.iteration, self.phase, self.env_steps = state["iteration"], state["phase"], state["env_steps"]
        self.eval_env_steps = state["eval_env_steps"]
        self.phase_seconds.update(state.get("phase_seconds", {}))  # absent in checkpoints from before the profile
        self.episodes_at_start, self.episodes = state["episodes_at_start"], state["episodes"]
        self.split = None if state["split"] is None else EpisodeSplit(**state["split"])
        if state["trainer"] is not None:
            self.trainer = self.build_trainer()
            self.trainer.load_state(state["trainer"], path)
        else:
            self.model.load_state_dict(state["model"])
        self.es = None if state["es"] is None else CMAES.from_state_dict(state["es"])
        self.chosen = None if state["chosen"] is None else state["chosen"].numpy()
        self.best = None if state["best"] is None else state["best"].numpy()
        self.best_return, self.best_iteration = state["best_return"], state["best_iteration"]
        self.learner_state = state.get("actor_critic")  # absent in checkpoints from before other agents cycled
        self.record, self.history = state["record"], state["history"]
        self.generations_done, self.stopped = state["generations_done"], state["stopped"]
        self.perception = state.get("perception")  # absent in checkpoints from before the perception phase
        if self.curriculum is not None:
            self.curriculum.load_state_dict(state["curriculum"])
        set_rng_state(state["rng"])
        self.resuming = True
        print(f"resumed from {path} in iteration {self.iteration}, phase {self.phase}", file=sys.stderr)
        # Open tensorboard now, purging what was logged after this checkpoint: the trainer and the search would
        # otherwise open it at a step of their own count.
        self.run.start_at(self.cycle_step() + 1)
        _ = self.run.tb

    def build_trainer(self) -> WorldModelTrainer:
        """The world model's trainer (its data is set per iteration, see `windows`)."""
        provenance = {
            "episodes": path_in_run(self.store.path, self.run.path),
            "num_episodes": self.split.num_episodes,
            "encoder": self.encoder_path,
            "latent_key": self.latent_key,
            "collected": None,
        }
        return WorldModelTrainer(
            self.model,
            self.decoder,
            self.windows(),
            self.cfg,
            self.run,
            self.spec,
            self.device,
            self.precision,
            provenance,
            checkpointer=self.save,
        )

    def windows(self) -> CycleWindows:
        """This iteration's window source: every episode so far, but iteration 0's held-out ones."""
        if len(self.store) < self.episodes:
            raise RunFailure(f"{self.store.path} holds {len(self.store)} episodes, fewer than the {self.episodes} used")
        return CycleWindows(self.store, self.split, self.episodes, self.latent_key)

    # -- the loop --------------------------------------------------------------------------------------
    def run_all(self, stop: GracefulStop) -> dict:
        """Run (or continue) iterations until a stopping rule holds; the figures of summary.json."""
        ccfg = self.cfg.cycle
        bar = Progress(ccfg.iterations, "cycle", initial=len(self.history), unit="iter", enabled=self.cfg.run.progress)
        steps = {
            "collect": self.collect,
            "pretrain": self.pretrain,
            "train": self.train,
            "evolve": self.imagine if self.agent == "actor_critic" else self.evolve,
            "evaluate": self.evaluate,
        }
        while self.stopped is None:
            phase = self.phase
            self.running, self.running_since = phase, time.monotonic()
            steps[phase](stop)
            self.resuming = False
            if phase == "evaluate":
                last = self.history[-1]
                bar.update(1, real=last["eval_return_mean"], env_steps=self.env_steps)
            if stop.requested and self.stopped is None:  # each phase ends in a checkpoint
                bar.close()
                raise Interrupted
        bar.close()
        return self.results()

    def announce(self, text: str) -> None:
        print(f"iteration {self.iteration}: {text}", file=sys.stderr)

    def collect(self, stop: GracefulStop) -> None:
        """Collect this iteration's episodes into the store in one add (random actions in iteration 0, else the
        best controller so far, with exploration noise), or accept those a killed run had already added."""
        cfg, k = self.cfg, self.iteration
        seed = iteration_seed(cfg.run.seed, k)
        num_envs = cfg.world_model.num_envs
        steps = cfg.world_model.collect_steps if k == 0 else cfg.cycle.collect_steps
        held = len(self.store)
        if held < self.episodes_at_start:
            raise RunFailure(
                f"{self.store.path} holds {held} episodes, fewer than the {self.episodes_at_start} it held before"
            )
        if held == self.episodes_at_start:
            if self.resuming:
                print(
                    f"iteration {k}: the store holds no episode of this iteration's collection: collecting it "
                    f"again (the same seeds, the same episodes)",
                    file=sys.stderr,
                )
            policy = self.random_policy if k == 0 else self.behaviour_policy
            self.announce(f"collect {steps} steps with {self.behaviour()}")
            collect_into(
                self.store,
                cfg.env,
                policy,
                steps,
                num_envs,
                seed,
                stop,
                cfg.run.progress,
                stopped="stopped while collecting: nothing of this collection was stored; --resume collects it again",
                all_at_once=True,
                start=self.start(),
            )
        new = self.store.episode_steps[self.episodes_at_start :]  # (E_new,) steps of each new episode
        transitions = int(new.sum() - len(new))
        if held > self.episodes_at_start:
            if not steps <= transitions < steps + num_envs:
                raise RunFailure(
                    f"{self.store.path} holds {len(new)} episodes more than at the start of iteration {k}, with "
                    f"{transitions} transitions; its collection of {steps} steps in {num_envs} envs would hold "
                    f"{steps} to {steps + num_envs - 1}: the store was changed by something else"
                )
            print(
                f"iteration {k}: the store already holds this iteration's collection ({len(new)} episodes, "
                f"{transitions} steps; stored before the run stopped): kept, not collected again",
                file=sys.stderr,
            )
        self.env_steps += transitions * cfg.env.action_repeat
        self.episodes = len(self.store)
        self.record = {"iteration": k, "agent": self.agent, "collect_steps": transitions, "collect_episodes": len(new)}
        self.phase = "train"
        if k == 0:
            self.split = split_episodes(self.store.episode_steps, cfg.world_model.eval_fraction)
            if cfg.cycle.perception == "pretrain":
                self.phase = "pretrain"  # the trainer is built once the encoder it freezes is
            else:
                self.trainer = self.build_trainer()
        self.save()

    def random_policy(self, num_envs: int, seed: int) -> RandomPolicy:
        """Iteration 0's collection policy, each action held for world_model.collect_hold steps (`collect_into`
        builds it for its share of the sub-envs)."""
        return RandomPolicy(self.spec, seed=seed, hold=self.cfg.world_model.collect_hold)

    def behaviour_policy(self, num_envs: int, seed: int) -> LatentAgent | ModelAgent:
        """Later iterations' collection policy (see `acting`): the best controller so far, the planner or the actor,
        with cycle.exploration noise."""
        return self.acting(num_envs, seed, self.best, self.cfg.cycle.exploration)

    def behaviour(self) -> str:
        """What this iteration's collection acts with, for its announcement."""
        exploration = self.cfg.cycle.exploration
        if self.iteration == 0:
            return "random actions"
        if self.agent == "planner":
            return f"the planner on the current world model and exploration {exploration}"
        iteration = self.best_iteration if self.agent == "es" else self.iteration - 1
        real = self.history[iteration]["eval_return_mean"]
        who = "the best controller" if self.agent == "es" else "the actor"
        return f"{who} (iteration {iteration}, real return {real:.1f}) and exploration {exploration}"

    def acting(
        self, num_envs: int, seed: int, parameters: np.ndarray | None, exploration: float = 0.0
    ) -> LatentAgent | ModelAgent:
        """The agent acting in `num_envs` real sub-envs through the current world model, its randomness seeded by
        `seed`: the controller `parameters` (n,) (es); the planner, searching afresh at every step; or the actor of the
        last imagination (actor_critic: the latest, as Dreamer collects, not the best scored). `exploration` is a
        collection's noise (`agents.agent.explore`), the same for every agent."""
        if self.agent == "planner":
            return planning_agent(self.model, self.spec, self.cfg.planner, seed, num_envs, exploration)
        if self.agent == "actor_critic":
            return ActorCriticAgent(self.trained_learner(), num_envs, exploration, seed)
        return LatentAgent(self.model, self.controller, parameters, num_envs, exploration, seed)

    def trained_learner(self) -> ActorCritic:
        """The actor-critic as its last imagination left it (evolve.agent=actor_critic)."""
        learner = build_learner(self.model, self.spec, self.cfg, self.cfg.run.seed, self.device)
        learner.load_state_dict(self.learner_state["actor_critic"])
        return learner

    def pretrain(self, stop: GracefulStop) -> None:
        """Iteration 0 with cycle.perception=pretrain: I-JEPA (pretrain.*) on every frame of iteration 0's training
        episodes, a `wm pretrain` run in <run>/perception that continues from its own checkpoint after a stop; its EMA
        target encoder becomes the world model's frozen encoder, and the latent cache is keyed by it."""
        cfg, path = self.cfg, self.run.path / PERCEPTION_DIR
        if self.spec.obs_shape[-1] != 3:
            raise RunFailure(f"cycle.perception=pretrain pretrains on RGB frames; this env's are {self.spec.obs_shape}")
        episodes = self.split.first_held_out
        frames = episode_frames(self.store, range(episodes))
        resumed = any((path / "checkpoints" / name).exists() for name in ("latest.pt", "previous.pt"))
        run = Run(path, "pretrain", cfg, resumed=resumed)
        saved = rng_state()  # the phase leaves the cycle's random streams where it found them
        try:
            torch.manual_seed(step_seed(cfg.run.seed, 0, STREAM_PERCEPTION))  # the I-JEPA model's initial weights
            model = build_ijepa(cfg.pretrain).to(self.device)
            trainer = Pretrainer(model, frames, cfg, run, self.device, self.precision)
            if resumed:
                trainer.resume()
            elif run.writes:
                save_mask_picture(path / "masks.png", frames, trainer.masks, cfg.pretrain, cfg.run.seed)
            run.write_summary(
                device=str(self.device),
                precision=self.precision,
                dataset={"source": self.data_summary()["episodes"], "episodes": episodes, "images": len(frames)},
            )
            self.announce(
                f"pretrain the encoder {cfg.pretrain.optim.steps} steps on the {len(frames)} frames of {episodes} "
                f"training episodes ({path})"
            )
            results = trainer.train(stop)
            run.write_summary(status="done", **results)
        except Interrupted:
            run.write_summary(status="interrupted")
            set_rng_state(saved)
            self.save()  # the phase's time so far; its progress is in <run>/perception's checkpoint
            raise
        finally:
            run.close()
            set_rng_state(saved)
        print_probe(results["probe"])
        checkpoint = path / "checkpoints" / "latest.pt"
        load_pretrained_encoder(self.model, trainer.model.target_encoder.state_dict(), str(checkpoint))
        self.encoder_path = path_in_run(checkpoint, self.run.path)
        self.latent_key = encoder_fingerprint(self.model) if cfg.world_model.freeze_encoder else None
        self.perception = {
            "encoder": self.encoder_path,
            "steps": results["step"],
            "episodes": episodes,
            "frames": len(frames),
            **results["results"],
            "probe": results["probe"],
        }
        self.run.write_summary(data=self.data_summary(), perception=self.perception)
        self.trainer = self.build_trainer()
        self.phase = "train"
        self.save()

    def data_summary(self) -> dict:
        """summary.json's `data`: the episode store, the encoder's source and its latent cache."""
        episodes = path_in_run(self.store.path, self.run.path)
        return {"episodes": episodes, "encoder": self.encoder_path, "latent_key": self.latent_key}

    def train(self, stop: GracefulStop) -> None:
        """Iteration 0: train the world model as `wm train` does. Later: fine-tune the same model and optimizer
        for cycle.train_steps steps at the constant rate cycle.lr, on every training episode so far."""
        cfg, k, trainer = self.cfg, self.iteration, self.trainer
        wcfg = cfg.world_model
        trainer.data = self.windows()
        trainer.log_offset = self.generations_done + len(self.history)
        if self.latent_key is not None:  # the new episodes' frames, encoded once
            fill_latent_cache(self.model, self.store, self.latent_key, self.device, stop, cfg.run.progress)
        if not self.model.feature_statistics_set:
            if k > 0:  # the controller's input space must not move under it
                raise RunFailure(f"iteration {k}: the world model lost its feature standardisation")
            standardize_features(self.model, trainer.data, cfg, self.device, self.precision)
            self.save()  # with the statistics, so a resume from here uses the same ones
        if k == 0:
            self.announce(f"train the world model {wcfg.steps} steps")
            results = trainer.train(stop)
        else:
            begin = wcfg.steps + (k - 1) * cfg.cycle.train_steps
            held_out = self.split.num_episodes - self.split.first_held_out
            self.announce(
                f"fine-tune the world model {cfg.cycle.train_steps} steps on {self.episodes - held_out} "
                f"episodes ({held_out} more held out)"
            )
            results = trainer.train(
                stop, until=begin + cfg.cycle.train_steps, constant_lr=cfg.cycle.lr, begin=begin, lr_key="cycle.lr"
            )
        print_model_metrics(results["model"])
        self.record.update(train_step=trainer.step, model=results["model"])
        self.phase = "evolve"
        if self.agent == "planner":  # nothing to search before acting, and no dream return: the real one alone
            self.record["dream_return"] = None
            self.phase = "evaluate"
        self.save()

    def evolve(self, stop: GracefulStop) -> None:
        """Evolve a controller in the dream (iteration 0 from the controller's cold start, later warm-started from
        the best controller), its starts drawn from every episode so far; choose the one to evaluate."""
        cfg, k = self.cfg, self.iteration
        ecfg, seed = cfg.evolve, iteration_seed(cfg.run.seed, k)
        generations = ecfg.generations if k == 0 else cfg.cycle.generations
        pool = self.start_pool(seed, stop)
        dream = DreamScorer(self.model, self.controller, pool, dream_settings(cfg.dream), seed)
        warm = k > 0
        if self.es is None:
            if warm:
                x0, sigma = self.best, cfg.cycle.sigma
            else:
                x0, sigma = self.controller.initial_parameters(seed), ecfg.sigma
            self.es = CMAES(
                x0,
                sigma,
                ecfg.population,
                seed,
                diagonal=ecfg.diagonal,
                max_nonfinite_fraction=ecfg.max_nonfinite_fraction,
            )
        start = f"the best controller (iteration {self.best_iteration})" if warm else "the controller's cold start"
        self.announce(f"evolve {generations} generations from {start} in {len(pool.latent)} dream start states")
        offset = self.trainer.step + self.generations_done + len(self.history)
        evolution = Evolution(
            self.es, dream, self.controller, cfg, self.run, "dream", {}, checkpointer=self.save, log_offset=offset
        )
        evolution.evolve(stop, generations)
        self.chosen, figures = choose_controller(self.es, dream, ecfg.final_episodes, warm=warm)
        self.record.update(figures, start_states=len(pool.latent))
        self.generations_done += generations
        self.es = None
        self.phase = "evaluate"
        self.save()

    def start_pool(self, seed: int, stop: GracefulStop) -> DreamState:
        """The dream's start states, drawn (by `seed`) from every episode so far: they include the states the agent
        visits."""
        if self.latent_key is not None:
            fill_latent_cache(self.model, self.store, self.latent_key, self.device, stop, False)
        cfg = self.cfg.dream
        return encode_start_pool(self.model, self.store, self.latent_key, cfg, self.device, seed, self.episodes)

    def imagine(self, stop: GracefulStop) -> None:
        """evolve.agent=actor_critic: train the actor-critic actor_critic.steps steps in the current model's
        imagination, its starts drawn from every episode so far, then its dream return. Iteration 0 starts it fresh
        (as `wm evolve` does); later ones continue the last iteration's networks, optimisers, return scale and
        generator, the model having kept its features' meaning (their standardisation is fixed): the state a
        checkpoint holds, so a resumed phase takes the same path."""
        cfg, k = self.cfg, self.iteration
        seed = iteration_seed(cfg.run.seed, k)
        pool = self.start_pool(seed, stop)
        learner = build_learner(self.model, self.spec, cfg, seed, self.device)
        offset = self.trainer.step + len(self.history)
        training = ImaginationTraining(learner, pool, cfg, self.run, {}, checkpointer=self.save, log_offset=offset)
        if self.learner_state is not None:
            training.load_learner(self.learner_state, self.run.checkpoint_dir / "latest.pt")
        start = "fresh" if k == 0 else f"warm-started from iteration {k - 1}'s"
        self.announce(
            f"train the actor-critic ({start}) {cfg.actor_critic.steps} steps in the dream of {len(pool.latent)} "
            "start states"
        )
        self.imagination = training
        training.train(stop, until=self.generations_done + cfg.actor_critic.steps)
        dream = dream_return(learner, pool, dream_settings(cfg.dream), seed, cfg.evolve.final_episodes)
        self.learner_state, self.imagination = training.learner_state(), None
        self.record.update(dream_return=dream, imagination_steps=learner.steps, start_states=len(pool.latent))
        self.generations_done = learner.steps
        self.phase = "evaluate"
        self.save()

    def real_envs(self, seed: int):
        """evolve.eval_envs real envs for scoring controllers, seeded by `seed`, at the curriculum's start."""
        envs = eval_envs(self.cfg, seed)
        if self.curriculum is not None:
            envs.call("set_start", **self.start())
        return envs

    def start(self) -> dict | None:
        """The curriculum's start distribution as the Parking envs' `set_start` arguments; None without one."""
        return None if self.curriculum is None else self.curriculum.stage.env_kwargs()

    def evaluate(self, stop: GracefulStop) -> None:
        """Score this iteration's agent in the real env, keep it if it is the best so far, log the iteration, draw
        the learning curve and a video, and decide whether to go on."""
        cfg, k = self.cfg, self.iteration
        real, recording = self.score(iteration_seed(cfg.run.seed, k))
        self.eval_env_steps += real["eval_env_steps"]
        improved = improves(self.chosen, self.best, real["eval_return_mean"], self.best_return)
        dream = self.record["dream_return"]
        record = {
            **self.record,
            **real,
            "dream_real_gap": None if dream is None else dream - real["eval_return_mean"],
            "env_steps": self.env_steps,
            "eval_env_steps_total": self.eval_env_steps,
            "best": improved,
        }
        if self.curriculum is not None:  # the stage it was evaluated on; the next iteration's may be wider
            record["start_stage"] = self.curriculum.index
            self.widen_start(real.get("eval_success_rate", 0.0))
        if recording is not None:
            record["video"] = self.write_video(recording)
        if improved:
            self.best, self.best_return, self.best_iteration = self.chosen, real["eval_return_mean"], k
            if self.agent == "es":  # the others leave no controller to replay
                self.save_best(record)
        self.history.append(record)
        # tensorboard's axis: the real env steps collected, the x of a sample-efficiency curve, comparable across runs
        self.run.log(self.cycle_step(), iteration_metrics(record, self.best_return), tb_step=self.env_steps)
        if self.run.writes:  # rank 0 alone under torchrun
            write_learning_curve(self.run.path / CURVE_PATH, self.history, cfg.env.id, self.target)
        dream = "" if record["dream_return"] is None else f" (dream {record['dream_return']:.1f})"
        self.announce(
            f"real return {record['eval_return_mean']:.1f} ± {record['eval_return_std']:.1f}{success_text(record)}"
            f"{dream}; {self.env_steps} env steps collected so far; best {self.best_return:.1f} (iteration "
            f"{self.best_iteration})"
        )
        self.stopped = self.stop_reason()
        self.iteration += 1
        self.phase = "collect"
        self.episodes_at_start = len(self.store)
        self.chosen, self.record = None, {}
        self.save()

    def score(self, seed: int) -> tuple[dict, Recording | None]:
        """The agent of this iteration (the chosen controller, the planner or the actor) in evolve.eval_episodes real
        episodes seeded by `seed`, without exploration: `score_in_env`'s figures with the milliseconds a decision took,
        and the recording of the first episode where videos are made."""
        ecfg = self.cfg.evolve
        envs = self.real_envs(seed)
        try:
            agent = self.acting(ecfg.eval_envs, seed, self.chosen)
            recording = agent.record(self.cfg.world_model.video_steps) if self.makes_videos else None
            parameters = self.chosen if self.agent == "es" else np.zeros(0)  # the others act without parameters
            real = score_in_env(envs, agent, parameters, ecfg.eval_episodes, seed, self.cfg.run.progress)
        finally:
            envs.close()
        return {**real, "decision_ms": decision_ms(agent)}, recording

    def widen_start(self, success_rate: float) -> None:
        """Feed an evaluation's success rate to the start curriculum, and say so when its start widens."""
        if not self.curriculum.update(success_rate):
            return
        stage = self.curriculum.stage
        where = "anywhere in the lot"
        if stage.distance is not None:
            where = "{:.1f} to {:.1f} m away".format(*stage.distance)
        self.announce(
            f"the start widens to stage {self.curriculum.index}: {where}, the nose within "
            f"{math.degrees(stage.heading_spread):.0f} degrees of the space"
        )

    def save_best(self, record: dict) -> None:
        """checkpoints/best.pt: the best controller so far with this iteration's world model, for `wm eval --run`."""
        world_model = {
            "model": self.model.state_dict(),
            "env_spec": self.spec.to_dict(),
            "decoder": None if self.decoder is None else self.decoder.state_dict(),
        }
        save_controller(
            self.run.checkpoint_dir / "best.pt",
            "cycle",
            self.controller,
            self.best,
            self.cfg,
            {"iteration": self.iteration},
            record,
            world_model,
        )

    @property
    def makes_videos(self) -> bool:
        """Videos need image observations and a decoder (world_model.decoder_width > 0, video_steps > 0)."""
        return self.decoder is not None and self.cfg.world_model.video_steps > 0 and self.run.writes

    def write_video(self, recording: Recording) -> str:
        """videos/iteration-KK.mp4 (and tensorboard): the first evaluation episode, the controller in the real env
        beside the model's open-loop dream of it under the same actions."""
        path = f"videos/iteration-{self.iteration:02d}.mp4"
        frames = recorded_clip(self.model, self.decoder, recording, self.cfg.world_model.video_context)
        write_mp4(self.run.path / path, frames, fps=VIDEO_FPS)
        add_gif(self.run.tb, "video/real_vs_dream", frames, self.cycle_step(), VIDEO_FPS)
        return path

    def stop_reason(self) -> str | None:
        """Why the cycle ends after the iteration just evaluated, or None to go on."""
        ccfg, last = self.cfg.cycle, self.history[-1]
        last_stage = None if self.curriculum is None else len(self.curriculum.stages) - 1
        if reaches_target(last, self.target, last_stage):
            return "target"
        if len(self.history) >= ccfg.iterations:
            return "iterations"
        # The next iteration's collection, which may end up to num_envs - 1 steps late.
        planned = (ccfg.collect_steps + self.cfg.world_model.num_envs - 1) * self.cfg.env.action_repeat
        if self.env_steps + planned > ccfg.max_env_steps:
            return "budget"
        return None

    def results(self) -> dict:
        """summary.json's figures of the finished cycle."""
        last = self.history[-1]
        return {
            "agent": self.agent,
            "stopped": self.stopped,
            "target_return": self.target,
            "iterations": len(self.history),
            "env_steps": self.env_steps,
            "eval_env_steps_total": self.eval_env_steps,
            "eval_return_mean": last["eval_return_mean"],
            "eval_return_std": last["eval_return_std"],
            "dream_return": last["dream_return"],
            "decision_ms": last["decision_ms"],
            **({"eval_success_rate": last["eval_success_rate"]} if "eval_success_rate" in last else {}),
            "best_eval_return": self.best_return,
            "best_iteration": self.best_iteration,
            "history": self.history,
            "phase_seconds": rounded(self.phase_seconds),
            **({"perception": self.perception} if self.perception is not None else {}),
            "model": last["model"],
            "learning_curve": CURVE_PATH,
            "phase": "done",
            "step": self.cycle_step(),
        }


PHASES = ("collect", "train", "evolve", "evaluate")
"""An iteration's phases; train includes filling the latent cache, evaluate the video."""


def phases(cfg: Config) -> tuple[str, ...]:
    """The phases a run goes through: PHASES, and pretrain (iteration 0 alone) with cycle.perception=pretrain; the
    planner has no evolve (it searches at every real step), the actor-critic's evolve trains it in imagination."""
    names = tuple(phase for phase in PHASES if phase != "evolve" or cfg.evolve.agent != "planner")
    return ("collect", "pretrain", *names[1:]) if cfg.cycle.perception == "pretrain" else names


def episode_frames(store: EpisodeStore, episodes: range) -> TensorImageDataset:
    """Every frame of these episodes of the store, uint8 (N, H, W, C), with the true states (N, S) where the env
    gives them: the perception phase's images, and the probes' labels."""
    chosen = [store.episode(index) for index in episodes]
    frames = np.concatenate([episode.obs for episode in chosen])  # E x (L+1, H, W, C) -> (N, H, W, C)
    states = None if chosen[0].state is None else np.concatenate([episode.state for episode in chosen])  # (N, S)
    groups = np.concatenate([np.full(len(episode.obs), k) for k, episode in enumerate(chosen)])  # (N,) its episode
    name = f"{store.path} episodes 0-{len(chosen) - 1}"
    return TensorImageDataset(frames, states=states, name=name, groups=groups)


def rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {phase: round(value, 2) for phase, value in seconds.items()}


def improves(chosen: np.ndarray | None, best: np.ndarray | None, real_return: float, best_return: float) -> bool:
    """Whether the chosen controller's real return makes it the best so far. The best controller chosen again (a
    warm-started search's start) keeps its first score: the best of its repeated evaluations would flatter it. An
    agent without parameters (None: the planner, the actor-critic) is a new one every iteration."""
    again = best is not None and np.array_equal(chosen, best)
    return not again and real_return > best_return


def reaches_target(record: dict, target: float | None, last_stage: int | None = None) -> bool:
    """Whether an evaluated iteration's real return reached the target; under a start curriculum (`last_stage`, the
    index of its widest stage) only an evaluation on that stage counts."""
    on_last_stage = last_stage is None or record["start_stage"] == last_stage
    return target is not None and record["eval_return_mean"] >= target and on_last_stage


def iteration_metrics(record: dict, best_return: float) -> dict[str, float]:
    """The log line of an evaluated iteration: cycle/ figures, and the real evaluation as eval/ (as `wm evolve`);
    no dream figures where the agent has no dream return."""
    extra = {}  # where the env reports success, and where the start follows a curriculum
    if "eval_success_rate" in record:
        extra = {"cycle/success_rate": record["eval_success_rate"], "eval/success_rate": record["eval_success_rate"]}
    if "start_stage" in record:
        extra["cycle/start_stage"] = record["start_stage"]
    metrics = {
        "cycle/iteration": record["iteration"],
        "cycle/env_steps": record["env_steps"],
        "cycle/return_mean": record["eval_return_mean"],
        "cycle/return_std": record["eval_return_std"],
        "cycle/length_mean": record["eval_length_mean"],
        "cycle/dream_return": record["dream_return"],
        "cycle/dream_real_gap": record["dream_real_gap"],
        "cycle/best_return": best_return,
        "cycle/collect_steps": record["collect_steps"],
        "cycle/eval_env_steps": record["eval_env_steps"],
        "eval/return_mean": record["eval_return_mean"],
        "eval/return_std": record["eval_return_std"],
        **extra,
    }
    return {key: value for key, value in metrics.items() if value is not None}  # the planner has no dream return


HPARAM_METRICS = ("cycle/return_mean", "cycle/best_return", "cycle/dream_return", "cycle/env_steps")

STOP_REASONS = {
    "target": "the real return reached the target, {target_return} (cycle.target_return, else the env's "
    "reward_threshold)",
    "budget": "the next iteration's collection would take the env steps past cycle.max_env_steps",
    "iterations": "cycle.iterations iterations done",
}


def report(run: Run, results: dict) -> None:
    """How the cycle ended and where to look, on stderr."""
    runs = run.path.parent
    best = f"  best controller  {run.checkpoint_dir / 'best.pt'}\n" if results["agent"] == "es" else ""
    print(
        f"cycle done after {results['iterations']} iterations and {results['env_steps']} env steps collected: "
        f"{STOP_REASONS[results['stopped']].format(**results)}. Last real return {results['eval_return_mean']:.1f} ± "
        f"{results['eval_return_std']:.1f}, best {results['best_eval_return']:.1f} (iteration "
        f"{results['best_iteration']}).\n"
        f"  run directory    {run.path}\n"
        f"  summary          {run.path / 'summary.json'}\n"
        f"  learning curve   {run.path / CURVE_PATH}\n"
        f"  videos           {run.path / 'videos'}\n"
        f"{best}"
        f"  tensorboard      tensorboard --logdir {runs}",
        file=sys.stderr,
    )


# ------------------------------------------------------------------------------------------------------
# A whole run


def check_budget(cfg: Config) -> None:
    """Iteration 0 alone must fit the env-step budget."""
    repeat = cfg.env.action_repeat
    if cfg.world_model.collect_steps * repeat > cfg.cycle.max_env_steps:
        times = "" if repeat == 1 else f" x env.action_repeat={repeat} env steps"
        raise ConfigError(
            f"cycle.max_env_steps: {cfg.cycle.max_env_steps} is fewer than iteration 0's random-policy collection "
            f"(world_model.collect_steps={cfg.world_model.collect_steps}{times})"
        )


def perception_checkpoint(text: str) -> Path:
    """The `wm pretrain` checkpoint that cycle.perception names: a file, or a run directory's checkpoints/latest.pt."""
    path = Path(text)
    return path / "checkpoints" / "latest.pt" if path.is_dir() else path


def check_perception(cfg: Config, encoder: str | None = None) -> None:
    """The encoder cycle.perception asks for must fit the world model's ViT (and `--encoder`, given as `encoder`,
    may not name another); refused before any work."""
    perception = cfg.cycle.perception
    if perception == "random":
        return
    if encoder is not None:
        raise ConfigError(f"--encoder {encoder} and cycle.perception={perception} both name the encoder; keep one")
    if cfg.env.obs != "pixels":
        raise ConfigError(f"cycle.perception: env.obs is {cfg.env.obs!r}, but a pretrained encoder reads pixels")
    if perception != "pretrain":
        load_encoder_weights(perception_checkpoint(perception), cfg, "target_encoder", "cycle.perception")
        return
    theirs, ours = cfg.pretrain.encoder, cfg.world_model
    if (theirs.size, theirs.image_size, theirs.patch_size) != (ours.vit_size, ours.image_size, ours.patch_size):
        raise ConfigError(
            f"cycle.perception=pretrain: pretrain.encoder (size {theirs.size}, image_size {theirs.image_size}, "
            f"patch_size {theirs.patch_size}) does not match the world model's ViT (world_model.vit_size "
            f"{ours.vit_size}, image_size {ours.image_size}, patch_size {ours.patch_size})"
        )


def check_config(cfg: Config, encoder: str | None = None) -> None:
    """What a cycle checks before its run directory exists: the budget, the encoder (`check_perception`), the agent
    (the planner and the actor-critic run as one process) and the curriculum's env."""
    check_budget(cfg)
    check_perception(cfg, encoder)
    if cfg.evolve.agent != "es" and distributed.launched():
        raise ConfigError(
            f"evolve.agent={cfg.evolve.agent}: wm cycle runs on several processes (torchrun) with evolve.agent=es "
            f"alone (each process would repeat the {cfg.evolve.agent}'s work); run it as one process"
        )
    if cfg.cycle.start_curriculum and parse_env_id(cfg.env.id.rsplit(":", 1)[-1])[1] not in PARKING_NAMES:
        raise ConfigError(
            f"cycle.start_curriculum widens a Parking env's start; env.id is {cfg.env.id!r} "
            f"(allowed: {', '.join(PARKING_NAMES)})"
        )


def cycle(
    run: Run, stop: GracefulStop, encoder: dict[str, torch.Tensor] | None = None, encoder_path: str | None = None
) -> dict:
    """Build the parts from the run's config and run (or continue) the cycle."""
    cfg = run.cfg
    device, precision = prepare_runtime(run.cfg.run, run.path)
    spec = env_spec(cfg.env)
    resume = read_resume_state(run, cfg, spec, "cycle") if run.resumed else None
    # The order of `wm train` (model, decoder, encoder, then the episodes), so iteration 0 draws what it draws.
    model = build_model(cfg.world_model, spec).to(device)
    decoder = build_decoder(cfg.world_model, spec)
    decoder = decoder.to(device) if decoder is not None else None
    if resume is not None:
        latent_key, encoder_path = resume[0]["latent_key"], resume[0]["encoder"]
    else:
        if cfg.cycle.perception not in ("random", "pretrain"):  # an earlier `wm pretrain`'s EMA target encoder
            encoder_path = str(perception_checkpoint(cfg.cycle.perception))
            encoder = load_encoder_weights(Path(encoder_path), cfg, "target_encoder", "cycle.perception")
        if encoder is not None:
            load_pretrained_encoder(model, encoder, str(encoder_path))
            encoder_path = path_in_run(encoder_path, run.path)  # as `wm train` records it
        # With cycle.perception=pretrain the encoder (and so its cache) is known once the perception phase ends.
        frozen = cfg.world_model.freeze_encoder and cfg.cycle.perception != "pretrain"
        latent_key = encoder_fingerprint(model) if frozen else None
    store = open_store(run.path / "episodes", spec)
    loop = Cycle(run, spec, store, model, decoder, device, precision, latent_key, encoder_path)
    run.write_summary(device=str(device), precision=precision, env=spec.to_dict(), data=loop.data_summary())
    if resume is not None:
        loop.load_state(*resume)
    else:
        write_hparams(run.tb, config_lib.to_dict(cfg), metrics=list(HPARAM_METRICS))
        loop.save()  # iteration 0 before its collection: a resume starts here
    results = loop.run_all(stop)
    report(run, results)
    return results


def run_cycle(cfg: Config, path: str | Path, encoder: str | Path | None = None) -> dict:
    """`wm cycle --run-dir PATH` from Python: run the cycle under `cfg` (`experiments.config.load_config` makes one
    from presets and overrides) into the new run directory `path`, and return its summary.json.

    Its "status" says how the cycle ended: "done"; "interrupted" (Ctrl-C or SIGTERM: `wm cycle --resume --run-dir
    PATH` continues it); "failed", with "error". `encoder` is a `wm pretrain` checkpoint to start the encoder from.
    What cannot run (a config, an encoder or an env that does not serve, a directory that holds a run) raises a
    ConfigError, CheckpointError, InputError or RunError before the directory is made.
    """
    check_config(cfg, None if encoder is None else str(encoder))
    weights = None if encoder is None else load_encoder_weights(Path(encoder), cfg)
    run = start_run(Path(path), "cycle", cfg)
    execute(run, functools.partial(cycle, encoder=weights, encoder_path=None if encoder is None else str(encoder)))
    return dict(run.summary)
