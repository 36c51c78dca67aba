"""Scale out through torch.distributed: one process per GPU (or per share of the CPU cores) under torchrun.

    torchrun --standalone --nproc_per_node 2 -m experiments train --config configs/cartpole.yaml

torchrun starts N copies of a command and tells each one its place through environment variables (RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT); `init` joins them into one process group
(NCCL between GPUs, gloo between CPUs). Without torchrun nothing here communicates: every helper returns what a
single process has, so a plain `wm train` behaves exactly as it always did.

How the commands split their work. A process's share of N rows is a contiguous slice (`share`), and rank order is
row order, so the shares put together are the rows one process would have had:

* Training (`wm pretrain`, `wm train`): every process draws the same global batch from the step-seeded generators,
  loads only its rows and trains a DistributedDataParallel copy of the model, which averages the gradients. A loss
  that is not a per-sample mean of equal shares (masked means, SIGReg over the batch) is computed through `Shard`
  so that the average over processes is the loss of the whole batch, as one process computes it; the EMA target,
  updated from identical weights, stays identical everywhere.
* Evolution: every process keeps the same CMA-ES (same seed, same fitness, so the same candidates: checked every
  generation), scores its share of the population and all-gathers the fitness.
* Collection: the sub-envs are split across processes; rank 0 gathers the episodes and is the store's one writer.
  A frozen encoder's latent cache is filled by every process, each writing only its own episodes' files.
* Rank 0 alone writes logs, tensorboard, checkpoints and summaries. Checkpoints hold nothing that depends on the
  number of processes, so a run resumes under any world size.

Every process must reach every collective in the same order. The helpers are called at points all processes pass
(step boundaries, phase ends), never inside code that only rank 0 runs.
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from experiments.config import Config, ConfigError

T = TypeVar("T")

TIMEOUT_VARIABLE = "WM_DIST_TIMEOUT_S"
"""Environment variable: seconds a process waits in one collective before it fails (default DEFAULT_TIMEOUT_S)."""
DEFAULT_TIMEOUT_S = 1800.0  # generous: the others wait at the next collective while rank 0 evaluates or writes videos
SETTLE_S = 0.25  # seconds teardown leaves gloo's worker threads to free their last tensors

# The batch each command splits across processes: it must divide evenly (every process takes batch / world size).
SPLIT_BATCHES = {
    "pretrain": "pretrain.optim.batch_size",
    "train": "world_model.batch_size",
    "cycle": "world_model.batch_size",
}


# ------------------------------------------------------------------------------------------------------
# The process group


def launched() -> bool:
    """True in a process that torchrun started with others (it sets RANK and WORLD_SIZE); one process alone, even
    under torchrun, runs as it does without it."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", 1)) > 1


def active() -> bool:
    """True once this process has joined a process group (torchrun's, through `init`, or a test's)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0: the process that writes the run directory."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its own machine (its GPU under CUDA)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if launched() else 0


def local_world_size() -> int:
    """Processes on this machine."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if launched() else 1


def init(device: str) -> bool:
    """Join torchrun's process group, once; no-op without torchrun. Returns whether a group is active.

    Args:
        device: the run's `run.device`; a CUDA run takes NCCL for tensors on the GPU and gloo for those on the CPU
            (the small scalars and objects exchanged outside DDP), a CPU run gloo alone.
    """
    if active() or not launched():
        return active()
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_S)))
    uses_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if uses_cuda:
        torch.cuda.set_device(local_rank())
    # RELIABILITY.md: bound every blocking call. A process that never arrives fails the others after `timeout`.
    dist.init_process_group("cpu:gloo,cuda:nccl" if uses_cuda else "gloo", timeout=timeout)
    atexit.register(teardown)
    return True


def teardown() -> None:
    """Leave the process group (at the end of a command, or at exit), then give gloo's worker threads a moment.

    A worker thread drops its last collective's tensors a little after the caller has the result. If it is still
    holding them when the interpreter shuts down, it cannot take the GIL to free them, and the process dies with
    SIGABRT ("terminate called without an active exception") after all its work is done: 3 of 51 two-process runs
    of benchmarks/scale.py here in one hour, none of 51 in the next (a core dump showed a gloo worker freeing an
    all-gather's tensors during shutdown). Sleeping releases the GIL, so the threads free them while the
    interpreter still runs.
    """
    if active():
        dist.destroy_process_group()
        time.sleep(SETTLE_S)


