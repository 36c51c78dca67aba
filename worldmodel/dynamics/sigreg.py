"""SIGReg: pull a batch of latents towards an isotropic standard Gaussian.

Sketched Isotropic Gaussian Regularisation from LeJEPA (Balestriero & LeCun 2025,
https://arxiv.org/abs/2511.08544, Algorithm 1); LeWorldModel uses it as the only anti-collapse term of a
JEPA world model trained end-to-end from pixels. By the Cramér-Wold theorem a distribution is N(0, I) when
every 1-D projection of it is N(0, 1), so: project the latents on many random unit directions (fresh each call,
so over training every direction gets tested) and score each projection with the Epps-Pulley statistic

    EP = integral over t of |ecf(t) - exp(-t^2 / 2)|^2 w(t) dt,    w(t) = exp(-t^2 / 2),

where ecf(t) = mean_n exp(i t x_n) is the empirical characteristic function and exp(-t^2 / 2) that of
N(0, 1). The integral runs over a fixed grid of t with the trapezoidal rule. Characteristic functions are
bounded, so unlike moment matching the statistic and its gradient stay bounded for any input.

Scale: LeJEPA's Algorithm 1 multiplies EP by the number of samples N, which makes it a test statistic whose
null distribution does not depend on N. Here it is left unscaled, a plain mean over samples like any other
loss, so a loss weight means the same at every batch size (multiply by N to compare with LeJEPA's numbers).
Under the null its expectation is about 1.06 / N; a batch collapsed onto the origin scores about 0.41.
"""

from __future__ import annotations

import torch


def epps_pulley(projections: torch.Tensor, num_points: int = 17, t_max: float = 5.0) -> torch.Tensor:
    """Epps-Pulley distance of each column's empirical distribution from N(0, 1).

    |ecf(t) - phi(t)|^2 is even in t (ecf(-t) is the conjugate of ecf(t) and phi is real), so the integral
    over [-t_max, t_max] is twice the integral over [0, t_max], taken on `num_points` evenly spaced points.

    Args:
        projections: (N, directions) samples, one 1-D sample of size N per column.
        num_points: grid points on [0, t_max], >= 2.
        t_max: end of the grid; the Gaussian weight makes |t| > 5 contribute less than 1e-5.
    Returns:
        (directions,) float32 statistics, >= 0.
    """
    if projections.ndim != 2 or len(projections) < 1:
        raise ValueError(f"projections must be (N, directions) with N >= 1, got shape {tuple(projections.shape)}")
    if num_points < 2 or t_max <= 0:
        raise ValueError(f"need num_points >= 2 and t_max > 0, got {num_points} and {t_max}")
    x = projections.float()
    t = torch.linspace(0.0, t_max, num_points, device=x.device)  # (grid,)
    gaussian_cf = torch.exp(-0.5 * t**2)  # (grid,) characteristic function of N(0, 1), also the weight
    angles = x.unsqueeze(-1) * t  # (N, directions) -> (N, directions, grid)
    # Real and imaginary parts of the empirical characteristic function, kept real for portability.
    real = angles.cos().mean(dim=0)  # (directions, grid)
    imag = angles.sin().mean(dim=0)  # (directions, grid)
    error = ((real - gaussian_cf) ** 2 + imag**2) * gaussian_cf  # (directions, grid)
    return 2.0 * torch.trapezoid(error, t, dim=-1)  # (directions,)


def random_directions(dim: int, num_directions: int, generator: torch.Generator) -> torch.Tensor:
    """`num_directions` unit vectors uniform on the sphere in R^dim, drawn on the CPU from `generator`.

    Returns:
        (dim, num_directions) float32, each column of norm 1.
    """
    directions = torch.randn(dim, num_directions, generator=generator)  # (D, directions)
    return directions / directions.norm(dim=0, keepdim=True)


def sigreg(
    latents: torch.Tensor,
    generator: torch.Generator,
    num_directions: int = 256,
    num_points: int = 17,
    t_max: float = 5.0,
) -> torch.Tensor:
    """SIGReg loss: mean Epps-Pulley statistic of the latents projected on random unit directions.

    Args:
        latents: (N, D) a batch of latents, any device; differentiable.
        generator: a CPU generator; the directions are drawn from it afresh on every call (then moved to the
            latents' device), so the same generator state gives the same value.
        num_directions: random directions per call.
        num_points: grid points of the Epps-Pulley integral on [0, t_max].
        t_max: end of the integration grid.
    Returns:
        scalar float32 tensor, >= 0; about 1.06 / N for N(0, I) samples, about 0.41 for a batch collapsed
        onto the origin.
    """
    if latents.ndim != 2:
        raise ValueError(f"latents must be (N, D), got shape {tuple(latents.shape)}")
    if num_directions < 1:
        raise ValueError(f"num_directions must be >= 1, got {num_directions}")
    directions = random_directions(latents.shape[1], num_directions, generator).to(latents.device)  # (D, directions)
    projections = latents.float() @ directions  # (N, D) @ (D, directions) -> (N, directions)
    return epps_pulley(projections, num_points, t_max).mean()
