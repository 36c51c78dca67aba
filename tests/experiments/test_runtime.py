import math

import torch

from experiments.runtime import optimizer_step


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
