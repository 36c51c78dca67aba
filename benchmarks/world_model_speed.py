"""World-model training throughput: a frozen encoder trained from cached features versus a fine-tuned one,
and each one's share of this device's measured matmul peak.

    python benchmarks/world_model_speed.py            # the configs/cartpole.yaml world model (64 px, mini ViT)
    python benchmarks/world_model_speed.py --quick    # the debug preset, a few steps: a check that it runs
    python benchmarks/world_model_speed.py --quick --config configs/parking.yaml \
        --set world_model.batch_size=2                # any preset
    python benchmarks/world_model_speed.py --variant world_model.horizon=31 \
        --variant world_model.sequence_length=64,world_model.horizon=63

Prints JSON lines {"bench": "world_model_speed", "metric", "value", "unit"}. One timed step is what `wm train` does
per step apart from reading windows from the episode store (benchmarks/env_speed.py measures that): the world
model's optimizer step and EMA update, then the decoder's step. Frozen: the batch carries the encoder's cached
features, computed once per frame beforehand (that encoding is reported as its own rate). Fine-tuned: the
batch carries uint8 frames and the ViT runs forward and backward every step. The windows hold episodes of
`--episode-length` steps (23 by default, CartPole's random play): the open-loop unroll skips the pairs that
would cross a seam, so the seams change the work. FLOPs are counted by torch's FlopCounterMode over one real
step; the matmul peak is measured in the same run (benchmarks/pretrain.py's helpers), so the share is a ratio
of two figures taken on the same, possibly busy, machine. Each `--variant` (config overrides, comma-separated)
is timed frozen beside the preset, and reported as frames/s (windows may differ in length) and as its ratio to
the preset's frames/s in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
# Run as a file, this script's folder is sys.path[0]: put the repository there instead.
if sys.path and Path(sys.path[0]).resolve() == _REPO / "benchmarks":
    sys.path[0] = str(_REPO)

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.pretrain import matmul_peak, synchronize  # noqa: E402
from experiments.config import Config, load_config  # noqa: E402
from experiments.inputs import env_spec  # noqa: E402
from experiments.runtime import autocast, cpu_supports_bf16, resolve_device, resolve_precision  # noqa: E402
from experiments.training import (  # noqa: E402
    apply_schedules,
    build_decoder,
    build_model,
    build_optimizer,
    decoder_step,
    train_step,
)
from worldmodel.dynamics.world_model import WorldModelBatch  # noqa: E402

PRECISION_DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def emit(metric: str, value: float, unit: str, **extra) -> None:
    record = {"bench": "world_model_speed", "metric": metric, "value": round(value, 4), "unit": unit, **extra}
    print(json.dumps(record), flush=True)


def random_batch(
    cfg: Config, obs_shape: tuple[int, ...], action_dim: int, device: torch.device, episode_length: int = 0
) -> WorldModelBatch:
    """Windows of random frames and one-hot actions (their values do not change the work done). Each window
    starts an episode; with `episode_length` > 0 another starts every that many steps, as in windows drawn
    from a store of such episodes."""
    wcfg = cfg.world_model
    B, T = wcfg.batch_size, wcfg.sequence_length
    generator = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 256, (B, T, *obs_shape), generator=generator, dtype=torch.uint8)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    if episode_length > 0:
        is_first[:, ::episode_length] = True
    action = torch.eye(action_dim)[torch.randint(0, action_dim, (B, T), generator=generator)]  # (B, T, A)
    return WorldModelBatch(
        obs=obs.to(device),
        action=action.masked_fill(is_first[..., None], 0.0).to(device),
        reward=torch.ones(B, T, device=device),
        cont=torch.ones(B, T, device=device),
        is_first=is_first.to(device),
    )


def throughput(cfg: Config, device: torch.device, precision: str, steps: int, episode_length: int) -> dict[str, float]:
    """Sequences/s and FLOP per step of the real training step; for a frozen encoder also the caching rate."""
    torch.manual_seed(0)
    wcfg = cfg.world_model
    spec = env_spec(cfg.env)
    model = build_model(wcfg, spec).to(device)
    decoder = build_decoder(wcfg, spec).to(device)
    optimizer = build_optimizer(model, wcfg)
    decoder_optimizer = torch.optim.Adam(decoder.parameters(), lr=wcfg.decoder_lr)
    weights = wcfg.loss_weight_dict(model.loss_keys)
    batch = random_batch(cfg, spec.obs_shape, spec.action_dim, device, episode_length)
    out = {}
    if wcfg.freeze_encoder:
        frames = batch.obs.reshape(-1, *spec.obs_shape)  # (B, T, H, W, C) -> (B*T, H, W, C)
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad(), autocast(device, precision):
            features = model.encode_features(frames).float()  # (B*T, F): what the latent cache holds
        synchronize(device)
        out["encode_frames_per_s"] = len(frames) / (time.perf_counter() - start)
        batch = batch._replace(obs=None, features=features.reshape(*batch.is_first.shape, -1))  # (B, T, F)
    pick = torch.arange(min(wcfg.decoder_batch, batch.is_first.numel()))
    decoder_obs = random_batch(cfg, spec.obs_shape, spec.action_dim, device).obs.reshape(-1, *spec.obs_shape)[pick]
    decoder_features = None if batch.features is None else batch.features.reshape(-1, batch.features.shape[-1])[pick]
    generator = torch.Generator().manual_seed(0)

    def step(i: int) -> None:
        scheduled = apply_schedules(optimizer, wcfg, i)
        train_step(model, optimizer, None, batch, weights, scheduled["ema"], wcfg, generator, device, precision)
        latents = None
        if not model.frame_latents:  # the decoder reads the posterior's means along the windows, as in `wm train`
            with torch.no_grad():
                latents = model.real_states(batch)[2].reshape(-1, wcfg.latent_dim)[pick]  # (B, T, D) -> (n, D)
        decoder_step(
            decoder,
            decoder_optimizer,
            model,
            decoder_obs,
            decoder_features if model.frame_latents else None,
            latents=latents,
        )

    with FlopCounterMode(display=False) as counter:
        step(0)
    flops = counter.get_total_flops()
    step(1)  # warm-up
    times = []
    for i in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step(i + 2)
        synchronize(device)
        times.append(time.perf_counter() - start)
    out["sequences_per_s"] = wcfg.batch_size / statistics.median(times)
    out["flop_per_step"] = flops
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", help="preset whose world model to time (default: configs/cartpole.yaml; with --quick, debug)"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode (median reported)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto, float32, bf16 or fp16 (as run.precision)")
    parser.add_argument(
        "--episode-length",
        type=int,
        default=23,
        help="steps per episode in the windows (23: CartPole's random play); 0: one episode per window",
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 steps of the debug preset (or of --config): a check that it runs"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="config overrides KEY=VALUE[,KEY=VALUE...] timed frozen against the preset (repeatable)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="override a config value of the preset, as for wm (repeatable), e.g. world_model.batch_size=2",
    )
    args = parser.parse_args(argv)
    if args.config is None:
        args.config = str(_REPO / "configs" / ("debug.yaml" if args.quick else "cartpole.yaml"))
    if args.quick:
        args.steps = 3
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    base = load_config([args.config], args.overrides)
    wcfg = base.world_model
    setting = {
        "config": Path(args.config).name,
        "device": str(device),
        "precision": precision,
        "vit": f"{wcfg.vit_size}/{wcfg.image_size}px/patch{wcfg.patch_size}",
        "batch": f"{wcfg.batch_size}x{wcfg.sequence_length}",
        "horizon": wcfg.horizon,
        "episode_length": args.episode_length,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cpu":
        setting["cpu_bf16_units"] = cpu_supports_bf16()
    n = 1024 if args.quick else 2048
    peak = matmul_peak(device, PRECISION_DTYPES[precision], n, repeats=3 if args.quick else 10)
    emit(f"matmul_peak_{precision}", peak / 1e9, "GFLOP/s", n=n, **setting)
    rates = {}
    # The stochastic latent predicts a frozen encoder's features: a fine-tuned encoder comes with the deterministic one.
    fine_tuned = ["world_model.freeze_encoder=false", "world_model.latent=deterministic"]
    for mode, switches in (("frozen_cached", ["world_model.freeze_encoder=true"]), ("fine_tuned", fine_tuned)):
        cfg = load_config([args.config], [*args.overrides, *switches])
        if mode == "fine_tuned":
            setting = {**setting, "fine_tuned_latent": cfg.world_model.latent}
        result = throughput(cfg, device, precision, args.steps, args.episode_length)
        rates[mode] = result["sequences_per_s"]
        achieved = result["sequences_per_s"] / wcfg.batch_size * result["flop_per_step"]
        emit(f"train_sequences_per_s_{mode}", result["sequences_per_s"], "sequences/s", **setting)
        emit(f"train_flops_{mode}", achieved / 1e9, "GFLOP/s", flop_per_step=result["flop_per_step"], **setting)
        emit(f"train_share_of_peak_{mode}", achieved / peak, "fraction", **setting)
        if "encode_frames_per_s" in result:
            emit("cache_encode_frames_per_s", result["encode_frames_per_s"], "frames/s", **setting)
    emit("frozen_cached_speedup", rates["frozen_cached"] / rates["fine_tuned"], "ratio", **setting)
    frozen = ["world_model.freeze_encoder=true"]
    preset_frames = rates["frozen_cached"] * wcfg.sequence_length
    for variant in args.variant:
        cfg = load_config([args.config], [*args.overrides, *frozen, *variant.split(",")])
        frames = throughput(cfg, device, precision, args.steps, args.episode_length)["sequences_per_s"]
        frames *= cfg.world_model.sequence_length
        emit("variant_train_frames_per_s", frames, "frames/s", variant=variant, **setting)
        ratio = frames / preset_frames
        emit("variant_speed_ratio", ratio, "ratio to the preset's frames/s", variant=variant, **setting)


if __name__ == "__main__":
    main()
