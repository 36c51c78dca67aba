"""Device, precision and seeding: chosen in one place for every command."""

from __future__ import annotations

import contextlib
import random
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import threadpoolctl
import torch

from experiments import distributed
from experiments.config import RunConfig
from experiments.rundir import RunFailure
from experiments.threads import ThreadShare


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; anything else must be available or it is an error.

    Under torchrun, 'auto' and 'cuda' mean this process's own GPU (cuda:LOCAL_RANK).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed.active():
        name = f"cuda:{distributed.local_rank()}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"run.device={name!r} but CUDA is not available here; use 'auto' or 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"run.device={name!r} but MPS is not available here; use 'auto' or 'cpu'")
    return device


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where bf16 matmuls beat float32.
    Without those units torch emulates bf16 and it is slower than float32. Benchmarks report it beside their figures."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' -> 'bf16' on GPUs that have it, 'fp16' on older GPUs, 'float32' on every CPU.

    A CPU with bf16 units runs I-JEPA's matrix multiplies faster in bf16 (benchmarks/pretrain.py), but the world model
    trained in bf16 costs the result: on such a CPU the default task reached 199.4 in bf16 where float32, same seed
    and machine, reached 500.0, and bf16 was slower end to end (docs/performance.md). 'bf16' stays available.
    """
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise RuntimeError("run.precision='fp16' needs a GPU; on CPU use 'bf16' or 'float32'")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "float32"


def autocast(device: torch.device, precision: str):
    """Autocast context for the forward pass; parameters and optimizer state stay float32."""
    if precision == "float32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")
"""Device types where torch's AdamW has a fused kernel that this toolkit uses."""


def adamw(groups: list[dict], **defaults) -> torch.optim.AdamW:
    """AdamW, with torch's fused kernel where every parameter lives on a device that has one.

    The fused kernel updates each tensor in one pass over memory where the default takes several. On a 2-core CPU it
    saved 2 to 3% of an I-JEPA step when this was planned; measured again beside the default (float32, 2 threads,
    interleaved) the two were within noise (2.74 to 2.92 s against 2.76 to 2.82 s a step).
    """
    params = [p for group in groups for p in group["params"]]
    fused = bool(params) and all(p.device.type in FUSED_OPTIMIZER_DEVICES for p in params)
    return torch.optim.AdamW(groups, fused=fused or None, **defaults)


class NonFiniteParametersError(RunFailure):
    """An optimizer step left NaN or infinite parameters."""


class OptimizerStep(NamedTuple):
    grad_norm: float
    """Global gradient norm before clipping (NaN when the loss itself was not finite)."""
    skipped: bool
    """The loss or the gradient was not finite, so no step was taken; the caller skips its EMA update too."""


def optimizer_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler, grad_clip: float, finite: bool | None = None
) -> OptimizerStep:
    """Backward, clip and step, for an optimizer whose gradients were zeroed before the forward pass.

    A non-finite loss or gradient norm takes no step (RELIABILITY.md: skip, count, stop after several). With
    fp16, `scaler` (a GradScaler) scales the loss and, on overflow, lowers its scale; bf16 and float32 need none.

    Args:
        finite: whether the loss counts as finite, when the caller knows better than `loss`: under torchrun, the
            loss averaged over processes, so that every process skips the same steps (a process that skipped its
            backward alone would leave the others waiting in DDP's gradient all-reduce). Default: `loss` is finite.
    """
    if not (torch.isfinite(loss) if finite is None else finite):
        return OptimizerStep(float("nan"), skipped=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    if not torch.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.update()
        return OptimizerStep(grad_norm.item(), skipped=True)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    # A finite gradient times a huge learning rate still makes NaN or infinite weights, which no later step can mend
    # and no checkpoint may hold: stop here, before anything saves them (RELIABILITY.md, "Numerics").
    if not torch.isfinite(torch.nn.utils.get_total_norm([p.detach() for p in params])):
        raise NonFiniteParametersError(
            "an optimizer step made the parameters non-finite (a learning rate too large for this model?); "
            "stopping before any checkpoint holds them"
        )
    return OptimizerStep(grad_norm.item(), skipped=False)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's global generator and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed that depends only on (seed, step, stream): randomness tied to the step number makes
    a resumed run draw exactly what an uninterrupted one would."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """A numpy Generator for one step of one stream of randomness."""
    return np.random.default_rng(step_seed(seed, step, stream))


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU torch Generator for one step of one stream of randomness."""
    return torch.Generator().manual_seed(step_seed(seed, step, stream))


def rng_state() -> dict:
    """Global RNG states in a form `torch.load(weights_only=True)` accepts."""
    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_thread_share: ThreadShare | None = None


def limit_numpy_blas() -> None:
    """One thread for numpy's BLAS (the OpenBLAS in numpy's wheels; torch's own BLAS is left alone).

    numpy's linear algebra here is CMA-ES's: the covariance of a few hundred parameters, decomposed every generation.
    One thread does that fastest, and OpenBLAS's threads spin-wait for each other whenever another process holds a
    core: beside other jobs on 2 cores one 200 x 200 `eigh` took 0.7 s on OpenBLAS's 2 threads and 3 ms on one, and a
    short `wm cycle` (600 training steps, one torch thread) spent 34 s of its evolve phase in it (docs/performance.md).
    """
    torch_folder = Path(torch.__file__).resolve().parent
    for library in threadpoolctl.ThreadpoolController().lib_controllers:
        if library.user_api == "blas" and torch_folder not in Path(library.filepath).resolve().parents:
            library.set_num_threads(1)


def set_threads(cfg: RunConfig, device: torch.device) -> None:
    """run.threads torch threads, and numpy's BLAS one (`limit_numpy_blas`). Without run.threads: a CPU process
    under torchrun takes its share of the machine's cores (torchrun itself would leave it one thread); a CPU process
    alone takes the cores other processes leave free, counted again whenever a loop calls `rebalance_threads`
    (experiments/threads.py says why)."""
    global _thread_share
    _thread_share = None
    limit_numpy_blas()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif distributed.active() and device.type == "cpu":
        torch.set_num_threads(distributed.default_threads())
    elif device.type == "cpu":
        _thread_share = ThreadShare(torch.set_num_threads)
        _thread_share.start()


def rebalance_threads() -> None:
    """Between steps of a long loop: follow the cores the other processes leave free (a no-op when run.threads fixes
    the count, and between looks at the machine)."""
    if _thread_share is not None:
        _thread_share.rebalance()


def prepare_runtime(cfg: RunConfig, run_path: Path) -> tuple[torch.device, str]:
    """Threads, seeds, device and precision from a run's `run:` section, said on stderr."""
    device = resolve_device(cfg.device)
    set_threads(cfg, device)
    seed_everything(cfg.seed)
    precision = resolve_precision(cfg.precision, device)
    workers = f", {distributed.world_size()} processes" if distributed.active() else ""
    print(f"run {run_path}: device {device}, precision {precision}{workers}", file=sys.stderr)
    return device, precision