def default_threads() -> int:
    """Torch threads of a CPU process under torchrun: the machine's cores shared by its processes."""
    return max(1, (os.cpu_count() or 1) // local_world_size())


def check_config(cfg: Config, command: str) -> None:
    """Fail before any work when the command's batch does not split evenly across the processes."""
    key = SPLIT_BATCHES.get(command)
    if key is not None:
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        even_share(value, key)


# ------------------------------------------------------------------------------------------------------
# Shares of rows


def share(count: int, parts: int | None = None, index: int | None = None) -> slice:
    """The contiguous rows [start, stop) of `count` that process `index` of `parts` takes (default: this process of
    the job). The first count % parts processes take one row more, so shares differ by one row at most."""
    parts = world_size() if parts is None else parts
    index = rank() if index is None else index
    size, extra = divmod(count, parts)
    start = index * size + min(index, extra)
    return slice(start, start + size + (index < extra))


def even_share(count: int, key: str) -> slice:
    """`share` of a batch that must split evenly, so that every process trains on as many rows as the others.

    Raises:
        ConfigError naming the config key, its value and the world size.
    """
    if count % world_size():
        raise ConfigError(
            f"{key}: {count} does not split evenly across the {world_size()} processes of this torchrun job; use a "
            f"multiple of {world_size()} (each process takes {key.rsplit('.', 1)[-1]} / world size)"
        )
    return share(count)


def rank_seed(seed: int) -> int:
    """A seed for this process's own randomness (its share of a collection): `seed` on rank 0, offset by the rank
    elsewhere, so one process alone draws what it always did."""
    return seed + rank()


# ------------------------------------------------------------------------------------------------------
# Collectives (each returns what one process alone would have)


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(value: T) -> T:
    """Rank 0's `value`, on every process (it must pickle)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(value: T) -> list[T]:
    """Every process's `value`, in rank order (a list of one alone)."""
    if not active():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def gather_object(value: T) -> list[T] | None:
    """Every process's `value` in rank order on rank 0; None elsewhere."""
    if not active():
        return [value]
    values: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(value, values, dst=0)
    return values


def sum_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The sum over processes of a tensor (a detached copy; no gradient flows through it)."""
    total = value.detach().clone()
    if active():
        dist.all_reduce(total)
    return total


def average_over_processes(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scalar tensors averaged over processes, as floats: the losses of a step, each process's computed so that their
    average is the loss of the whole batch (see `Shard`). One collective for the whole dict."""
    stacked = torch.stack([value.detach().float().reshape(()) for value in values.values()]).cpu()  # (values,)
    stacked = sum_over_processes(stacked) / world_size()
    return dict(zip(values, stacked.tolist(), strict=True))


def agree_signal(signum: int | None) -> int | None:
    """The signal any process received (the highest number when several did), or None: how the processes of a job
    decide together to stop at the same step boundary."""
    if not active():
        return signum
    agreed = torch.tensor(signum or 0)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return int(agreed) or None


# ------------------------------------------------------------------------------------------------------
# Training


class _GatherRows(torch.autograd.Function):
    """All-gather of equal-sized row blocks whose backward hands each process the gradient of its own rows.

    Every process computes the same loss from the gathered rows; the gradient of a process's rows is then the sum
    of every process's gradient for them (an all-reduce), which DistributedDataParallel's averaging turns back into
    the gradient one process would have computed on the whole batch.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(rows) for _ in range(world_size())]
        dist.all_gather(parts, rows.contiguous())
        ctx.rows = len(rows)
        return torch.cat(parts)  # world_size x (N, ...) -> (world_size*N, ...), in rank order

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = rank() * ctx.rows
        return grad[start : start + ctx.rows]


class Shard:
    """This process's share of a batch split across the processes (`worldmodel.dynamics.world_model.BatchShard`).

    A loss that is a mean over the batch is computed per process as its share of the whole batch's sum, divided by
    the whole batch's count and multiplied by the world size: DDP averages gradients over processes, so the
    average of these losses, and of their gradients, is the whole batch's.
    """

    def __init__(self) -> None:
        self.world_size = world_size()
        self.rank = rank()

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over processes of a count or statistic that needs no gradient."""
        return sum_over_processes(value)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """(N, ...) rows of every process, (world_size*N, ...) in rank order; differentiable."""
        return _GatherRows.apply(rows) if active() else rows


class TrainingLoss(nn.Module):
    """A model's `loss` as a module's forward: DistributedDataParallel prepares its gradient averaging in forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.loss(*args, **kwargs)


def data_parallel(model: nn.Module, device: torch.device) -> Callable[..., Any]:
    """`model.loss`, through DistributedDataParallel under torchrun (gradients averaged over processes);
    `model.loss` itself alone.

    The model itself stays unwrapped: checkpoints hold its state_dict, the same under any world size.
    """
    if not active():
        return model.loss
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(TrainingLoss(model), device_ids=[device.index] if device.type == "cuda" else None)


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average the gradients of a module trained outside DDP (the decoder) over processes, in one all-reduce; a
    process whose share was empty contributes zeros."""
    if not active():
        return
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
