"""Frozen-feature probes: hand-worked oracles, known-answer regressions, shapes and determinism."""

import math

import pytest
import torch

from worldmodel.perception.probe import (
    ProbeR2,
    knn_predict,
    knn_top1,
    linear_probe_accuracy,
    linear_probe_r2,
    split_by_groups,
    split_train_test,
)


def test_knn_hand_worked_case():
    # Train points on the unit circle at 0, 10, 80 and 90 degrees; classes 0, 0, 1, 1... except 10 deg
    # is class 1, so the nearest neighbour and the weighted vote disagree for a query at 0 degrees.
    angles = torch.tensor([0.0, 10.0, 80.0, 90.0]) * math.pi / 180
    train_x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [2.0], [3.0], [0.5]])
    train_y = torch.tensor([0, 1, 1, 1])
    query = torch.tensor([[2.0, 0.0]])  # 0 degrees; scale must not matter (cosine)
    # k = 1: the point at 0 degrees (class 0).
    assert knn_predict(train_x, train_y, query, num_classes=2, k=1).tolist() == [0]
    # k = 2, T = 0.07: weights exp(cos 0 / T) = exp(14.29) for class 0 and exp(cos 10deg / T) = exp(14.07)
    # for class 1: class 0 still wins.
    assert knn_predict(train_x, train_y, query, num_classes=2, k=2, temperature=0.07).tolist() == [0]
    # k = 3, T = 0.07: class 1 gets exp(cos 10deg / T) + exp(cos 80deg / T) = e^14.07 + e^2.48 < e^14.29.
    assert knn_predict(train_x, train_y, query, num_classes=2, k=3, temperature=0.07).tolist() == [0]
    # k = 3, T = 10 (almost flat weights): class 1 has two votes of ~e^0.1 against one of e^0.1: class 1.
    assert knn_predict(train_x, train_y, query, num_classes=2, k=3, temperature=10.0).tolist() == [1]
    test_y = torch.tensor([1])
    assert knn_top1(train_x, train_y, query, test_y, k=3, temperature=10.0) == 1.0
    assert knn_top1(train_x, train_y, query, test_y, k=1) == 0.0


def test_knn_chunking_and_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=generator) * 3
    labels = torch.arange(5).repeat_interleave(40)  # (200,)
    x = centres[labels] + torch.randn(200, 16, generator=generator)
    train_idx, test_idx = split_train_test(200, 0.25, seed=0)
    accuracy = knn_top1(x[train_idx], labels[train_idx], x[test_idx], labels[test_idx], k=10)
    assert accuracy > 0.9
    # Chunking over test points is a memory bound only: same predictions for any chunk size.
    full = knn_predict(x[train_idx], labels[train_idx], x[test_idx], num_classes=5, chunk=1024)
    chunked = knn_predict(x[train_idx], labels[train_idx], x[test_idx], num_classes=5, chunk=7)
    assert torch.equal(full, chunked) and full.shape == (50,) and full.dtype == torch.int64


def test_split_train_test_is_a_seeded_partition():
    train, test = split_train_test(103, 0.2, seed=4)
    assert len(test) == round(103 * 0.2) and len(train) + len(test) == 103
    assert sorted(torch.cat([train, test]).tolist()) == list(range(103))
    assert torch.equal(split_train_test(103, 0.2, seed=4)[1], test)
    assert not torch.equal(split_train_test(103, 0.2, seed=5)[1], test)
    with pytest.raises(ValueError, match="test_fraction"):
        split_train_test(10, 1.0, seed=0)


def test_linear_probe_separable_data_is_perfect_and_deterministic():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(400, 8, generator=generator) * 5 + 2  # an offset and scale the standardisation removes
    scores = x @ torch.randn(8, 3, generator=generator)  # (400, 3)
    # Keep points with a clear margin between the best and second class, so the classes are separable
    # with room to spare and any near-optimal plane also classifies the test points right.
    best_two = scores.topk(2, dim=1).values
    keep = best_two[:, 0] - best_two[:, 1] > 2.0
    x, y = x[keep], scores[keep].argmax(dim=1)
    assert len(x) > 250 and len(y.unique()) == 3
    train_idx, test_idx = split_train_test(len(x), 0.3, seed=0)
    args = (x[train_idx], y[train_idx], x[test_idx], y[test_idx])
    first = linear_probe_accuracy(*args, num_classes=3, weight_decay=1e-6, steps=300)
    assert first == 1.0
    assert linear_probe_accuracy(*args, num_classes=3, weight_decay=1e-6, steps=300) == first


