"""Scaling out on this machine's CPUs: pretraining and CMA-ES throughput with 1 and with 2 processes (gloo).

    python benchmarks/scale.py            # the default pretrain preset and a cartpole-shaped dream
    python benchmarks/scale.py --quick    # the debug preset at tiny sizes: a check that it runs

Prints JSON lines {"bench": "scale", "metric", "value", "unit", ...the setting}.

For each number of processes W: one process alone (this one), then 2 processes started by torch.multiprocessing that
join one gloo process group, as torchrun's processes do. Each runs what the commands run under torchrun:

    pretrain   `experiments.pretraining.train_step` through DDP (`experiments.distributed.data_parallel`) on its share
               of a global batch of --batch-size images, with the whole batch's masks (median of --steps timed steps)
    es         one CMA-ES generation of `experiments.evolution.Evolution.score` with a `DreamScorer` on an untrained
               world model: each process rolls out its share of the population in one batched dream rollout of the
               full horizon, the fitness is all-gathered (median of --generations timed generations, ask and tell
               included)

Metrics: pretrain_images_per_s and es_candidates_per_s for each W (field "processes"), and pretrain_scaling and
es_scaling, the 2-process rate over the 1-process rate. The torch threads this script starts with (all cores, or
OMP_NUM_THREADS) are shared out: each of W processes takes threads / W (at least 1), or --threads each. With
OMP_NUM_THREADS=1 every process has one thread, so the ratio is that of adding a process and a core; without it, one
process with all cores is compared with processes that split them. On a machine busy with other work the ratio says
what this machine gives now, not the code's best.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
# Run as a file, this script's folder is sys.path[0]: put the repository there instead.
if sys.path and Path(sys.path[0]).resolve() == _REPO / "benchmarks":
    sys.path[0] = str(_REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from agents.evolution import CMAES  # noqa: E402
from experiments import distributed  # noqa: E402
from experiments.config import Config, load_config  # noqa: E402
from experiments.evolution import DreamScorer, Evolution  # noqa: E402
from experiments.inputs import env_spec  # noqa: E402
from experiments.load import build_controller, dream_settings  # noqa: E402
from experiments.pretraining import apply_schedules, build_model, build_optimizer, train_step  # noqa: E402
from experiments.training import build_model as build_world_model  # noqa: E402
from worldmodel.dream.rollout import DreamState  # noqa: E402
from worldmodel.perception.masks import MultiBlockMaskSampler  # noqa: E402

POOL = 1024  # random start states of the untrained world model
CPU = torch.device("cpu")


def emit(metric: str, value: float, unit: str, **extra) -> None:
    record = {"bench": "scale", "metric": metric, "value": round(float(value), 4), "unit": unit, **extra}
    print(json.dumps(record), flush=True)


def median_seconds(step, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of step(i) over `repeats` calls after `warmup` untimed ones; every process starts each
    timed call together (a barrier), so the slowest process sets the time, as in a real job."""
    for i in range(warmup):
        step(i)
    times = []
    for i in range(warmup, warmup + repeats):
        distributed.barrier()
        start = time.perf_counter()
        step(i)
        distributed.barrier()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pretrain_seconds(cfg: Config, steps: int) -> float:
    """Median seconds of one DDP training step of `wm pretrain` on this process's share of the global batch."""
    pcfg = cfg.pretrain
    torch.manual_seed(0)
    model = build_model(pcfg)
    optimizer = build_optimizer(model)
    loss_fn = distributed.data_parallel(model, CPU)
    batch, size = pcfg.optim.batch_size, pcfg.encoder.image_size
    rows = distributed.even_share(batch, "pretrain.optim.batch_size")
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))[rows]
    sampler = MultiBlockMaskSampler(
        model.encoder.grid,
        num_targets=pcfg.mask.num_targets,
        target_scale=pcfg.mask.target_scale,
        target_aspect=pcfg.mask.target_aspect,
        context_scale=pcfg.mask.context_scale,
        min_keep=pcfg.mask.min_keep,
    )

    def step(i: int) -> None:
        masks = sampler(batch, np.random.default_rng(i))  # the whole batch's masks, as every process draws them
        masks = type(masks)(*(m[rows] for m in masks))
        scheduled = apply_schedules(optimizer, pcfg, i)
        train_step(model, optimizer, None, images, masks, scheduled["ema"], pcfg, CPU, "float32", loss_fn)

    return median_seconds(step, steps)


