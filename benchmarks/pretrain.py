"""I-JEPA training throughput in float32 and bf16, and its share of this device's measured matmul peak.

    python benchmarks/pretrain.py                 # the `small` preset at 64 px, as issue 2 asks
    python benchmarks/pretrain.py --attention     # also time each attention path at the model's shapes
    python benchmarks/pretrain.py --quick         # a short check

Prints JSON lines {"bench", "metric", "value", "unit"}. The peak is measured in the same run (large square
matmuls), so the share is a ratio of two figures taken on the same, possibly busy, machine. FLOPs are
counted by torch's FlopCounterMode over one real training step (forward and backward), attention included:
FlopCounterMode has no formula for torch's CPU attention kernel, so this script gives it the one torch uses for
its GPU kernels.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
# Run as a file, this script's folder is sys.path[0]: put the repository there instead.
if sys.path and Path(sys.path[0]).resolve() == _REPO / "benchmarks":
    sys.path[0] = str(_REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count  # noqa: E402

from experiments.config import load_config  # noqa: E402
from experiments.pretraining import apply_schedules, build_model, build_optimizer, train_step  # noqa: E402
from experiments.runtime import cpu_supports_bf16, resolve_device  # noqa: E402
from worldmodel.perception.masks import MultiBlockMaskSampler  # noqa: E402
from worldmodel.perception.vit import explicit_attention  # noqa: E402

aten = torch.ops.aten
CPU_ATTENTION_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *args, **kwargs: sdpa_flop_count(q, k, v),
    aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        lambda grad, q, k, v, *args, **kwargs: sdpa_backward_flop_count(grad, q, k, v)
    ),
}
"""FLOPs of torch's CPU attention kernel (forward, backward), which FlopCounterMode leaves uncounted."""


def emit(metric: str, value: float, unit: str, **extra) -> None:
    print(
        json.dumps({"bench": "pretrain", "metric": metric, "value": round(value, 4), "unit": unit, **extra}), flush=True
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """Best-of-`repeats` FLOP/s of an n x n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: the first call picks kernels
    best = 0.0
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def model_and_masks(cfg, device: torch.device) -> tuple:
    """The I-JEPA model of `cfg.pretrain` and four batches of its masks, seeded."""
    torch.manual_seed(0)
    pcfg = cfg.pretrain
    model = build_model(pcfg).to(device)
    sampler = MultiBlockMaskSampler(model.encoder.grid, **dataclasses.asdict(pcfg.mask))
    rng = np.random.default_rng(0)
    batches = (sampler(pcfg.optim.batch_size, rng) for _ in range(4))
    return model, [type(m)(*(t.to(device) for t in m)) for m in batches]


def training_throughput(cfg, device: torch.device, precision: str, steps: int) -> tuple[float, float]:
    """(images/s, FLOP per step) of the real training step for `cfg.pretrain`."""
    pcfg = cfg.pretrain
    model, masks = model_and_masks(cfg, device)
    optimizer = build_optimizer(model)
    batch = pcfg.optim.batch_size
    size = pcfg.encoder.image_size
    images = torch.randn(batch, 3, size, size, device=device)

    def step(i: int) -> None:
        scheduled = apply_schedules(optimizer, pcfg, i)
        train_step(model, optimizer, None, images, masks[i % len(masks)], scheduled["ema"], pcfg, device, precision)

    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        step(0)
    flops = counter.get_total_flops()
    for i in range(2):  # warm-up
        step(i)
    times = []
    for i in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step(i)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times), flops


def attention_seconds(path, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """Best-of-`repeats` seconds of one attention forward and backward at `shape` (B, heads, tokens, d)."""
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(shape, generator=generator).to(device, dtype) for _ in range(3)]
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        q, k, v = (x.detach().requires_grad_() for x in inputs)
        synchronize(device)
        start = time.perf_counter()
        path(q, k, v).float().sum().backward()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def attention_paths(cfg, device: torch.device, repeats: int, setting: dict) -> None:
    """Time torch's fused attention against the explicit products at the shapes one training step attends over."""
    model, (masks, *_) = model_and_masks(cfg, device)
    batch = cfg.pretrain.optim.batch_size
    encoder, predictor = model.encoder, model.predictor
    heads, predictor_heads = encoder.blocks[0].attn.heads, predictor.blocks[0].attn.heads
    predictor_width = predictor.embed.out_features // predictor_heads
    context, targets = masks.context.shape[1], masks.targets.shape[2]
    shapes = {
        "target_encoder": (batch, heads, encoder.num_patches, encoder.width // heads),
        "context_encoder": (batch, heads, context, encoder.width // heads),
        "predictor": (batch * masks.targets.shape[1], predictor_heads, context + targets, predictor_width),
    }
    for place, shape in shapes.items():
        for precision, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16)):
            fused = attention_seconds(F.scaled_dot_product_attention, shape, dtype, device, repeats)
            explicit = attention_seconds(explicit_attention, shape, dtype, device, repeats)
            extra = {"shape": list(shape), "fused_ms": round(1e3 * fused, 3), "explicit_ms": round(1e3 * explicit, 3)}
            emit(f"attention_explicit_speedup_{place}_{precision}", fused / explicit, "ratio", **extra, **setting)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", help="ViT size preset (default: small)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per precision (median reported)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--attention", action="store_true", help="also time both attention paths at the model's shapes")
    parser.add_argument("--quick", action="store_true", help="a tiny model for 2 steps: checks that it runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.image_size, args.patch_size, args.steps, args.batch_size = "micro", 32, 4, 2, 8
    device = resolve_device(args.device)
    cfg = load_config(
        [],
        [
            f"pretrain.encoder.size={args.size}",
            f"pretrain.encoder.image_size={args.image_size}",
            f"pretrain.encoder.patch_size={args.patch_size}",
            f"pretrain.optim.batch_size={args.batch_size}",
        ],
    )
    setting = {
        "device": str(device),
        "preset": args.size,
        "image_size": args.image_size,
        "patch_size": args.patch_size,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cpu":
        setting["cpu_bf16_units"] = cpu_supports_bf16()
    n = 512 if args.quick else 2048
    peaks = {}
    for precision, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16)):
        peaks[precision] = matmul_peak(device, dtype, n, repeats=3 if args.quick else 10)
        emit(f"matmul_peak_{precision}", peaks[precision] / 1e9, "GFLOP/s", n=n, **setting)
    rates = {}
    for precision in ("float32", "bf16"):
        images_per_s, flops = training_throughput(cfg, device, precision, args.steps)
        rates[precision] = images_per_s
        achieved = images_per_s / args.batch_size * flops
        emit(f"train_images_per_s_{precision}", images_per_s, "images/s", **setting)
        emit(f"train_flops_{precision}", achieved / 1e9, "GFLOP/s", flop_per_step=flops, **setting)
        emit(f"train_share_of_peak_{precision}", achieved / peaks[precision], "fraction", **setting)
    emit("bf16_speedup", rates["bf16"] / rates["float32"], "ratio", **setting)
    if args.attention:
        attention_paths(cfg, device, repeats=2 if args.quick else 10, setting=setting)


if __name__ == "__main__":
    main()
