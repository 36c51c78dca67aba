"""Loading what runs trained, from their directories and checkpoints: the Python API (docs/api.md), and what
`wm evolve`, `wm eval`, `wm video` and `wm export` load with.

    load_encoder(path) -> Encoder                  a `wm pretrain` encoder (or a world model's): `embed(images)`
    load_world_model(path) -> LoadedWorldModel     a `wm train` or `wm cycle` world model, frozen, with its episodes
    dream_env(path, num_envs) -> DreamVectorEnv    that model's dream as a gymnasium vector env
    load_policy(path) -> LatentAgent               a run's controller acting through its world model in real envs
    load_player(path) -> Player                    all of a run's parts (config, model, decoder, controller)

A path is a run directory (its checkpoints/latest.pt; a controller's checkpoints/best.pt) or a checkpoint file. What
cannot be loaded raises a CheckpointError or RunError of one line naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from gymnasium import spaces

from agents.agent import LatentAgent
from agents.controllers import Controller
from envs import EnvSpec, EpisodeStore, Windows
from envs.atomic import sha256_file
from experiments import config as config_lib
from experiments.checkpoint import CheckpointError, read_checkpoint
from experiments.collection import recorded_store
from experiments.config import WORLD_MODEL_KEYWORDS, Config
from experiments.inputs import env_spec
from experiments.rundir import RunError, RunFailure
from experiments.runtime import step_rng
from experiments.training import build_decoder, build_model
from worldmodel.dream.gym_env import DreamVectorEnv
from worldmodel.dream.rollout import DreamSettings, DreamState, dream_starts
from worldmodel.dynamics.decoder import Decoder
from worldmodel.dynamics.world_model import WorldModel, batch_from_windows
from worldmodel.perception import Encoder, VisionTransformer

# The start pool's streams of randomness (see runtime.step_seed), two of `wm evolve`'s (experiments/evolution.py).
STREAM_POOL, STREAM_RESET_POOL = 1, 8
POOL_BATCH = 512  # start windows encoded per call
PLAYABLE = ("train", "evolve", "cycle")  # commands whose runs hold a world model


def run_checkpoint(path: str | os.PathLike) -> Path:
    """A run directory's checkpoints/latest.pt, or the checkpoint file `path` itself (in its run's checkpoints/, where
    the paths the run recorded relative to itself are found)."""
    path = Path(path)
    return path / "checkpoints" / "latest.pt" if path.is_dir() else path


# ------------------------------------------------------------------------------------------------------
# The encoder


PRETRAINED_ENCODERS = {"target": "target_encoder.", "context": "encoder."}
"""The two encoders of a `wm pretrain` checkpoint, by the prefix of their weights: the EMA target and the online
context encoder."""


def load_encoder(path: str | os.PathLike, device: torch.device | str = "cpu", which: str = "target") -> Encoder:
    """The image encoder of a run, frozen, for `Encoder.embed(images)`: uint8 (B, H, W, C) -> (B, F).

    From a `wm pretrain` run: its EMA target encoder (the one its probes scored), or with `which="context"` its online
    context encoder, mean-pooled. From a `wm train` or `wm cycle` run: its world model's ViT with its input blur and
    pooling; `embed` then gives the features `WorldModel.encode_features` gives (before the model's own
    standardisation).
    """
    checkpoint = run_checkpoint(path)
    state = read_checkpoint(checkpoint)
    command = state.get("command")
    if command == "pretrain":
        if which not in PRETRAINED_ENCODERS:
            raise ValueError(f"which must be one of {tuple(PRETRAINED_ENCODERS)}, got {which!r}")
        shape = config_lib.from_dict(state["config"]).pretrain.encoder
        prefix = PRETRAINED_ENCODERS[which]
        weights = {key.removeprefix(prefix): value for key, value in state["model"].items() if key.startswith(prefix)}
        channels = weights["patch_embed.weight"].shape[1]  # (width, C, patch, patch)
        backbone = VisionTransformer(shape.image_size, shape.patch_size, channels, shape.size)
        backbone.load_state_dict(weights)
        return Encoder(backbone, shape.image_size).to(device)
    if command not in ("train", "cycle"):
        raise CheckpointError(
            f"{checkpoint} is a checkpoint of '{command}'; an encoder is in a checkpoint of "
            "'pretrain', 'train' or 'cycle'"
        )
    model = load_world_model(checkpoint, device=device).model
    if not model.is_pixels:
        raise CheckpointError(f"{checkpoint}: its world model reads state vectors, it has no image encoder")
    return Encoder(model.backbone, model.image_size, model.pooling, model.input_blur)


# ------------------------------------------------------------------------------------------------------
# The world model, its start states and its dream


@dataclass
class LoadedWorldModel:
    """A trained world model, frozen, with what it was trained on."""

    model: WorldModel
    spec: EnvSpec
    checkpoint: Path
    store: EpisodeStore
    latent_key: str | None
    sha256: str
    """The checkpoint file's SHA-256: a resumed search must continue in the very same model."""
    config: Config
    """The config the model was trained under."""


