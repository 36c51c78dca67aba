"""The world model's encoder features: a `wm pretrain` encoder loaded into a world model (`load_encoder_weights`,
`load_pretrained_encoder`), the fingerprint that keys a frozen encoder's latent cache (`encoder_fingerprint`), filling
that cache (`fill_latent_cache`) and the feature standardisation set from training windows (`standardize_features`).

They live in experiments/ rather than worldmodel/dynamics/ because they drive checkpoints, logging and torchrun, which
live in experiments/ and which worldmodel/ may not import.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from envs import EpisodeStore
from envs.store import LATENT_DTYPE
from experiments import distributed
from experiments.checkpoint import CheckpointError, read_checkpoint
from experiments.config import Config
from experiments.progress import Progress
from experiments.rundir import GracefulStop, Interrupted
from experiments.runtime import autocast, rebalance_threads, step_rng
from experiments.windows import StoreWindows
from worldmodel.dynamics.world_model import WorldModel, batch_from_windows

STREAM_FEATURE_STATISTICS = 4  # one of world-model training's streams of randomness (see training.py)
ENCODE_BATCH = 256  # frames per encoder call when filling the latent cache
FEATURE_STATISTICS_WINDOWS = 64  # training windows whose features set the model's feature standardisation


def load_encoder_weights(
    path: Path, cfg: Config, part: str = "encoder", option: str = "--encoder"
) -> dict[str, torch.Tensor]:
    """The context encoder (`encoder.*`, or `part`: "target_encoder" for the EMA target) of a `wm pretrain`
    checkpoint, checked to fit this run's world model; `option` names where the path came from in errors.

    Raises:
        CheckpointError naming every setting that differs.
    """
    state = read_checkpoint(path)
    if state.get("command") != "pretrain":
        raise CheckpointError(f"{option} {path} is a checkpoint of '{state.get('command')}', not of 'pretrain'")
    differences = []
    if cfg.env.obs != "pixels":
        differences.append(f"env.obs is {cfg.env.obs!r} here, but a pretrained encoder reads pixels")
    theirs = state["config"]["pretrain"]["encoder"]
    for ours, key in (("vit_size", "size"), ("image_size", "image_size"), ("patch_size", "patch_size")):
        if getattr(cfg.world_model, ours) != theirs[key]:
            differences.append(
                f"world_model.{ours} is {getattr(cfg.world_model, ours)!r} here but {theirs[key]!r} in the checkpoint "
                f"(pretrain.encoder.{key})"
            )
    if differences:
        raise CheckpointError(f"{option} {path} does not fit this world model: " + "; ".join(differences))
    prefix = f"{part}."
    weights = {key[len(prefix) :]: value for key, value in state["model"].items() if key.startswith(prefix)}
    if not weights:
        raise CheckpointError(f"{option} {path} holds no {prefix}* weights")
    return weights


def load_pretrained_encoder(model: WorldModel, weights: dict[str, torch.Tensor], source: str) -> None:
    """Load pretrained encoder weights into the model's backbone (and its EMA copy); CheckpointError if they
    do not fit."""
    try:
        model.load_pretrained_encoder(weights)
    except RuntimeError as error:  # load_state_dict names the missing, unexpected and mis-shaped tensors
        raise CheckpointError(f"--encoder {source} does not fit this world model's encoder: {error}") from None


FEATURE_PRECISION = "float32"
"""A frozen encoder's features are computed in float32 whatever run.precision says: the cache and the agent in the
real env must see the same numbers, and bf16's 8-bit mantissa rounds away the small frame-to-frame differences of
the features (std ~1% of their magnitude for a random ViT) that standardisation then blows up into noise of the
order of the signal (measured: a CartPole controller fell from ~300 to 28 real return with a bf16 cache)."""


def encoder_fingerprint(model: WorldModel) -> str:
    """The latent-cache key of a frozen encoder: a hash of everything its features depend on.

    That is the backbone's weights, the observation shape, the ViT's input size (frames are resized to it), the
    blur of its input, the pooling of its patch features, the precision the features are computed in
    (FEATURE_PRECISION) and the dtype the cache keeps them in (`envs.store.LATENT_DTYPE`).
    """
    digest = hashlib.sha256()
    shape = [list(model.obs_shape), getattr(model, "image_size", None), FEATURE_PRECISION, np.dtype(LATENT_DTYPE).name]
    options = ([model.input_blur] if model.input_blur else []) + ([model.pooling] if model.pooling != "mean" else [])
    digest.update(json.dumps(shape + options).encode())
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return f"encoder-{digest.hexdigest()[:16]}"


@torch.no_grad()
def fill_latent_cache(
    model: WorldModel,
    store: EpisodeStore,
    key: str,
    device: torch.device,
    stop: GracefulStop,
    show_progress: bool = True,
) -> int:
    """Encode every frame of the episodes missing from the cache `key`, once, in float32 (FEATURE_PRECISION).
    Returns how many were encoded.

    Episode by episode, in ENCODE_BATCH frames at most: batches across CartPole's short episodes (about 27 frames)
    were no faster here (benchmarks/contention.py and docs/performance.md: the fill runs at the encoder's batched rate).
    Under torchrun process r of W encodes missing episodes r, r + W, ... (each writes only its episodes' files), all
    of them in rounds of one episode each, and then every process re-reads the cache.
    """
    cache = store.latents(key)
    missing = cache.missing()
    distributed.barrier()  # every process has listed the cache before any writes into it
    if not missing:
        return 0
    workers = distributed.world_size()
    own = missing[distributed.rank() :: workers]
    bar = Progress(int(store.episode_steps[own].sum()), "encode", unit="frame", enabled=show_progress)
    for turn in range(-(-len(missing) // workers)):
        rebalance_threads()
        if turn < len(own):
            obs = torch.as_tensor(store.episode(own[turn]).obs)  # (L+1, *obs_shape)
            features = []
            for start in range(0, len(obs), ENCODE_BATCH):
                features.append(model.encode_features(obs[start : start + ENCODE_BATCH].to(device)).float().cpu())
            cache.put(own[turn], torch.cat(features).numpy())  # (L+1, F)
            bar.update(len(obs))
        if stop.check():  # the step-0 checkpoint exists; a resume encodes only what is still missing
            bar.close()
            raise Interrupted
    bar.close()
    if distributed.active():
        distributed.barrier()
        cache.refresh()
    return len(missing)


@torch.no_grad()
def standardize_features(
    model: WorldModel, data: StoreWindows, cfg: Config, device: torch.device, precision: str
) -> None:
    """Set the model's per-dimension feature statistics from training windows. Done once, on a fresh run: the
    statistics are buffers of the model and travel in its checkpoints."""
    rng = step_rng(cfg.run.seed, 0, STREAM_FEATURE_STATISTICS)
    windows = data.train_windows(FEATURE_STATISTICS_WINDOWS, cfg.world_model.sequence_length, rng)
    batch = batch_from_windows(windows, device, use_features=data.latent_key is not None)
    if batch.features is not None:
        features = batch.features  # (B, T, F) from the latent cache
    else:
        frames = batch.obs.flatten(0, 1)  # (B, T, *obs_shape) -> (B*T, *obs_shape)
        with autocast(device, precision):
            features = torch.cat(
                [
                    model.encode_features(frames[i : i + ENCODE_BATCH]).float()
                    for i in range(0, len(frames), ENCODE_BATCH)
                ]
            )
    model.set_feature_statistics(features)