def test_linear_probe_random_labels_are_near_chance():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1200, 16, generator=generator)
    y = torch.randint(0, 4, (1200,), generator=generator)
    train_idx, test_idx = split_train_test(1200, 0.5, seed=0)
    accuracy = linear_probe_accuracy(x[train_idx], y[train_idx], x[test_idx], y[test_idx], num_classes=4)
    # Chance is 0.25; with 600 test points the standard error is ~0.018.
    assert 0.15 < accuracy < 0.35
    with pytest.raises(ValueError, match="num_classes"):
        linear_probe_accuracy(x[train_idx], y[train_idx], x[test_idx], y[test_idx], num_classes=3)


def test_r2_exact_linear_target_is_one():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(400, 12, generator=generator) * 4 - 1
    weights = torch.randn(12, 3, generator=generator)
    states = x @ weights + torch.tensor([1.0, -2.0, 0.5])  # (400, 3) with an intercept
    train_idx, test_idx = split_train_test(400, 0.25, seed=0)
    result = linear_probe_r2(x[train_idx], states[train_idx], x[test_idx], states[test_idx])
    assert isinstance(result, ProbeR2)
    assert len(result.per_dim) == 3
    assert result.mean == pytest.approx(1.0, abs=1e-4)
    assert result.alpha == 1e-6  # the smallest penalty fits a noiseless target best


def test_r2_independent_noise_is_near_zero_and_constant_dims_are_excluded():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2000, 8, generator=generator)
    noise = torch.randn(2000, 2, generator=generator)
    states = torch.cat([noise, torch.full((2000, 1), 3.0)], dim=1)  # third dim constant
    train_idx, test_idx = split_train_test(2000, 0.5, seed=0)
    result = linear_probe_r2(x[train_idx], states[train_idx], x[test_idx], states[test_idx])
    assert math.isnan(result.per_dim[2])
    assert all(-0.05 < r2 <= 0.02 for r2 in result.per_dim[:2])
    assert result.mean == pytest.approx(sum(result.per_dim[:2]) / 2)
    again = linear_probe_r2(x[train_idx], states[train_idx], x[test_idx], states[test_idx])
    assert again.mean == result.mean and again.alpha == result.alpha


def test_probe_input_errors_name_the_problem():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="NaN or inf"):
        knn_top1(x, torch.zeros(10, dtype=torch.int64), x * float("nan"), torch.zeros(10, dtype=torch.int64))
    with pytest.raises(ValueError, match="train_y must have shape"):
        linear_probe_r2(x, torch.randn(9, 2), x, torch.randn(10, 2))


def test_a_split_by_groups_keeps_every_group_whole_reaches_the_fraction_and_repeats_with_its_seed():
    groups = torch.repeat_interleave(torch.arange(20), torch.arange(1, 21))  # 20 episodes of 1 to 20 frames
    train, test = split_by_groups(groups, 0.25, seed=3)
    assert torch.equal(torch.sort(torch.cat([train, test])).values, torch.arange(len(groups)))
    assert not set(groups[train].tolist()) & set(groups[test].tolist())  # no episode on both sides
    assert len(test) >= round(0.25 * len(groups)) and len(train) > 0
    again = split_by_groups(groups, 0.25, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], test)
    assert not torch.equal(split_by_groups(groups, 0.25, seed=4)[1], test)
    # However large the fraction, one group stays to fit on.
    assert len(set(groups[split_by_groups(groups, 0.99, seed=0)[0]].tolist())) == 1


@pytest.mark.parametrize(
    ("groups", "fraction", "message"),
    [
        (torch.zeros(5, dtype=torch.int64), 0.25, "at least 2 distinct groups"),
        (torch.arange(5.0), 0.25, "groups must be a 1-D integer tensor"),
        (torch.arange(5), 1.0, "test_fraction must be in"),
    ],
)
def test_a_split_by_groups_refuses_what_it_cannot_split(groups, fraction, message):
    with pytest.raises(ValueError, match=message):
        split_by_groups(groups, fraction, seed=0)