def es_seconds(cfg: Config, generations: int) -> float:
    """Median seconds of one CMA-ES generation scored in the dream, the population shared across the processes."""
    spec = env_spec(cfg.env)
    torch.manual_seed(0)
    model = build_world_model(cfg.world_model, spec).requires_grad_(False).eval()
    g = torch.Generator().manual_seed(1)
    pool = DreamState(
        torch.randn(POOL, model.hidden_dim, generator=g), torch.randn(POOL, model.latent_dim, generator=g)
    )
    controller = build_controller(model, spec, cfg.evolve)
    scorer = DreamScorer(model, controller, pool, dream_settings(cfg.dream), seed=0)
    es = CMAES(controller.initial_parameters(0), cfg.evolve.sigma, cfg.evolve.population, seed=0)
    evolution = Evolution(es, scorer, controller, cfg, None, "dream", {})

    def generation(i: int) -> None:
        es.step(functools.partial(evolution.score, key=i, episodes=cfg.evolve.episodes))

    return median_seconds(generation, generations)


def worker(rank: int, processes: int, threads: int, args: argparse.Namespace, directory: str) -> None:
    """One process of a W-process measurement; rank 0 writes the medians to `<directory>/w<W>.json`."""
    torch.set_num_threads(threads)
    if processes > 1:
        init = f"file://{directory}/rendezvous-{processes}"
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=processes)
    try:
        cfg = config(args)
        seconds = {"pretrain": pretrain_seconds(cfg, args.steps), "es": es_seconds(cfg, args.generations)}
        if rank == 0:
            Path(directory, f"w{processes}.json").write_text(json.dumps(seconds))
    finally:
        distributed.teardown()


def config(args: argparse.Namespace) -> Config:
    presets = [str(_REPO / "configs/debug.yaml")] if args.quick else [str(_REPO / "configs/cartpole.yaml")]
    # Every rollout runs the full horizon (as in benchmarks/dream.py): the untrained continue head would end most
    # rollouts within a few steps, leaving little work to share.
    overrides = [
        f"pretrain.optim.batch_size={args.batch_size}",
        f"evolve.population={args.population}",
        f"evolve.episodes={args.episodes}",
        f"dream.horizon={args.horizon}",
        "dream.cont_mode=threshold",
        "dream.cont_threshold=1e-6",
        "dream.disagreement_limit=0",
    ]
    return load_config(presets, overrides)


def measure(processes: int, threads: int, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per pretraining step and per generation with `processes` processes (1: this one)."""
    with tempfile.TemporaryDirectory() as directory:
        if processes == 1:
            worker(0, 1, threads, args, directory)
        else:
            mp.start_processes(
                worker, args=(processes, threads, args, directory), nprocs=processes, start_method="spawn"
            )
        return json.loads(Path(directory, f"w{processes}.json").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64, help="global pretraining batch (images)")
    parser.add_argument("--steps", type=int, default=5, help="timed pretraining steps (median)")
    parser.add_argument("--population", type=int, default=64, help="P, candidates per generation")
    parser.add_argument("--episodes", type=int, default=16, help="E, dream episodes per candidate")
    parser.add_argument("--horizon", type=int, default=200, help="H, dream steps per episode")
    parser.add_argument("--generations", type=int, default=5, help="timed generations (median)")
    parser.add_argument("--threads", type=int, help="torch threads per process (default: cores / processes)")
    parser.add_argument("--quick", action="store_true", help="the debug preset at tiny sizes: a check that it runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.steps, args.population, args.episodes, args.horizon, args.generations = 8, 2, 6, 3, 20, 2
    rates: dict[str, dict[int, float]] = {"pretrain": {}, "es": {}}
    budget = torch.get_num_threads()  # all cores, or OMP_NUM_THREADS
    for processes in (1, 2):
        threads = args.threads or max(1, budget // processes)
        seconds = measure(processes, threads, args)
        setting = {"processes": processes, "threads": threads, "device": "cpu", "backend": "gloo"}
        rates["pretrain"][processes] = args.batch_size / seconds["pretrain"]
        rates["es"][processes] = args.population / seconds["es"]
        emit(
            "pretrain_images_per_s",
            rates["pretrain"][processes],
            "images/s",
            batch_size=args.batch_size,
            step_s=round(seconds["pretrain"], 4),
            **setting,
        )
        emit(
            "es_candidates_per_s",
            rates["es"][processes],
            "candidates/s",
            P=args.population,
            E=args.episodes,
            H=args.horizon,
            generation_s=round(seconds["es"], 4),
            **setting,
        )
    for name in ("pretrain", "es"):
        emit(f"{name}_scaling", rates[name][2] / rates[name][1], "ratio", processes=[1, 2], cpus=os.cpu_count())


if __name__ == "__main__":
    main()