def load_world_model(
    path: str | os.PathLike, cfg: Config | None = None, device: torch.device | str | None = None
) -> LoadedWorldModel:
    """Load the world model of a `wm train` or `wm cycle` run or checkpoint (onto `device`, default the CPU),
    refused when it does not fit the env and model shape of `cfg` (None: its own config, nothing to check)."""
    checkpoint = run_checkpoint(path)
    state = read_checkpoint(checkpoint)
    if state.get("command") == "cycle" and state.get("trainer") is not None:
        state = state["trainer"]  # a `wm cycle` run's world model, held as a train checkpoint holds it
    if state.get("command") != "train":
        raise CheckpointError(
            f"{checkpoint} is a checkpoint of '{state.get('command')}', not of 'train' or 'cycle' (a world model)"
        )
    theirs = config_lib.from_dict(state["config"])
    spec = EnvSpec.from_dict(state["env_spec"])
    if cfg is not None:
        differences = [f"env {d} (checkpoint != this config)" for d in spec.differences(env_spec(cfg.env))]
        differences += [
            f"world_model.{key}: {getattr(theirs.world_model, key)!r} in the checkpoint, "
            f"{getattr(cfg.world_model, key)!r} here"
            for key in WORLD_MODEL_KEYWORDS
            if getattr(theirs.world_model, key) != getattr(cfg.world_model, key)
        ]
        if differences:
            raise CheckpointError(
                f"the world model {checkpoint} does not fit this config (use the preset it was trained with):\n  "
                + "\n  ".join(differences)
            )
    model = build_model(theirs.world_model, spec)
    model.load_state_dict(state["model"])
    model.requires_grad_(False).eval().to(device or torch.device("cpu"))
    if not bool(model.feature_statistics_set):
        raise CheckpointError(f"the world model {checkpoint} was saved before training started (step {state['step']})")
    data = state["data"]
    store = EpisodeStore(recorded_store(data["episodes"], checkpoint.parent.parent), spec)  # <run>/checkpoints/*.pt
    return LoadedWorldModel(model, spec, checkpoint, store, data["latent_key"], sha256_file(checkpoint), theirs)


def start_pool(world: LoadedWorldModel, cfg: Config, device: torch.device) -> DreamState:
    """`encode_start_pool` over every episode of the world model's store, seeded by run.seed."""
    return encode_start_pool(world.model, world.store, world.latent_key, cfg.dream, device, cfg.run.seed)


@torch.no_grad()
def encode_start_pool(
    model: WorldModel,
    store: EpisodeStore,
    latent_key: str | None,
    cfg: config_lib.DreamConfig,
    device: torch.device,
    seed: int,
    episodes: int | None = None,
) -> DreamState:
    """Real start states from the first `episodes` episodes of `store` (default all), encoded and observed (see
    `worldmodel.dream.rollout.dream_starts`): `reset_starts` of the `start_windows` are episodes' first steps, the
    others windows of burn_in + 1 steps from anywhere (they may span episodes)."""
    length = cfg.burn_in + 1
    episode_steps = store.episode_steps[:episodes]
    steps = int(episode_steps.sum())
    if steps < length:
        raise RunFailure(f"{store.path} holds {steps} steps, fewer than one start window of {length}")
    at_reset = int(round(cfg.reset_starts * cfg.start_windows))
    # One draw, as `store.sample(..., cross_episodes=True)` makes it over the whole store.
    anywhere = step_rng(seed, 0, STREAM_POOL).integers(0, steps - length + 1, size=cfg.start_windows - at_reset)
    first_steps = np.concatenate([[0], np.cumsum(episode_steps)[:-1]])  # (episodes,) offsets of step 0
    resets = step_rng(seed, 0, STREAM_RESET_POOL).choice(first_steps, size=at_reset)  # (B_reset,)
    pools = [
        _observed_starts(model, store.windows_at(offsets, window, latent_key=latent_key), latent_key, device)
        for offsets, window in ((anywhere, length), (resets, 1))
        if len(offsets)
    ]
    pools = [pool for pool in pools if pool is not None]
    if not pools:
        raise RunFailure(f"every start window of {store.path} ends in a terminal step")
    return DreamState(torch.cat([p.hidden for p in pools]), torch.cat([p.latent for p in pools]))


