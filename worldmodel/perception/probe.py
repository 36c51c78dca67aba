"""Evaluation of an encoder on frozen features: k-NN, linear classification and linear-probe R^2.

Pure, deterministic functions of feature tensors (same inputs on the same device and thread count
give the same result). Features are float `(N, F)`; labels `(N,)` int64; states `(N, S)` float; train and
test sets each have their own N.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


def _check_features(name: str, x: torch.Tensor) -> None:
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor (N, F), got dtype {x.dtype} and shape {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError(f"{name} is empty; a probe needs at least one row")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf; probe features must be finite")


def _check_pair(prefix: str, x: torch.Tensor, y: torch.Tensor, target_ndim: int) -> None:
    _check_features(f"{prefix}_x", x)
    if y.ndim != target_ndim or len(y) != len(x):
        expected = "(N,)" if target_ndim == 1 else "(N, S)"
        raise ValueError(
            f"{prefix}_y must have shape {expected} with N = len({prefix}_x) = {len(x)}, got {tuple(y.shape)}"
        )


def split_train_test(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of range(n).

    Args:
        n: number of items, >= 2.
        test_fraction: in (0, 1); the test part has round(n * test_fraction) items, clamped to [1, n - 1].
        seed: seed of numpy's generator, >= 0.
    Returns:
        train_idx and test_idx, (n_train,) and (n_test,) int64, each sorted, disjoint, covering range(n).
    """
    if n < 2:
        raise ValueError(f"n must be >= 2 to split into train and test, got {n}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    num_test = min(max(round(n * test_fraction), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    test_idx = torch.from_numpy(np.sort(order[:num_test])).to(torch.int64)
    train_idx = torch.from_numpy(np.sort(order[num_test:])).to(torch.int64)
    return train_idx, test_idx


def split_by_groups(groups: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of range(n) that keeps each group whole (an episode's frames look alike: a probe scored on
    frames of the episodes it was fitted on measures memory, not reading).

    Args:
        groups: (n,) integer group of each item (e.g. its episode), at least two distinct.
        test_fraction: in (0, 1); whole groups, in a seeded random order, go to the test part until it holds at least
            round(n * test_fraction) items, and at least one group stays in each part.
        seed: seed of numpy's generator, >= 0.
    Returns:
        train_idx and test_idx as `split_train_test` gives them; no group in both.
    """
    groups = torch.as_tensor(groups)
    if groups.ndim != 1 or groups.is_floating_point():
        raise ValueError(
            f"groups must be a 1-D integer tensor, got dtype {groups.dtype} and shape {tuple(groups.shape)}"
        )
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    names, sizes = torch.unique(groups, return_counts=True)
    if len(names) < 2:
        raise ValueError(f"groups must hold at least 2 distinct groups to split into train and test, got {len(names)}")
    order = np.random.default_rng(seed).permutation(len(names))
    wanted = max(round(len(groups) * test_fraction), 1)
    held = np.searchsorted(np.cumsum(sizes.numpy()[order]), wanted) + 1  # groups until the test part is large enough
    is_test = torch.isin(groups, names[order[: min(held, len(names) - 1)]])
    return torch.nonzero(~is_test).flatten(), torch.nonzero(is_test).flatten()


@torch.no_grad()
def knn_predict(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted k-NN class predictions with cosine similarity (DINO's k-NN evaluation).

    Each of the k most similar training points votes for its class with weight exp(similarity /
    temperature); the class with the largest total wins (ties: the smaller class id).
    See https://github.com/facebookresearch/dino/blob/main/eval_knn.py.

    Args:
        train_x: (N, F), train_y: (N,) int64 in [0, num_classes), test_x: (N, F) with the test set's N.
        k: neighbours, clamped to the training rows.
        chunk: test points per similarity block, bounding memory at chunk x training rows.
    Returns:
        (N,) int64 predicted classes, one per test row.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    k = min(k, len(train_x))
    train_unit = F.normalize(train_x.float(), dim=1)  # (N, F) train
    test_unit = F.normalize(test_x.float().to(train_x.device), dim=1)  # (N, F) test
    train_y = train_y.to(train_x.device)
    predictions = []
    for start in range(0, len(test_unit), chunk):
        similarity = test_unit[start : start + chunk] @ train_unit.T  # (chunk, N train)
        top_similarity, top_index = similarity.topk(k, dim=1)  # (chunk, k neighbours)
        weights = (top_similarity / temperature).exp()  # (chunk, k neighbours)
        votes = torch.zeros(len(similarity), num_classes, device=similarity.device)  # (chunk, classes)
        votes.scatter_add_(1, train_y[top_index], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def knn_top1(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of weighted cosine k-NN (see `knn_predict`).

    Args:
        train_x: (N, F), train_y: (N,); test_x: (N, F), test_y: (N,) with the test set's N; int64 class ids >= 0.
    Returns:
        accuracy in [0, 1].
    """
    _check_pair("train", train_x, train_y, 1)
    _check_pair("test", test_x, test_y, 1)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    predictions = knn_predict(train_x, train_y, test_x, num_classes, k, temperature)
    return (predictions.cpu() == test_y.cpu()).float().mean().item()


def _standardize(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero mean, unit variance per feature with train statistics; constant features stay at zero."""
    mean = train_x.mean(dim=0)
    std = train_x.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-8 * (1 + mean.abs()), std, torch.ones_like(std))
    return (train_x - mean) / std, (test_x - mean) / std


def linear_probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    weight_decay: float = 1e-4,
    steps: int = 200,
) -> float:
    """Test accuracy of multinomial logistic regression on standardised frozen features.

    Features are standardised with train statistics only; the model minimises mean cross-entropy +
    weight_decay / 2 * ||W||^2 (bias not decayed) by full-batch L-BFGS with a strong-Wolfe line
    search from zero weights, which is deterministic (no minibatch sampling, no random init).

    Args:
        train_x: (N, F), train_y: (N,); test_x: (N, F), test_y: (N,) with the test set's N; int64 in [0, num_classes).
        weight_decay: L2 coefficient on the weights, >= 0.
        steps: maximum L-BFGS iterations.
    Returns:
        accuracy in [0, 1].
    """
    _check_pair("train", train_x, train_y, 1)
    _check_pair("test", test_x, test_y, 1)
    for name, labels in (("train_y", train_y), ("test_y", test_y)):
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ValueError(
                f"{name} must hold class ids in [0, num_classes={num_classes}), got ids from {int(labels.min())} "
                f"to {int(labels.max())}"
            )
    if weight_decay < 0 or steps < 1:
        raise ValueError(f"need weight_decay >= 0 and steps >= 1, got {weight_decay} and {steps}")
    device = train_x.device
    train_z, test_z = _standardize(train_x.float(), test_x.float().to(device))  # (N, F) train, (N, F) test
    train_y = train_y.to(device)
    weight = torch.zeros(train_z.shape[1], num_classes, device=device, requires_grad=True)  # (F, classes)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=steps,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = train_z @ weight + bias  # (N, classes)
        loss = F.cross_entropy(logits, train_y) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)  # one step runs up to `steps` L-BFGS iterations
    with torch.no_grad():
        predictions = (test_z @ weight + bias).argmax(dim=1)  # (N,) test
    return (predictions.cpu() == test_y.cpu()).float().mean().item()


class ProbeR2(NamedTuple):
    """Result of `linear_probe_r2`."""

    mean: float
    """R^2 averaged over the state dims that are not constant on the test set (NaN if all are)."""
    per_dim: list[float]
    """(S,) R^2 per state dim; NaN for a dim that is constant on the test set (R^2 undefined)."""
    alpha: float
    """The ridge penalty chosen on the held-out part of train."""


def _r2_per_dim(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - SSE / SST per column, SST about the target's own mean; NaN for constant columns.

    Args:
        prediction, target: (N, S) float64.
    Returns:
        (S,) float64.
    """
    mean = target.mean(dim=0)
    sst = (target - mean).pow(2).sum(dim=0)  # (S,)
    sse = (target - prediction).pow(2).sum(dim=0)
    # A column is constant when its spread is at rounding level relative to its magnitude.
    constant = sst <= (1e-12 * (1 + mean.abs())) ** 2 * len(target)
    r2 = 1 - sse / torch.where(constant, torch.ones_like(sst), sst)
    return torch.where(constant, torch.full_like(r2, float("nan")), r2)


class _Ridge:
    """Ridge regression with intercept on standardised features, solved for many alphas via one SVD."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # x: (N, F) float64 standardised; y: (N, S) float64.
        self.y_mean = y.mean(dim=0)  # (S,) the intercept: features are centred, so it is the target mean
        self.u, self.s, self.vh = torch.linalg.svd(x, full_matrices=False)  # (N, rank), (rank,), (rank, F)
        self.uty = self.u.T @ (y - self.y_mean)  # (rank, S)
        self.n = len(x)

    def coefficients(self, alpha: float) -> torch.Tensor:
        """(F, S) minimiser of ||X W - Y||^2 / N + alpha ||W||^2."""
        shrink = self.s / (self.s.pow(2) + alpha * self.n)  # (rank,)
        return self.vh.T @ (shrink[:, None] * self.uty)  # (F, rank) @ (rank, S) -> (F, S)

    def predict(self, x: torch.Tensor, alpha: float) -> torch.Tensor:
        return x @ self.coefficients(alpha) + self.y_mean  # (N, S)


def linear_probe_r2(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    alphas: tuple[float, ...] = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0),
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> ProbeR2:
    """How well a linear map of frozen features predicts true states: ridge regression, R^2 on test.

    Features are standardised with train statistics. The ridge objective is mean squared error +
    alpha * ||W||^2 (intercept not penalised), so alpha does not depend on the number of samples; it is
    chosen from `alphas` by mean R^2 on a held-out `validation_fraction` of train (seeded split), then
    the model is refit on all of train. R^2 per dim = 1 - SSE / SST on test, SST about the test mean.
    A state dim that is constant on the test set has no defined R^2: it gets NaN in `per_dim` and is
    left out of `mean` (likewise for alpha selection). Computed in float64.

    Args:
        train_x: (N, F), train_y: (N, S) or (N,); test_x: (N, F), test_y: (N, S) or (N,) with the test set's N.
        alphas: candidate penalties, > 0.
    Returns:
        ProbeR2(mean, per_dim, alpha).
    """
    if train_y.ndim == 1:
        train_y = train_y[:, None]  # (N,) -> (N, 1)
    if test_y.ndim == 1:
        test_y = test_y[:, None]
    _check_pair("train", train_x, train_y, 2)
    _check_pair("test", test_x, test_y, 2)
    if train_y.shape[1] != test_y.shape[1] or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"train and test must have the same feature and state dims, got x {train_x.shape[1]} vs "
            f"{test_x.shape[1]} and y {train_y.shape[1]} vs {test_y.shape[1]}"
        )
    if not alphas or min(alphas) <= 0:
        raise ValueError(f"alphas must be a non-empty tuple of positive penalties, got {alphas}")
    if len(train_x) < 4:
        raise ValueError(f"need at least 4 training rows to hold some out for choosing alpha, got {len(train_x)}")
    device = train_x.device
    train_x, train_y = train_x.double(), train_y.to(device).double()
    test_x, test_y = test_x.to(device).double(), test_y.to(device).double()

    fit_idx, val_idx = split_train_test(len(train_x), validation_fraction, seed)
    fit_idx, val_idx = fit_idx.to(device), val_idx.to(device)
    fit_z, val_z = _standardize(train_x[fit_idx], train_x[val_idx])
    ridge = _Ridge(fit_z, train_y[fit_idx])
    best_alpha, best_score = alphas[0], -float("inf")
    for alpha in alphas:
        scores = _r2_per_dim(ridge.predict(val_z, alpha), train_y[val_idx])
        score = scores.nanmean().item() if not scores.isnan().all() else -float("inf")
        if score > best_score:  # strict: among equal scores the first (smallest listed) alpha wins
            best_alpha, best_score = alpha, score

    train_z, test_z = _standardize(train_x, test_x)
    per_dim = _r2_per_dim(_Ridge(train_z, train_y).predict(test_z, best_alpha), test_y)  # (S,)
    mean = per_dim.nanmean().item() if not per_dim.isnan().all() else float("nan")
    return ProbeR2(mean=mean, per_dim=per_dim.cpu().tolist(), alpha=float(best_alpha))
