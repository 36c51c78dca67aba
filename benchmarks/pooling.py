"""How much of an env's true state a frozen ViT's pooled frame features say, for each `world_model.pooling`: the
linear-probe R² of every state dimension, on episodes held out from the probe's fit; random-initialised ViTs, and a
`wm pretrain` run's encoders beside them.

    python benchmarks/pooling.py --episodes runs/cartpole-ema/episodes   # a `wm train` run's store (docs/perception.md)
    python benchmarks/pooling.py --env CartPole-v1 --steps 20000          # collect random-policy episodes first
    python benchmarks/pooling.py --quick                                  # 800 steps, one ViT: a check that it runs
    python benchmarks/pooling.py --env Parking-v0 --steps 50000 --seeds 1 --in-view   # frames showing the space
    python benchmarks/pooling.py --env CarRacing-v3 --steps 20000 --encoder runs/<a wm pretrain run>

Prints JSON lines {"bench": "pooling", "metric", "value", "unit", "pooling", "encoder", "seed", "frames"}:
`probe_r2_dim<i>` for each state dimension i (CartPole: x, x_dot, theta, theta_dot) and `probe_r2_mean`. Every pooling
reads the very same patch features of each ViT: `encoder` "random" for seeds 0, 1, 2 (three random initialisations of
`--vit-size`), then with `--encoder` "target" and "context" (seed null), the run's EMA target encoder (the one
`cycle.perception` freezes) and its online context encoder. The probe is the project's ridge probe
(worldmodel.perception.probe.linear_probe_r2), fitted on the first 75% of the episodes. Collected episodes come from
4 envs seeded 0-3: pretrain on other seeds (`wm pretrain --set run.seed=...`) to keep the probe's frames unseen.
`--in-view` (Parking-v0) fits and scores the probe on the frames whose target space's centre is on a camera only:
what a frame cannot show, no pooling of it can say.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
# Run as a file, this script's folder is sys.path[0]: put the repository there instead.
if sys.path and Path(sys.path[0]).resolve() == _REPO / "benchmarks":
    sys.path[0] = str(_REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from envs.collect import EpisodeBuffer, RandomPolicy, collect  # noqa: E402
from envs.make import make_vector_env  # noqa: E402
from envs.parking import STATE_DIM, space_in_view  # noqa: E402
from envs.store import Episode, EpisodeStore  # noqa: E402
from experiments.load import PRETRAINED_ENCODERS, load_encoder  # noqa: E402
from worldmodel.perception.augment import normalize, resize  # noqa: E402
from worldmodel.perception.probe import linear_probe_r2  # noqa: E402
from worldmodel.perception.vit import POOLINGS, VisionTransformer, pool_tokens  # noqa: E402

TRAIN_FRACTION = 0.75
IMAGE_SIZE, PATCH_SIZE = 64, 8  # the presets' ViT input


def emit(metric: str, value: float, **extra) -> None:
    record = {"bench": "pooling", "metric": metric, "value": round(value, 4), "unit": "R2", **extra}
    print(json.dumps(record), flush=True)


def random_episodes(env_id: str, steps: int, seed: int) -> list[Episode]:
    """Random-policy pixel episodes (64 px, with the env's true state) of `steps` transitions in all."""
    envs, spec = make_vector_env(env_id, 4, obs="pixels", size=64, seed=seed)
    kept = EpisodeBuffer()
    try:
        collect(envs, RandomPolicy(spec, seed), steps, kept)
    finally:
        envs.close()
    return [episode for shard in kept.shards for episode in shard]


def patch_features(frames: torch.Tensor, vit: VisionTransformer, batch: int = 512) -> torch.Tensor:
    """uint8 frames (N, H, W, C) -> the ViT's patch features (N, Np, V), as the world model preprocesses frames."""
    images = frames.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    with torch.no_grad():
        return torch.cat(
            [vit(normalize(resize(images[i : i + batch], IMAGE_SIZE))) for i in range(0, len(images), batch)]
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=Path, help="an episode store of pixel episodes with true states")
    parser.add_argument("--env", default="CartPole-v1", help="the env to collect from when --episodes is not given")
    parser.add_argument("--steps", type=int, help="random-policy transitions to collect (default 20000)")
    parser.add_argument("--vit-size", default="mini")
    parser.add_argument("--seeds", type=int, default=3, help="random ViTs to measure (seeds 0, 1, ...)")
    parser.add_argument(
        "--encoder", type=Path, help="a `wm pretrain` run or checkpoint: probe its target and context encoders too"
    )
    parser.add_argument("--in-view", action="store_true", help="Parking-v0: only frames that show the space")
    parser.add_argument("--quick", action="store_true", help="800 steps (unless --steps says) and one ViT")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = 1
    if args.steps is None:
        args.steps = 800 if args.quick else 20000

    pretrained = pretrained_encoders(args.encoder)
    if args.episodes is not None:
        if not (args.episodes / "store.json").is_file():
            raise SystemExit(f"--episodes {args.episodes}: not an episode store (no store.json there)")
        episodes = list(EpisodeStore(args.episodes))
    else:
        episodes = random_episodes(args.env, args.steps, seed=0)
    if len(episodes) < 4:
        raise SystemExit(f"need at least 4 episodes to hold some out, got {len(episodes)}")
    if any(episode.state is None or episode.obs.dtype != np.uint8 for episode in episodes):
        raise SystemExit("the episodes must be pixel episodes with true states (collected by this toolkit)")
    split = int(len(episodes) * TRAIN_FRACTION)
    frames = torch.from_numpy(np.concatenate([episode.obs for episode in episodes]))
    states = torch.from_numpy(np.concatenate([episode.state for episode in episodes]))
    n_train = sum(len(episode.obs) for episode in episodes[:split])
    if args.in_view:
        if states.shape[1] != STATE_DIM:
            raise SystemExit(
                f"--in-view is for Parking-v0's true state ({STATE_DIM} dimensions), got {states.shape[1]}"
            )
        shown = torch.from_numpy(space_in_view(states.numpy()))
        n_train = int(shown[:n_train].sum())
        frames, states = frames[shown], states[shown]
        if min(n_train, len(frames) - n_train) < 2:
            raise SystemExit(
                f"--in-view: {n_train} fitting and {len(frames) - n_train} held-out frames show the "
                "space; the probe needs 2 of each: collect more --steps"
            )
        print(f"--in-view: {len(frames)} frames show the space ({n_train} to fit the probe)", file=sys.stderr)

    subset = "in_view" if args.in_view else "all"
    for name, seed, vit in encoders(args.seeds, args.vit_size, pretrained):
        tokens = patch_features(frames, vit)  # (N, Np, V)
        for pooling in POOLINGS:
            features = pool_tokens(tokens, pooling)
            probe = linear_probe_r2(features[:n_train], states[:n_train], features[n_train:], states[n_train:])
            labels = {"pooling": pooling, "encoder": name, "seed": seed, "frames": subset}
            for i, value in enumerate(probe.per_dim):
                emit(f"probe_r2_dim{i}", value, **labels)
            emit("probe_r2_mean", float(probe.mean), **labels)


def pretrained_encoders(path: Path | None) -> list[tuple[str, VisionTransformer]]:
    """A pretrain run's EMA target and context encoders by name, checked to take the presets' input (before any
    episode is collected); none without --encoder."""
    found = []
    for which in PRETRAINED_ENCODERS if path is not None else ():
        encoder = load_encoder(path, which=which)
        grid = encoder.backbone.grid
        if encoder.image_size != IMAGE_SIZE or grid != IMAGE_SIZE // PATCH_SIZE:
            raise SystemExit(
                f"--encoder {path}: a ViT on {encoder.image_size} px in a {grid} x {grid} patch grid; "
                f"this benchmark probes the presets' {IMAGE_SIZE} px in {PATCH_SIZE} px patches"
            )
        found.append((which, encoder.backbone))
    return found


def encoders(
    seeds: int, vit_size: str, pretrained: list[tuple[str, VisionTransformer]]
) -> Iterator[tuple[str, int | None, VisionTransformer]]:
    """(name, seed, ViT): the random-initialised ViTs of seeds 0, 1, ..., then the pretrained ones (seed None)."""
    for seed in range(seeds):
        torch.manual_seed(seed)
        yield "random", seed, VisionTransformer(IMAGE_SIZE, PATCH_SIZE, 3, vit_size).eval()
    for which, vit in pretrained:
        yield which, None, vit


if __name__ == "__main__":
    main()
