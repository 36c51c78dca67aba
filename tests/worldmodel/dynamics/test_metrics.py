"""World-model metrics: hand-worked oracles, equivalence with brute force, and the full evaluation."""

import math

import pytest
import torch

from worldmodel.dynamics.jepa import JEPAWorldModel
from worldmodel.dynamics.metrics import (
    collapse_metrics,
    cont_metrics,
    effective_rank,
    evaluate_world_model,
    no_change_error,
    normalized_mse,
    prediction_error_metrics,
    probe_features,
    reward_metrics,
    roc_auc,
    state_probe_r2,
    total_variance,
)
from worldmodel.dynamics.world_model import WorldModelBatch, open_loop_valid


def test_auc_hand_worked_cases():
    # Positives score 0.35 and 0.8, negatives 0.1 and 0.4: of the 4 (pos, neg) pairs 3 are ordered right.
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    # Ties count one half: positives {2, 3}, negatives {1, 2}: 1 + 0.5 + 1 + 1 = 3.5 of 4.
    assert roc_auc(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([0, 1, 0, 1])) == 0.875
    assert roc_auc(torch.tensor([0.0, 1.0]), torch.tensor([False, True])) == 1.0
    assert roc_auc(torch.tensor([1.0, 0.0]), torch.tensor([False, True])) == 0.0
    assert roc_auc(torch.tensor([5.0, 5.0, 5.0]), torch.tensor([1, 0, 1])) == 0.5
    assert math.isnan(roc_auc(torch.tensor([0.2, 0.7]), torch.tensor([1, 1])))
    assert math.isnan(roc_auc(torch.tensor([0.2, 0.7]), torch.tensor([0, 0])))


def test_auc_equals_counting_every_pair():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (200,), generator=generator).float()  # many ties
    labels = torch.rand(200, generator=generator) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    assert roc_auc(scores, labels) == pytest.approx(pairs.mean().item(), abs=1e-12)


def test_effective_rank_of_isotropic_rank_one_and_exact_cases():
    generator = torch.Generator().manual_seed(0)
    isotropic = torch.randn(4000, 8, generator=generator)
    assert 0.97 * 8 < effective_rank(isotropic) <= 8
    rank_one = torch.randn(500, 1, generator=generator) @ torch.randn(1, 8, generator=generator)
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-4)
    two_equal = torch.zeros(10, 4)
    two_equal[0, 0] = two_equal[1, 1] = 3.0  # singular values 3, 3, 0, 0: entropy log 2
    assert effective_rank(two_equal) == pytest.approx(2.0, abs=1e-4)


def test_collapse_metrics_flag_a_constant_batch():
    constant = collapse_metrics(torch.full((64, 4), 0.5), rank_threshold=1.5)
    assert constant["collapsed"] == 1.0 and constant["latent_std_min"] == 0.0
    assert constant["effective_rank"] == pytest.approx(1.0, abs=1e-4)
    spread = collapse_metrics(torch.randn(2, 300, 4, generator=torch.Generator().manual_seed(0)), 1.5)
    assert spread["collapsed"] == 0.0
    assert 0.9 < spread["latent_std_min"] <= spread["latent_std_mean"] < 1.1


def test_no_change_baseline_by_hand():
    targets = torch.tensor([0.0, 1.0, 3.0, 6.0]).view(1, 4, 1)
    # Population variance of 0, 1, 3, 6: mean 2.5, squared deviations 6.25 + 2.25 + 0.25 + 12.25 = 21, / 4.
    assert total_variance(targets).item() == 5.25
    # k = 1: steps 0->1, 1->3, 3->6 differ by 1, 2, 3: MSE (1 + 4 + 9) / 3.
    no_reset = torch.tensor([[True, False, False, False]])
    assert no_change_error(targets, no_reset, 1) == pytest.approx(14 / 3 / 5.25)
    # k = 2: 0->3, 1->6: (9 + 25) / 2.
    assert no_change_error(targets, no_reset, 2) == pytest.approx(17 / 5.25)
    # An episode starting at step 2 removes the pair 1->3 at k = 1 and every pair at k = 2.
    reset = torch.tensor([[True, False, True, False]])
    assert no_change_error(targets, reset, 1) == pytest.approx(5 / 5.25)
    assert math.isnan(no_change_error(targets, reset, 2))
    assert math.isnan(no_change_error(targets, no_reset, 4))  # no pair fits the window


