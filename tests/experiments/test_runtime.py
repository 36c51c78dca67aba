import math

import pytest
import threadpoolctl
import torch

from experiments.config import RunConfig
from experiments.runtime import NonFiniteParametersError, adamw, optimizer_step, resolve_precision, set_threads


def setup(value: float = 1.0):
    weight = torch.nn.Parameter(torch.tensor([value, 0.0]))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    optimizer.zero_grad(set_to_none=True)
    return weight, optimizer


def test_finite_step_reports_the_hand_computed_norm_and_clips():
    weight, optimizer = setup()
    # loss = 3 w0 + 4 w1: gradient (3, 4), norm 5; clipped to norm 1 -> (0.6, 0.8); SGD lr 0.1.
    update = optimizer_step(3 * weight[0] + 4 * weight[1], optimizer, None, grad_clip=1.0)
    assert not update.skipped and math.isclose(update.grad_norm, 5.0)
    torch.testing.assert_close(weight.detach(), torch.tensor([1.0 - 0.06, -0.08]))


def test_non_finite_loss_or_gradient_takes_no_step():
    weight, optimizer = setup()
    update = optimizer_step(weight.sum() * float("nan"), optimizer, None, grad_clip=1.0)
    assert update.skipped and math.isnan(update.grad_norm)
    assert weight.tolist() == [1.0, 0.0]
    # A finite loss with an infinite gradient: sqrt(w) at w = 0 is 0, its derivative 1 / (2 sqrt(0)) is inf.
    weight, optimizer = setup()
    loss = torch.sqrt(weight[1])
    assert torch.isfinite(loss)
    update = optimizer_step(loss, optimizer, None, grad_clip=0.0)
    assert update.skipped and math.isinf(update.grad_norm)
    assert weight.tolist() == [1.0, 0.0]
    assert weight.grad is None  # cleared, so nothing leaks into the next step


def test_a_step_that_makes_the_weights_non_finite_stops_the_run():
    """Gradient (3, 4), finite; times a learning rate of 1e38 the second weight overflows float32 (-4e38): the step
    must raise before any caller can save it."""
    weight = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
    optimizer = torch.optim.SGD([weight], lr=1e38)
    optimizer.zero_grad(set_to_none=True)
    with pytest.raises(NonFiniteParametersError, match="non-finite"):
        optimizer_step(3 * weight[0] + 4 * weight[1], optimizer, None, grad_clip=0.0)
    assert not torch.isfinite(weight).all()  # what the check caught


def test_auto_precision_is_float32_on_every_cpu():
    """bf16 cost the default task its result on a CPU with bf16 units: 'auto' must not depend on the CPU's kind."""
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "float32"
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("float32", cpu) == "float32"
    with pytest.raises(RuntimeError, match="fp16"):
        resolve_precision("fp16", cpu)


def test_adamw_is_fused_on_a_cpu_and_steps_as_the_unfused_one_does():
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(6, 4, generator=generator), torch.randn(4, generator=generator)]
    gradients = [[torch.randn(p.shape, generator=generator) for p in start] for _ in range(5)]
    trained = []
    for make in (adamw, torch.optim.AdamW):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = make([{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "weight_decay": 0.0}])
        for step in gradients:
            for param, grad in zip(params, step, strict=True):
                param.grad = grad.clone()
            optimizer.step()
        trained.append(params)
        if make is adamw:
            assert optimizer.defaults["fused"]
    for fused, unfused in zip(*trained, strict=True):
        torch.testing.assert_close(fused.detach(), unfused.detach(), rtol=1e-6, atol=1e-6)
        assert not torch.equal(fused.detach(), start[0] if fused.ndim == 2 else start[1])


def test_set_threads_holds_numpy_blas_to_one_thread_and_leaves_torch_its_count():
    before = torch.get_num_threads()
    try:
        set_threads(RunConfig(threads=2), torch.device("cpu"))
        blas = [lib for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
        numpy_blas = [lib for lib in blas if "numpy" in lib["filepath"]]
        assert numpy_blas, f"numpy's BLAS not found among {blas}"
        assert all(lib["num_threads"] == 1 for lib in numpy_blas)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