def _observed_starts(
    model: WorldModel, windows: Windows, latent_key: str | None, device: torch.device
) -> DreamState | None:
    """`dream_starts` of windows, POOL_BATCH at a time; None when every window ends in a terminal step."""
    batch = batch_from_windows(windows, device, use_features=latent_key is not None)
    parts = []
    for i in range(0, len(windows.is_first), POOL_BATCH):
        rows = slice(i, i + POOL_BATCH)
        part = batch._replace(
            **{key: getattr(batch, key)[rows] for key in batch._fields if getattr(batch, key) is not None}
        )
        try:
            parts.append(dream_starts(model, part))
        except ValueError:  # every window of this part ends in a terminal step
            continue
    if not parts:
        return None
    return DreamState(torch.cat([p.hidden for p in parts]), torch.cat([p.latent for p in parts]))


def action_space(spec: EnvSpec) -> spaces.Space:
    """The env's action space, rebuilt from its spec."""
    if spec.discrete:
        return spaces.Discrete(spec.action_dim)
    return spaces.Box(np.array(spec.action_low, np.float32), np.array(spec.action_high, np.float32))


def dream_settings(cfg: config_lib.DreamConfig) -> DreamSettings:
    return DreamSettings(
        horizon=cfg.horizon,
        cont_mode=cfg.cont_mode,
        cont_threshold=cfg.cont_threshold,
        latent_noise=cfg.latent_noise,
        disagreement_penalty=cfg.disagreement_penalty,
        disagreement_limit=cfg.disagreement_limit,
    )


def dream_env(
    path: str | os.PathLike, num_envs: int = 1, seed: int | None = None, device: torch.device | str | None = None
) -> DreamVectorEnv:
    """The dream of a `wm train` or `wm cycle` run's world model as a gymnasium vector env of `num_envs` sub-envs:
    observations [z, h] (N, X) float32, the env's own action space; episodes start from the real start states
    `wm evolve` would draw (dream.*, run.seed of the model's config) and run and end as its dream's do.

    `seed` seeds the dream's generator (None: a random seed; `reset(seed=...)` reseeds).
    """
    world = load_world_model(path, device=device)
    cfg = world.config
    pool = start_pool(world, cfg, world.model.gru.weight_hh.device)
    return DreamVectorEnv(world.model, pool, dream_settings(cfg.dream), num_envs, action_space(world.spec), seed)


# ------------------------------------------------------------------------------------------------------
# The controller


def build_controller(model: WorldModel, spec: EnvSpec, cfg: config_lib.EvolveConfig) -> Controller:
    """The controller over the world model's [z, h] that acts in the env of `spec`."""
    return Controller(model.latent_dim + model.hidden_dim, action_space(spec), cfg.controller, cfg.controller_hidden)


@dataclass
class Player:
    """What a run plays with: its config, its world model (and decoder) and, once it has one, its controller."""

    path: Path
    cfg: Config
    command: str
    spec: EnvSpec
    model: WorldModel
    decoder: Decoder | None
    controller: Controller
    parameters: np.ndarray | None
    """(n,) the controller's parameters; None when the run has no controller yet."""
    source: str
    """Where the model and controller came from, for the reports."""
    iteration: int | None = None
    """A cycle's best iteration (the controller's); None for other runs."""

    def agent(self, num_envs: int = 1) -> LatentAgent:
        """The controller acting through the world model in `num_envs` real envs, without exploration."""
        return LatentAgent(self.model, self.controller, self.parameters, num_envs)


