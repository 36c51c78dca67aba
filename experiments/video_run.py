"""`wm video --run DIR`: a video of one real episode of a run's controller beside the world model's dream of it.

    wm video --run runs/cartpole                  # <run>/videos/controller.mp4
    wm video --run runs/cartpole --steps 200 --seed 3 --out cartpole.mp4

Works on any finished or interrupted `wm train`, `wm evolve` or `wm cycle` run (`wm eval` says which controller
and model it plays). Left: the real env; right: the model's open-loop dream under the same actions after
`--context` observed steps (world_model.video_context), decoded into frames. A run without a decoder (state
observations, or world_model.decoder_width 0) gets the real env alone, drawn with the env's own renderer. A run
without a controller yet (a train run, or one interrupted before its first evaluation) plays random actions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces

from agents.agent import LatentAgent, Recording
from envs import make_env
from experiments.evaluate import add_common_arguments, open_player, positive
from experiments.load import Player, action_space
from experiments.progress import Progress
from experiments.train import VIDEO_FPS
from experiments.video import recorded_clip, single_panel, write_mp4

DEFAULT_STEPS = 500


class RandomActions:
    """Uniformly random action vectors (one-hot for discrete actions), as `LatentAgent` would give them."""

    def __init__(self, space: spaces.Space, seed: int):
        self.space, self.rng = space, np.random.default_rng(seed)

    def vector(self) -> np.ndarray:
        if isinstance(self.space, spaces.Discrete):
            return np.eye(int(self.space.n), dtype=np.float32)[self.rng.integers(int(self.space.n))]
        return self.rng.uniform(self.space.low, self.space.high).astype(np.float32)


def play(player: Player, steps: int, seed: int, show_progress: bool) -> tuple[Recording, list[np.ndarray], float]:
    """One episode of at most `steps` steps in one real env: its recording (observations and action vectors, for
    the dream), the env's own rendered frames (for runs without a decoder) and its return."""
    cfg = player.cfg
    env, _ = make_env(cfg.env.id, obs=cfg.env.obs, size=cfg.env.size, action_repeat=cfg.env.action_repeat)
    random = RandomActions(action_space(player.spec), seed) if player.parameters is None else None
    parameters = player.controller.initial_parameters(seed) if random is not None else player.parameters
    agent = LatentAgent(player.model, player.controller, parameters, 1)
    recording = agent.record(steps + 1)
    rendered: list[np.ndarray] = []
    bar = Progress(steps, "play", unit="step", enabled=show_progress)
    total = 0.0
    try:
        obs, _ = env.reset(seed=seed)
        agent.reset(np.ones(1, dtype=bool))
        for _ in range(steps):
            action = agent(obs[None])[0]  # follows the episode through the model, recording what it sees
            if random is not None:
                vector = random.vector()
                recording.actions[-1] = vector  # the dream replays the action taken, not the controller's
                action = player.controller.env_actions(torch.as_tensor(vector)[None])[0]
            if player.decoder is None:
                rendered.append(np.asarray(env.render()))
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            bar.update(1)
            if terminated or truncated:
                break
        agent(obs[None])  # the last observation, into the recording (its action is never taken)
        if player.decoder is None:
            rendered.append(np.asarray(env.render()))
    finally:
        bar.close()
        env.close()
    return recording, rendered, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wm video", description="A video of a run's controller beside its dream.")
    parser.add_argument("--run", required=True, type=Path, help="a `wm train`, `wm evolve` or `wm cycle` run")
    parser.add_argument("--steps", type=positive, default=DEFAULT_STEPS, help=f"at most (default {DEFAULT_STEPS})")
    parser.add_argument("--context", type=positive, help="real steps observed before the dream (default: the run's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episode (default 0)")
    parser.add_argument("--out", type=Path, help="the mp4 to write (default: <run>/videos/controller.mp4)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    player = open_player(args)
    out = args.out or args.run / "videos" / ("controller.mp4" if player.parameters is not None else "random.mp4")
    who = "random actions" if player.parameters is None else "the controller"
    print(f"playing {who} of {player.source} on {player.cfg.env.id}", file=sys.stderr)
    recording, rendered, total = play(player, args.steps, args.seed, args.progress)
    if player.decoder is not None:
        context = args.context or player.cfg.world_model.video_context
        frames = recorded_clip(player.model, player.decoder, recording, context)
    else:
        frames = single_panel(np.stack(rendered))
    write_mp4(out, frames, fps=VIDEO_FPS)
    print(f"return {total:.1f} over {len(recording.obs) - 1} steps; {len(frames)} frames written to {out}",
          file=sys.stderr)  # fmt: skip
    return 0