def test_prediction_errors_use_the_same_pairs_for_model_and_baseline():
    targets = torch.tensor([0.0, 1.0, 3.0, 6.0]).view(1, 4, 1)
    is_first = torch.tensor([[True, False, True, False]])
    starts = torch.arange(3)
    valid = open_loop_valid(is_first, starts, 2)  # (1, 3, 2)
    # A perfect model: the prediction for start s at depth k is the target at s + k.
    index = (starts[:, None] + torch.arange(1, 3)).clamp(max=3)  # (S, H)
    perfect = targets[:, index]  # (1, 3, 2, 1)
    metrics = prediction_error_metrics(perfect, targets, starts, valid, ks=(1, 2))
    assert metrics["pred_error_k1"] == 0.0
    assert metrics["pred_error_k1_baseline"] == pytest.approx(no_change_error(targets, is_first, 1))
    assert math.isnan(metrics["pred_error_k2"]) and math.isnan(metrics["pred_error_k2_baseline"])
    off_by_one = prediction_error_metrics(perfect + 1, targets, starts, valid, ks=(1,))
    assert off_by_one["pred_error_k1"] == pytest.approx(1 / 5.25)
    with pytest.raises(ValueError, match="horizon"):
        prediction_error_metrics(perfect, targets, starts, valid, ks=(3,))


def test_reward_and_cont_metrics_by_hand():
    reward = reward_metrics(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0]))
    assert reward == {"reward_error": 2.0, "reward_error_baseline": 2.25}  # mean 2.5: (1.5^2 + 1.5^2) / 2
    assert reward_metrics(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0]), 0.0)["reward_error_baseline"] == 8.5
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])  # predicts cont 1, 0, 1, 0
    cont = cont_metrics(logits, torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert cont == {"cont_accuracy": 0.75, "cont_accuracy_baseline": 0.75, "cont_auc": 1.0, "cont_base_rate": 0.75}
    assert math.isnan(cont_metrics(logits, torch.ones(4))["cont_auc"])
    assert math.isnan(normalized_mse(torch.zeros(0, 2), torch.zeros(0, 2), 1.0))


def test_probe_features_and_r2_of_a_linear_code():
    generator = torch.Generator().manual_seed(0)
    state = torch.randn(6, 10, 3, generator=generator)  # (B, T, S)
    latents = state @ torch.randn(3, 5, generator=generator)  # a linear code of the state
    hidden = torch.randn(6, 10, 4, generator=generator)
    mask = torch.ones(6, 10, dtype=torch.bool)
    mask[:, 0] = False
    features = probe_features(latents, hidden, state, mask)
    assert features.z.shape == (54, 5) and features.z_h.shape == (54, 9) and features.state.shape == (54, 3)
    assert features.window.tolist() == [b for b in range(6) for _ in range(9)]
    torch.testing.assert_close(features.z_h[:, :5], features.z)
    r2 = state_probe_r2(features)
    assert r2["probe_r2_z"] > 0.99 and r2["probe_r2_zh"] > 0.99
    noise = state_probe_r2(probe_features(torch.randn(6, 10, 5, generator=generator), hidden, state))
    assert noise["probe_r2_z"] < 0.5


def test_evaluate_world_model_reports_every_metric():
    torch.manual_seed(0)
    model = JEPAWorldModel((5,), 2, latent_dim=8, hidden_dim=16, mlp_dim=16, ensemble_size=3)
    generator = torch.Generator().manual_seed(0)
    B, T = 4, 18
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    cont = torch.ones(B, T)
    cont[0, -1] = 0.0
    batch = WorldModelBatch(
        obs=torch.randn(B, T, 5, generator=generator),
        action=torch.randn(B, T, 2, generator=generator).masked_fill(is_first[..., None], 0.0),
        reward=torch.randn(B, T, generator=generator),
        cont=cont,
        is_first=is_first,
    )
    metrics = evaluate_world_model(model, batch, ks=(1, 5, 15), state=torch.randn(B, T, 3, generator=generator))
    expected = {f"pred_error_k{k}{suffix}" for k in (1, 5, 15) for suffix in ("", "_baseline")} | {
        "reward_error",
        "reward_error_baseline",
        "cont_accuracy",
        "cont_accuracy_baseline",
        "cont_auc",
        "cont_base_rate",
        "effective_rank",
        "latent_std_min",
        "latent_std_mean",
        "collapsed",
        "probe_r2_z",
        "probe_r2_zh",
    }
    assert set(metrics) == expected
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    # Every step is warm here (each window starts an episode), so the baseline is the plain no-change error.
    targets = model.targets(batch.obs)
    for k in (1, 5, 15):
        assert metrics[f"pred_error_k{k}_baseline"] == pytest.approx(no_change_error(targets, is_first, k))
    assert metrics["cont_base_rate"] == pytest.approx(1 - 1 / (B * T))