def read_run(path: Path) -> tuple[Config, str]:
    """A run directory's saved config and command, refused when it is no run or holds no world model."""
    config, summary = path / "config.yaml", path / "summary.json"
    if not config.is_file() or not summary.is_file():
        raise RunError(f"--run {path}: not a run directory (it needs config.yaml and summary.json)")
    command = json.loads(summary.read_text()).get("command")
    if command not in PLAYABLE:
        raise RunError(f"--run {path} is a '{command}' run; runs of {', '.join(PLAYABLE)} hold a world model")
    return config_lib.from_dict(yaml.safe_load(config.read_text())), command


def frozen(module: torch.nn.Module | None, state: dict | None) -> torch.nn.Module | None:
    """`module` with `state` loaded, in eval mode and without gradients (None when there is no state)."""
    if module is None or state is None:
        return None
    module.load_state_dict(state)
    return module.requires_grad_(False).eval()


def model_and_decoder(path: Path, cfg: Config) -> tuple[WorldModel, Decoder | None, EnvSpec]:
    """The world model and decoder of a `wm train` or `wm cycle` checkpoint (a run directory or a file)."""
    world = load_world_model(path, cfg)
    state = read_checkpoint(world.checkpoint)
    trainer = state["trainer"] if state.get("command") == "cycle" else state
    return world.model, frozen(build_decoder(world.config.world_model, world.spec), trainer.get("decoder")), world.spec


def summary_of(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def load_player(path: str | os.PathLike) -> Player:
    """A run's world model, decoder and controller: checkpoints/best.pt (`wm evolve`: the one it chose; `wm cycle`:
    the best real return so far, with the model of its iteration), played through the world model it was evolved in;
    a run without a controller yet gets its latest world model and `parameters` None."""
    path = Path(path)
    cfg, command = read_run(path)
    if command in ("evolve", "cycle") and cfg.evolve.agent != "es":
        raise RunError(
            f"{path}: a `wm {command}` run of evolve.agent={cfg.evolve.agent} holds no evolved controller to play (its "
            "figures are in summary.json); wm eval, wm video and wm export play the controller of an evolve.agent=es "
            "run"
        )
    best = path / "checkpoints" / "best.pt"
    if not best.is_file():
        # No controller yet: a train run, or a search or cycle interrupted before its first evaluation.
        source = run_checkpoint(path) if command != "evolve" else Path(summary_of(path)["data"]["world_model"])
        model, decoder, spec = model_and_decoder(source, cfg)
        controller = build_controller(model, spec, cfg.evolve)
        return Player(path, cfg, command, spec, model, decoder, controller, None, f"{source} (no controller)")
    state = read_checkpoint(best)
    embedded = state.get("world_model")
    if embedded is not None:  # a cycle's best controller, with the model of its iteration
        spec = EnvSpec.from_dict(embedded["env_spec"])
        model = frozen(build_model(cfg.world_model, spec), embedded["model"])
        decoder = frozen(build_decoder(cfg.world_model, spec), embedded["decoder"])
        source = f"{best} (iteration {state['data']['iteration']})"
    elif "world_model" not in state["data"]:
        raise CheckpointError(
            f"{best} names no world model and carries none (a `wm cycle` best.pt written before "
            "they carried the model of their iteration); it cannot be replayed"
        )
    else:
        model, decoder, spec = model_and_decoder(Path(state["data"]["world_model"]), cfg)
        source = f"{best} in {state['data']['world_model']}"
    controller = build_controller(model, spec, cfg.evolve)
    if controller.describe() != state["controller"]:
        raise CheckpointError(
            f"{best} holds a controller {state['controller']}, the run's config builds {controller.describe()}"
        )
    parameters = state["parameters"].numpy()
    return Player(
        path, cfg, command, spec, model, decoder, controller, parameters, source, state["data"].get("iteration")
    )


def load_policy(path: str | os.PathLike, num_envs: int = 1) -> LatentAgent:
    """The controller of a `wm evolve` or `wm cycle` run (the one `wm eval` plays) acting through its world model in
    `num_envs` real envs, without exploration: `agent(obs)` takes observations (N, *obs_shape) as the run's env gives
    them (`envs.make_env` with its config's env.*) and returns env actions, (N,) ints or (N, A) floats; call
    `agent.reset(is_first)` before a step whose observations start new episodes (it starts so)."""
    player = load_player(path)
    if player.parameters is None:
        raise RunError(
            f"{path}: no controller yet (no checkpoints/best.pt); a `wm evolve` run has one when it "
            "finishes, a `wm cycle` run after its first evaluation"
        )
    return player.agent(num_envs)
