"""A busy machine: the default task's world-model training and latent-cache fill alone and beside CPU-bound
neighbours, under torch's own thread settings and under the toolkit's.

    python benchmarks/contention.py            # neighbours 0, 1 and 3; both thread settings
    python benchmarks/contention.py --quick    # one neighbour, half a second each: a check that it runs

Prints JSON lines {"bench": "contention", "metric", "value", "unit", ...the setting}.

Each measurement runs in a fresh process (the OpenMP settings are read when torch loads) that builds the default
world model of the defaults (or of --config) and times, for --seconds each:
    train    `experiments.training.train_step` on a batch of cached features (what `wm cycle` trains on)
    encode   the frozen encoder over one batch of B x T frames (the preset's training batch)
    fill     `experiments.features.fill_latent_cache` over 40 episodes of 23 random frames (CartPole's random play)
    cma      CMA-ES generations (ask, then tell random fitness) over the default controller's parameters, whose
             covariance numpy's BLAS decomposes
Neighbours are single-thread busy loops started before and stopped after it. Settings:
    torch      torch's defaults: one thread per core
    toolkit    what every `wm` command does (`experiments.runtime.set_threads`: the cores other processes leave free,
               numpy's BLAS one thread)
Metrics: <phase>_per_s for each setting and neighbour count; <phase>_ratio, the rate beside N neighbours over the
rate alone under torch's defaults (the machine's best alone), measured in the same run; cache_fill_share_of_batched,
the fill's frames/s over the one-batch encode's.
Read each ratio against the machine's cores (field "cores"): on 2 cores one busy neighbour leaves a fair share of
about 0.5 to 0.67 of the rate alone, three about 0.4 to 0.5 of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == _REPO / "benchmarks":
    sys.path[0] = str(_REPO)

BUSY_LOOP = "while True: pass"


def emit(metric: str, value: float, unit: str, **extra) -> None:
    print(
        json.dumps({"bench": "contention", "metric": metric, "value": round(value, 4), "unit": unit, **extra}),
        flush=True,
    )


def worker(preset: str, setting: str, seconds: float) -> dict[str, float]:
    """Rates of the training step and the cache fill in this process (torch not yet loaded)."""
    import numpy as np
    import torch

    from agents.evolution import CMAES
    from benchmarks.world_model_speed import random_batch
    from experiments.config import load_config
    from experiments.features import encoder_fingerprint, fill_latent_cache
    from experiments.inputs import env_spec
    from experiments.load import build_controller
    from experiments.rundir import GracefulStop
    from experiments.runtime import set_threads
    from experiments.training import apply_schedules, build_model, build_optimizer, train_step

    cfg = load_config([preset] if preset else [])
    if setting == "toolkit":
        set_threads(cfg.run, torch.device("cpu"))
    torch.manual_seed(0)
    wcfg, spec, device = cfg.world_model, env_spec(cfg.env), torch.device("cpu")
    model = build_model(wcfg, spec)
    optimizer = build_optimizer(model, wcfg)
    weights = wcfg.loss_weight_dict(model.loss_keys)
    batch = random_batch(cfg, spec.obs_shape, spec.action_dim, device, episode_length=23)
    frames = batch.obs.reshape(-1, *spec.obs_shape)  # (B, T, H, W, C) -> (B*T, H, W, C)
    with torch.no_grad():
        features = model.encode_features(frames).float()  # (B*T, F)
    batch = batch._replace(obs=None, features=features.reshape(*batch.is_first.shape, -1))  # (B, T, F)
    generator = torch.Generator().manual_seed(0)

    def train(i: int) -> None:
        scheduled = apply_schedules(optimizer, wcfg, i)
        train_step(model, optimizer, None, batch, weights, scheduled["ema"], wcfg, generator, device, "float32")

    def encode(i: int) -> None:
        with torch.no_grad():
            model.encode_features(frames)

    store = short_episodes(spec, 23, 40)  # CartPole's random episodes are about 23 frames
    key, stop = encoder_fingerprint(model), GracefulStop()

    def fill(i: int) -> None:
        fill_latent_cache(model, store, f"{key}-{i}", device, stop, show_progress=False)  # a new cache: all missing

    controller = build_controller(model, spec, cfg.evolve)
    es = CMAES(np.zeros(controller.num_params), cfg.evolve.sigma, cfg.evolve.population, seed=0)
    fitness = np.random.default_rng(0)

    def cma(i: int) -> None:
        es.tell(es.ask(), fitness.standard_normal(cfg.evolve.population))

    rates = {"threads": torch.get_num_threads(), "cma_parameters": controller.num_params}
    fill_frames = int(store.episode_steps.sum()) + len(store)
    phases = (
        ("train_steps", train, 1),
        ("encode_frames", encode, len(frames)),
        ("cache_fill_frames", fill, fill_frames),
        ("cma_generations", cma, 1),
    )
    for name, work, per_call in phases:
        work(0)  # warm-up
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            work(calls + 1)
            calls += 1
        rates[name] = calls * per_call / (time.perf_counter() - start)
    return rates


def short_episodes(spec, frames: int, count: int):
    """A store in a temporary folder holding `count` episodes of `frames` random frames each."""
    import tempfile

    import numpy as np

    from envs.store import Episode, EpisodeStore

    rng = np.random.default_rng(0)
    store = EpisodeStore(Path(tempfile.mkdtemp(prefix="contention-")) / "episodes", spec=spec)
    actions = np.eye(spec.action_dim, dtype=np.float32)[rng.integers(0, spec.action_dim, (count, frames - 1))]
    store.add_episodes(
        [
            Episode.from_transitions(
                rng.integers(0, 256, (frames, *spec.obs_shape), dtype=np.uint8),
                actions[i],
                np.ones(frames - 1, np.float32),
                terminated=True,
                states=np.zeros((frames, spec.state_dim), np.float32) if spec.state_dim else None,
            )
            for i in range(count)
        ]
    )
    return store


def measure(preset: str, setting: str, seconds: float, neighbours: int) -> dict[str, float]:
    busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(neighbours)]
    try:
        time.sleep(0.5 if neighbours else 0.0)  # the neighbours are running before the work starts
        command = [sys.executable, __file__, "--worker", setting, "--config", preset, "--seconds", str(seconds)]
        environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
        result = subprocess.run(command, capture_output=True, text=True, check=True, env=environment, cwd=_REPO)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    return json.loads(result.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="", help="preset whose model to time (default: the defaults')")
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per phase and measurement")
    parser.add_argument("--neighbours", default="0,1,3", help="comma-separated neighbour counts (0 is always run)")
    parser.add_argument("--settings", default="torch,toolkit", help="comma-separated: torch, toolkit")
    parser.add_argument("--quick", action="store_true", help="1 neighbour, 0.5 s: a check that it runs")
    parser.add_argument("--worker", choices=("torch", "toolkit"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.config, args.worker, args.seconds)))
        return
    # SIGTERM as an exception, so that `finally` stops the busy neighbours rather than leaving them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.seconds, args.neighbours = 0.5, "1"
    counts = sorted({0, *(int(n) for n in args.neighbours.split(","))})
    cores = len(os.sched_getaffinity(0))
    alone = None  # torch's defaults alone: the rate every ratio is read against
    for setting in args.settings.split(","):
        for neighbours in counts:
            rates = measure(args.config, setting, args.seconds, neighbours)
            if alone is None or (setting == "torch" and neighbours == 0):
                alone = rates
            common = {
                "setting": setting,
                "neighbours": neighbours,
                "cores": cores,
                "threads": rates["threads"],
                "config": args.config or "defaults",
            }
            for phase, unit in (
                ("train_steps", "steps/s"),
                ("encode_frames", "frames/s"),
                ("cache_fill_frames", "frames/s"),
                ("cma_generations", "generations/s"),
            ):
                emit(f"{phase}_per_s", rates[phase], unit, **common)
                if neighbours or setting != "torch":
                    emit(f"{phase}_ratio", rates[phase] / alone[phase], "rate / torch's alone", **common)
            # The fill encodes episode by episode: its rate beside the encoder's on one large batch.
            emit(
                "cache_fill_share_of_batched", rates["cache_fill_frames"] / rates["encode_frames"], "fraction", **common
            )


if __name__ == "__main__":
    main()
