"""What each process of the in-process gloo tests computes: real processes, a real gloo process group.

`run_processes` starts `world` processes (torch.multiprocessing, spawn), each joins a gloo group through a file
rendezvous and runs one worker function; each worker saves what it computed to `<out>/rank<r>.pt`. The same
functions run alone (no group: `distributed.active()` is False) give the single-process answer to compare with.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gymnasium import spaces

from agents.controllers import Controller
from agents.evolution import CMAES
from experiments import distributed
from experiments.config import ConfigError
from experiments.evolution import DreamScorer, Evolution
from experiments.training import decoder_step
from worldmodel.dream.rollout import DreamSettings, DreamState
from worldmodel.dynamics.decoder import Decoder
from worldmodel.dynamics.jepa import JEPAWorldModel
from worldmodel.dynamics.world_model import WorldModel, WorldModelBatch, combine_losses

B, T, OBS, ACTIONS = 6, 8, 4, 2  # a world-model batch: 6 windows of 8 steps of a 4-dim state
POPULATION, EPISODES = 5, 3  # an ES generation: 5 candidates do not split evenly over 2 processes
FRAMES = 3  # decoder frames: on 2 processes one gets 2, the other 1; on 4, one gets none


def run_processes(worker, world: int, directory: Path) -> list[dict]:
    """Run `worker(directory)` in `world` processes of one gloo group; what each saved, in rank order."""
    mp.start_processes(_join, args=(worker, world, directory), nprocs=world, start_method="spawn")
    return [torch.load(directory / f"rank{r}.pt", weights_only=True) for r in range(world)]


def loadable(value):
    """`value` with numpy arrays and scalars as tensors and floats, so it loads with `weights_only=True`."""
    if isinstance(value, dict):
        return {key: loadable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(loadable(item) for item in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _join(rank: int, worker, world: int, directory: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{directory / 'rendezvous'}", rank=rank, world_size=world)
    try:
        torch.save(loadable(worker(directory)), directory / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------------
# World model: DDP and the losses that are not plain per-sample means


def world_model(collapse_guard: str) -> WorldModel:
    torch.manual_seed(0)
    return JEPAWorldModel(
        (OBS,),
        ACTIONS,
        latent_dim=8,
        hidden_dim=16,
        mlp_dim=16,
        collapse_guard=collapse_guard,
        ensemble_size=2,
        sigreg_directions=8,
    )


def world_model_batch() -> WorldModelBatch:
    """Windows whose episode starts differ per row, so each share has its own count of valid steps."""
    g = torch.Generator().manual_seed(1)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[[0, 1, 1, 4], [0, 2, 5, 6]] = True
    cont = torch.ones(B, T)
    cont[3, 4] = 0.0
    return WorldModelBatch(
        obs=torch.randn(B, T, OBS, generator=g),
        action=torch.randn(B, T, ACTIONS, generator=g),
        reward=torch.randn(B, T, generator=g),
        cont=cont,
        is_first=is_first,
    )


def world_model_step(collapse_guard: str) -> dict:
    """Losses (averaged over processes) and gradients of one step on this process's share of the batch."""
    model = world_model(collapse_guard)
    rows = distributed.even_share(B, "batch")
    batch = WorldModelBatch(*(None if v is None else v[rows] for v in world_model_batch()))
    loss_fn = distributed.data_parallel(model, torch.device("cpu"))
    shard = distributed.Shard() if distributed.active() else None
    losses = loss_fn(batch, 3, 1, generator=torch.Generator().manual_seed(2), shard=shard)
    total = combine_losses(losses, {key: 1.0 for key in model.loss_keys})
    total.backward()
    values = distributed.average_over_processes({**losses, "total": total})
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {"losses": values, "grads": grads}


# ------------------------------------------------------------------------------------------------------
# The decoder: averaged outside DDP, shares of unequal size


def decoder_updates(directory: Path) -> dict:
    """Two decoder steps: on 3 frames (2 processes take 2 and 1) and on 1 frame (one process takes none)."""
    torch.manual_seed(3)
    model = JEPAWorldModel((OBS,), ACTIONS, latent_dim=8, hidden_dim=16, mlp_dim=16, freeze_encoder=True)
    decoder = Decoder(model.latent_dim, 8, 3, 4)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(4)
    losses = []
    for frames in (3, 1):
        features = torch.randn(frames, model.feature_dim, generator=g)  # (N, F) cached encoder features
        obs = torch.randint(0, 256, (frames, 8, 8, 3), generator=g, dtype=torch.uint8)  # (N, H, W, C)
        rows = distributed.share(frames)
        weight = (rows.stop - rows.start) * distributed.world_size() / frames
        losses.append(decoder_step(decoder, optimizer, model, obs[rows], features[rows], weight))
    return {"losses": losses, "params": {k: v.clone() for k, v in decoder.state_dict().items()}}


# ------------------------------------------------------------------------------------------------------
# Evolution: one search, the population shared out


def es_generation(directory: Path) -> dict:
    """One CMA-ES generation scored in the dream (P = 5 candidates), as `Evolution.evolve` scores it."""
    model = world_model("ema").requires_grad_(False).eval()
    controller = Controller(model.latent_dim + model.hidden_dim, spaces.Discrete(ACTIONS))
    g = torch.Generator().manual_seed(5)
    pool = DreamState(torch.randn(32, model.hidden_dim, generator=g), torch.randn(32, model.latent_dim, generator=g))
    settings = DreamSettings(horizon=10, cont_mode="sample", latent_noise=0.1)
    scorer = DreamScorer(model, controller, pool, settings, seed=7)
    es = CMAES(controller.initial_parameters(7), 0.5, POPULATION, seed=7)
    evolution = Evolution(es, scorer, controller, None, None, "dream", {})
    candidates = es.ask()
    fitness = evolution.score(candidates, key=0, episodes=EPISODES)
    es.tell(candidates, fitness)
    return {"candidates": candidates, "fitness": fitness, "figures": evolution.figures, "mean": es.mean}


# ------------------------------------------------------------------------------------------------------


def refusal(directory: Path) -> str:
    """Why a batch of 5 cannot be split across the processes (nothing: it splits across one)."""
    try:
        distributed.even_share(5, "world_model.batch_size")
    except ConfigError as error:
        return str(error)
    return ""


def every_case(directory: Path) -> dict:
    """Every case above, in one process group (starting processes takes seconds)."""
    return {
        "refusal": refusal(directory),
        "sigreg": world_model_step("sigreg"),
        "ema": world_model_step("ema"),
        "decoder": decoder_updates(directory),
        "es": es_generation(directory),
    }


def alone() -> dict:
    """Every case in this process, without a process group: what one process computes."""
    assert not distributed.active() and "RANK" not in os.environ
    return every_case(Path("."))
