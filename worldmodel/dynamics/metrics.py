"""World-model metrics, each beside a trivial baseline it has to beat.

Pure functions of tensors, plus `evaluate_world_model`, which runs a model on a batch and gathers them all:

    pred_error_k{k}, pred_error_k{k}_baseline   k-step open-loop latent error vs "the latent does not change"
    reward_error, reward_error_baseline         reward MSE vs predicting the mean reward
    cont_accuracy, cont_accuracy_baseline       continue-flag accuracy vs always guessing the majority class
    cont_auc, cont_base_rate                    ROC AUC of the continue logit (0.5 = chance), fraction of cont = 1
    effective_rank, latent_std_min, latent_std_mean, collapsed    collapse watch on z
    probe_r2_z, probe_r2_zh                     linear-probe R^2 of the true state from z and from [z, h]

Values are Python floats (NaN where undefined, e.g. no valid pairs or only one class), ready for logging.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from worldmodel.dynamics.world_model import WorldModel, WorldModelBatch, open_loop_valid, warm_mask
from worldmodel.perception.probe import linear_probe_r2, split_train_test


def total_variance(latents: torch.Tensor) -> torch.Tensor:
    """Sum over dims of the per-dim population variance: latents (..., D) -> scalar.

    The MSE of always predicting the mean latent, hence the natural unit of a latent prediction error.
    """
    flat = latents.reshape(-1, latents.shape[-1]).double()  # (..., D) -> (N, D)
    return flat.var(dim=0, unbiased=False).sum()


def normalized_mse(prediction: torch.Tensor, target: torch.Tensor, scale: torch.Tensor | float) -> float:
    """Mean over rows of ||prediction - target||^2 divided by `scale` (e.g. `total_variance` of the targets).

    Args:
        prediction, target: (N, D); scale: > 0.
    Returns:
        float; NaN when N = 0. 1 means as bad as predicting the mean latent.
    """
    if len(prediction) == 0:
        return float("nan")
    squared = (prediction.double() - target.double()).pow(2).sum(dim=-1)  # (N,)
    return (squared.mean() / scale).item()


def prediction_error_metrics(
    predicted: torch.Tensor,
    targets: torch.Tensor,
    starts: torch.Tensor,
    valid: torch.Tensor,
    ks: Sequence[int] = (1, 5, 15),
    scale: torch.Tensor | float | None = None,
) -> dict[str, float]:
    """k-step open-loop latent prediction error beside the no-change baseline, on the same pairs.

    For each k, pairs (s, s + k) with valid[:, s, k - 1]: the model's error compares predicted[:, s, k - 1]
    with targets[:, s + k]; the baseline's compares targets[:, s] (the latent does not change) with it.

    Args:
        predicted: (B, O, U) + (D,) open-loop predictions, [:, i, k - 1] for step starts[i] + k (U >= max(ks)).
        targets: (B, T, D) target latents.
        starts: (O,) int64 start steps.
        valid: (B, O, U) bool, e.g. `open_loop_valid`.
        scale: divisor of the MSE; default `total_variance(targets)`.
    Returns:
        {"pred_error_k{k}": float, "pred_error_k{k}_baseline": float} for each k (NaN when no pair is valid).
    """
    T = targets.shape[1]
    if max(ks) > predicted.shape[2] or min(ks) < 1:
        raise ValueError(f"ks must lie in [1, {predicted.shape[2]}] (the unrolled horizon), got {tuple(ks)}")
    scale = total_variance(targets) if scale is None else scale
    out = {}
    for k in ks:
        target_index = (starts + k).clamp(max=T - 1)  # (O,)
        pairs = valid[:, :, k - 1]  # (B, O)
        target = targets[:, target_index][pairs]  # (B, O, D) -> (N, D)
        out[f"pred_error_k{k}"] = normalized_mse(predicted[:, :, k - 1][pairs], target, scale)
        out[f"pred_error_k{k}_baseline"] = normalized_mse(targets[:, starts][pairs], target, scale)
    return out


def no_change_error(targets: torch.Tensor, is_first: torch.Tensor, k: int) -> float:
    """Normalised error of predicting z_{t+k} = z_t over every pair of one episode inside the windows.

    Args:
        targets: (B, T, D); is_first: (B, T) bool; k >= 1.
    Returns:
        float, MSE / `total_variance(targets)`; NaN when the windows are shorter than k + 1 steps.
    """
    T = targets.shape[1]
    starts = torch.arange(max(T - k, 0), device=targets.device)  # (O,)
    pairs = open_loop_valid(is_first, starts, k)[:, :, k - 1]  # (B, O)
    return normalized_mse(targets[:, starts][pairs], targets[:, starts + k][pairs], total_variance(targets))


def reward_metrics(
    predicted: torch.Tensor, target: torch.Tensor, baseline_value: float | None = None
) -> dict[str, float]:
    """Reward MSE beside the MSE of a constant prediction.

    Args:
        predicted, target: (N,).
        baseline_value: the constant, e.g. the mean reward of the training data; default the mean of `target`
            (then the baseline is the rewards' variance).
    Returns:
        {"reward_error", "reward_error_baseline"}; NaN when N = 0.
    """
    if len(target) == 0:
        return {"reward_error": float("nan"), "reward_error_baseline": float("nan")}
    target = target.double()
    constant = target.mean() if baseline_value is None else torch.tensor(float(baseline_value), dtype=torch.float64)
    return {
        "reward_error": (predicted.double() - target).pow(2).mean().item(),
        "reward_error_baseline": (constant.to(target.device) - target).pow(2).mean().item(),
    }


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve via the rank statistic (Mann-Whitney U), ties counted as one half.

    AUC = (sum of the positives' ranks - num_pos (num_pos + 1) / 2) / (num_pos num_neg), with average ranks for tied
    scores: the probability that a random positive scores above a random negative.

    Args:
        scores: (N,) float, higher means "positive".
        labels: (N,) bool or 0/1.
    Returns:
        float in [0, 1]; NaN when only one class is present.
    """
    scores, positive = scores.double().flatten(), labels.flatten().bool()
    num_pos = int(positive.sum())
    num_neg = len(positive) - num_pos
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    last_rank = counts.cumsum(dim=0).double()  # (distinct,) 1-based rank of each distinct score's last occurrence
    average_rank = last_rank - (counts.double() - 1) / 2  # (distinct,) mean of the ranks a group of ties spans
    rank_sum = average_rank[inverse][positive].sum().item()
    return (rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)


def cont_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """How well the continue head separates terminal from non-terminal steps.

    Args:
        logits: (N,) logits of cont = 1; target: (N,) 0/1 cont flags.
    Returns:
        {"cont_accuracy" (threshold 0.5), "cont_accuracy_baseline" (always the majority class),
        "cont_auc" (NaN with one class), "cont_base_rate" (fraction of cont = 1)}; NaN when N = 0.
    """
    if len(target) == 0:
        keys = ("cont_accuracy", "cont_accuracy_baseline", "cont_auc", "cont_base_rate")
        return dict.fromkeys(keys, float("nan"))
    positive = target.flatten() > 0.5
    base_rate = positive.double().mean().item()
    return {
        "cont_accuracy": ((logits.flatten() > 0) == positive).double().mean().item(),
        "cont_accuracy_baseline": max(base_rate, 1.0 - base_rate),
        "cont_auc": roc_auc(logits, positive),
        "cont_base_rate": base_rate,
    }


def effective_rank(latents: torch.Tensor) -> float:
    """RankMe effective rank: exp of the entropy of the normalised singular values of the (N, D) latents.

    Garrido et al., "RankMe", ICML 2023 (https://arxiv.org/abs/2210.02885): p_k = s_k / sum(s) + eps,
    rank = exp(-sum p_k log p_k). Not centred, as in the paper, so a batch collapsed onto one nonzero point
    has rank 1. About D for an isotropic sample with N >> D, 1 for a rank-1 sample.
    """
    singular = torch.linalg.svdvals(latents.double())  # (min(N, D),)
    p = singular / singular.sum().clamp(min=1e-300) + 1e-7
    return math.exp(-(p * p.log()).sum().item())


def collapse_metrics(latents: torch.Tensor, rank_threshold: float) -> dict[str, float]:
    """Collapse watch: effective rank and per-dim std of latents (..., D).

    Returns:
        {"effective_rank", "latent_std_min", "latent_std_mean", "collapsed"}; "collapsed" is 1.0 when the
        effective rank is below `rank_threshold`, else 0.0.
    """
    flat = latents.reshape(-1, latents.shape[-1]).double()  # (..., D) -> (N, D)
    std = flat.std(dim=0, unbiased=False)  # (D,)
    rank = effective_rank(flat)
    return {
        "effective_rank": rank,
        "latent_std_min": std.min().item(),
        "latent_std_mean": std.mean().item(),
        "collapsed": float(rank < rank_threshold),
    }


class ProbeFeatures(NamedTuple):
    """Rows for a linear probe of the true state, one per (window, step)."""

    z: torch.Tensor
    """(N, D) latents."""
    z_h: torch.Tensor
    """(N, D + hidden_dim) latents with the history state, what a controller sees."""
    state: torch.Tensor
    """(N, S) true states."""
    window: torch.Tensor
    """(N,) int64 window each row comes from, to split train and test by window (neighbours are alike)."""


def probe_features(
    latents: torch.Tensor, hidden: torch.Tensor, state: torch.Tensor, mask: torch.Tensor | None = None
) -> ProbeFeatures:
    """Flatten windows into probe rows.

    Args:
        latents: (B, T, D); hidden: (B, T, hidden_dim) from `WorldModel.observe`; state: (B, T, S).
        mask: (B, T) bool rows to keep (e.g. `warm_mask`), default all.
    """
    B, T = latents.shape[:2]
    mask = torch.ones(B, T, dtype=torch.bool, device=latents.device) if mask is None else mask
    window = torch.arange(B, device=latents.device)[:, None].expand(B, T)  # (B, T)
    z = latents.float()[mask]  # (B, T, D) -> (N, D)
    return ProbeFeatures(
        z=z,
        z_h=torch.cat([z, hidden.float()[mask]], dim=-1),  # (N, D + hidden_dim)
        state=state.float()[mask],  # (B, T, S) -> (N, S)
        window=window[mask],
    )


def state_probe_r2(features: ProbeFeatures, test_fraction: float = 0.25, seed: int = 0) -> dict[str, float]:
    """Linear-probe R^2 of the true state from z and from [z, h], windows split into train and test.

    Needs at least 2 windows and 4 training rows. Returns {"probe_r2_z", "probe_r2_zh"}.
    """
    windows = torch.unique(features.window)
    train_windows, test_windows = split_train_test(len(windows), test_fraction, seed)
    is_test = torch.isin(features.window, windows[test_windows.to(windows.device)])  # (N,)
    out = {}
    for name, x in (("probe_r2_z", features.z), ("probe_r2_zh", features.z_h)):
        result = linear_probe_r2(x[~is_test], features.state[~is_test], x[is_test], features.state[is_test], seed=seed)
        out[name] = result.mean
    return out


@torch.no_grad()
def evaluate_world_model(
    model: WorldModel,
    batch: WorldModelBatch,
    ks: Sequence[int] = (1, 5, 15),
    burn_in: int = 0,
    rank_threshold: float = 2.0,
    reward_baseline: float | None = None,
    state: torch.Tensor | None = None,
) -> dict[str, float]:
    """All metrics of a model on a batch of windows (T >= burn_in + max(ks) + 1 for every k to count).

    Open-loop starts are the warm steps (see `warm_mask`), unrolled max(ks) steps as in training; reward and
    continue are scored at the warm teacher-forced states (h_t, real z_t); collapse on the online z of every step. A
    stochastic model's real z are its posterior's means and its open-loop predictions its prior's means
    (`WorldModel.real_states`, `WorldModel.step`).

    Args:
        model: the world model (left in whatever train/eval mode it is in).
        batch: windows, T steps.
        ks: open-loop depths to report.
        burn_in: as in `WorldModel.loss`.
        rank_threshold: effective rank below which "collapsed" is 1.
        reward_baseline: constant reward prediction to compare with (e.g. the training mean); default the
            batch's mean.
        state: (B, T, S) true states, to add linear-probe R^2 (needs B >= 2).
    """
    hidden, z, z_target = model.real_states(batch)  # (B, T, hidden_dim), (B, T, D), (B, T, D)
    warm = warm_mask(batch.is_first, burn_in)  # (B, T)
    T = z.shape[1]
    starts = torch.arange(T - 1, device=z.device)  # (O,)
    roll = model.open_loop(hidden, z, batch.action, batch.is_first, starts, max(ks), from_start=warm[:, :-1])
    metrics = prediction_error_metrics(roll.dense(roll.latent), z_target, starts, roll.unrolled, ks)
    metrics.update(reward_metrics(model.reward(hidden, z)[warm], batch.reward[warm], reward_baseline))
    metrics.update(cont_metrics(model.cont(hidden, z)[warm], batch.cont[warm]))
    metrics.update(collapse_metrics(z, rank_threshold))
    if state is not None:
        metrics.update(state_probe_r2(probe_features(z, hidden, state, warm)))
    return metrics
