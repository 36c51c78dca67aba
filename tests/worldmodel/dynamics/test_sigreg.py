"""SIGReg: oracle values, separation of Gaussian from collapsed and anisotropic batches, gradients."""

import math

import pytest
import torch

from worldmodel.dynamics.sigreg import epps_pulley, random_directions, sigreg


def test_point_mass_at_origin_matches_the_closed_form():
    # ecf = 1 everywhere, so EP = integral (1 - phi)^2 phi dt with phi = exp(-t^2 / 2), which is
    # sqrt(2 pi) (1 - 2 / sqrt(2) + 1 / sqrt(3)) over the whole line.
    expected = math.sqrt(2 * math.pi) * (1 - 2 / math.sqrt(2) + 1 / math.sqrt(3))
    value = epps_pulley(torch.zeros(100, 3))
    assert value.shape == (3,)
    torch.testing.assert_close(value, torch.full((3,), expected), atol=1e-3, rtol=0)


def test_gaussian_samples_score_near_the_null_expectation():
    # Under N(0, 1), E|ecf(t) - phi(t)|^2 = (1 - phi(t)^2) / N, so E[EP] = (sqrt(2 pi) - sqrt(2 pi / 3)) / N.
    n = 512
    expected = (math.sqrt(2 * math.pi) - math.sqrt(2 * math.pi / 3)) / n
    generator = torch.Generator().manual_seed(0)
    values = [sigreg(torch.randn(n, 16, generator=generator), generator).item() for _ in range(10)]
    assert abs(sum(values) / len(values) - expected) < 0.3 * expected


def test_collapsed_and_anisotropic_batches_score_far_above_gaussian():
    generator = torch.Generator().manual_seed(1)
    gaussian = torch.randn(1024, 16, generator=generator)
    score = lambda x: sigreg(x, torch.Generator().manual_seed(2)).item()  # same directions for all
    null = score(gaussian)
    assert null < 0.005
    assert score(torch.zeros(1024, 16)) > 50 * null  # collapsed onto the origin
    assert score(torch.full((1024, 16), 0.7)) > 50 * null  # collapsed elsewhere
    stds = torch.logspace(-1, math.log10(3.0), 16)  # per-dim std from 0.1 to 3
    assert score(gaussian * stds) > 20 * null
    low_rank = gaussian.clone()
    low_rank[:, 2:] = 0  # only two dims carry any spread
    assert score(low_rank) > 20 * null
    assert score(gaussian * 3) > 50 * null  # isotropic, but not unit scale


def test_same_generator_state_gives_same_value_and_directions_are_unit():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    a = sigreg(x, torch.Generator().manual_seed(5))
    b = sigreg(x, torch.Generator().manual_seed(5))
    c = sigreg(x, torch.Generator().manual_seed(6))
    assert a.item() == b.item() and a.item() != c.item()
    directions = random_directions(8, 32, torch.Generator().manual_seed(0))
    assert directions.shape == (8, 32)
    torch.testing.assert_close(directions.norm(dim=0), torch.ones(32))


def test_gradient_pushes_a_collapsed_batch_apart():
    generator = torch.Generator().manual_seed(0)
    x = (0.01 * torch.randn(256, 8, generator=generator)).requires_grad_(True)
    sigreg(x, torch.Generator().manual_seed(0)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # Moving against the gradient increases the spread to first order: d/de Var(x - e g) = -2 <x - mean, g> / N.
    centred = x.detach() - x.detach().mean(dim=0)
    assert (centred * -x.grad).sum() > 0

    optimizer = torch.optim.Adam([x], lr=0.05)
    before = x.detach().std().item()
    for step in range(40):
        optimizer.zero_grad()
        loss = sigreg(x, torch.Generator().manual_seed(step), num_directions=64)
        loss.backward()
        optimizer.step()
    assert x.detach().std().item() > 20 * before
    assert sigreg(x.detach(), torch.Generator().manual_seed(0)).item() < 0.1


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        sigreg(torch.zeros(4), torch.Generator())
    with pytest.raises(ValueError, match="num_points"):
        epps_pulley(torch.zeros(4, 2), num_points=1)
