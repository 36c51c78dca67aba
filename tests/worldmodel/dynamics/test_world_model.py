"""The JEPA world model: shapes, equivalence of the open-loop paths with stepping by hand, resets, EMA,
truncation, determinism, save/load, overfitting one batch, loss-weight checks."""

import io
from collections import namedtuple

import numpy as np
import pytest
import torch

from worldmodel.dynamics.jepa import JEPAWorldModel
from worldmodel.dynamics.world_model import (
    WorldModel,
    WorldModelBatch,
    batch_from_windows,
    combine_losses,
    open_loop_valid,
    warm_mask,
)
from worldmodel.perception.vit import VisionTransformer

TINY = dict(latent_dim=8, hidden_dim=16, mlp_dim=16, ensemble_size=3)
PIXELS_MICRO = dict(TINY, vit_size="micro", image_size=16, patch_size=8)


def make_batch(
    obs_shape: tuple[int, ...],
    action_dim: int = 2,
    batch: int = 3,
    time: int = 8,
    seed: int = 0,
    firsts: tuple[tuple[int, int], ...] = ((0, 0), (1, 4)),
) -> WorldModelBatch:
    """Random windows; `firsts` lists (window, step) pairs with is_first (zero action and reward there)."""
    generator = torch.Generator().manual_seed(seed)
    if len(obs_shape) == 3:
        obs = torch.randint(0, 256, (batch, time, *obs_shape), generator=generator, dtype=torch.uint8)
    else:
        obs = torch.randn(batch, time, *obs_shape, generator=generator)
    is_first = torch.zeros(batch, time, dtype=torch.bool)
    for b, t in firsts:
        is_first[b, t] = True
    action = torch.randn(batch, time, action_dim, generator=generator).masked_fill(is_first[..., None], 0.0)
    reward = torch.randn(batch, time, generator=generator).masked_fill(is_first, 0.0)
    cont = (torch.rand(batch, time, generator=generator) > 0.3).float().masked_fill(is_first, 1.0)
    return WorldModelBatch(obs, action, reward, cont, is_first)


def all_weights(model: WorldModel) -> dict[str, float]:
    return dict.fromkeys(model.loss_keys, 1.0)


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "obs_shape, options",
    [
        ((5,), dict(TINY)),
        ((5,), dict(TINY, collapse_guard="sigreg")),
        ((16, 16, 3), dict(PIXELS_MICRO)),
        ((24, 24, 3), dict(PIXELS_MICRO, collapse_guard="sigreg", freeze_encoder=True)),  # resized to 16
        ((32, 32, 3), dict(TINY, vit_size="mini", image_size=32, patch_size=16)),
    ],
)
def test_shapes_of_every_head(obs_shape, options):
    torch.manual_seed(0)
    model = JEPAWorldModel(obs_shape, 2, **options)
    batch = make_batch(obs_shape, time=5)
    B, T, D, Hd, K = 3, 5, 8, 16, 3
    assert model.encode(batch.obs).shape == (B, T, D)
    assert model.encode(batch.obs[:, 0]).shape == (B, D)  # any leading dims
    assert model.targets(batch.obs).shape == (B, T, D)
    assert model.encode_features(batch.obs).shape == (B, T, model.feature_dim)
    h = model.initial_state(B)
    z = model.encode(batch.obs[:, 0])
    h_next, z_pred = model.step(h, z, batch.action[:, 1])
    assert h.shape == h_next.shape == (B, Hd) and z_pred.shape == (B, D)
    assert model.reward(h_next, z_pred).shape == (B,)
    assert model.cont(h_next, z_pred).shape == (B,)
    assert model.ensemble(h_next).shape == (K, B, D)
    assert model.disagreement(h_next).shape == (B,)
    hidden, predicted = model.observe(model.encode(batch.obs), batch.action, batch.is_first)
    assert hidden.shape == (B, T, Hd) and predicted.shape == (B, T, D)
    dream = model.imagine(h, z, torch.randn(B, 4, 2))
    assert dream.latent.shape == (B, 4, D) and dream.hidden.shape == (B, 4, Hd)
    assert dream.reward.shape == dream.cont.shape == dream.disagreement.shape == (B, 4)
    assert ((dream.cont > 0) & (dream.cont < 1)).all() and (dream.disagreement >= 0).all()
    losses = model.loss(batch, horizon=3, burn_in=1, generator=torch.Generator().manual_seed(0))
    assert tuple(losses) == model.loss_keys
    assert all(v.shape == () and torch.isfinite(v) for v in losses.values())
    combine_losses(losses, all_weights(model)).backward()


def test_frozen_encoder_accepts_precomputed_features_with_identical_losses():
    for guard in ("ema", "sigreg"):
        torch.manual_seed(0)
        model = JEPAWorldModel((16, 16, 3), 2, **PIXELS_MICRO, collapse_guard=guard, freeze_encoder=True)
        batch = make_batch((16, 16, 3))
        features = model.encode_features(batch.obs)  # (B, T, F), what the episode store caches
        assert not features.requires_grad
        from_obs = model.loss(batch, 3, generator=torch.Generator().manual_seed(0))
        from_features = model.loss(
            batch._replace(obs=None, features=features), 3, generator=torch.Generator().manual_seed(0)
        )
        for key in model.loss_keys:
            torch.testing.assert_close(from_obs[key], from_features[key])
        combine_losses(from_features, all_weights(model)).backward()
        assert all(p.grad is None for p in model.backbone.parameters())  # frozen
        assert model.projection.weight.grad is not None  # the projection still learns


def test_features_need_a_frozen_encoder_and_pixels_need_uint8():
    model = JEPAWorldModel((16, 16, 3), 2, **PIXELS_MICRO)
    with pytest.raises(ValueError, match="freeze_encoder"):
        model.encode(features=torch.zeros(2, model.feature_dim))
    with pytest.raises(ValueError, match="uint8"):
        model.encode(torch.zeros(2, 16, 16, 3))
    with pytest.raises(ValueError, match="shape"):
        model.encode(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="collapse_guard"):
        JEPAWorldModel((4,), 2, collapse_guard="vicreg")
    with pytest.raises(ValueError, match="obs_shape"):
        JEPAWorldModel((4, 4), 2)
    with pytest.raises(ValueError, match="ensemble_size"):
        JEPAWorldModel((4,), 2, ensemble_size=1)


# ---------------------------------------------------------------------------------------------- equivalence


def test_imagine_equals_stepping_by_hand():
    torch.manual_seed(0)
    model = JEPAWorldModel((5,), 2, **TINY)
    h, z = torch.randn(4, 16), torch.randn(4, 8)
    actions = torch.randn(4, 6, 2)
    dream = model.imagine(h, z, actions)
    for i in range(6):
        h, z = model.step(h, z, actions[:, i])
        torch.testing.assert_close(dream.latent[:, i], z)
        torch.testing.assert_close(dream.hidden[:, i], h)
        torch.testing.assert_close(dream.reward[:, i], model.reward(h, z))
        torch.testing.assert_close(dream.cont[:, i], torch.sigmoid(model.cont(h, z)))
        members = model.ensemble(h)  # (K, B, D)
        disagreement = ((members - members.mean(dim=0)) ** 2).mean(dim=(0, 2))
        torch.testing.assert_close(dream.disagreement[:, i], disagreement)


def test_observe_resets_at_is_first_and_matches_stepping_by_hand():
    torch.manual_seed(0)
    model = JEPAWorldModel((5,), 2, **TINY)
    batch = make_batch((5,), batch=2, time=7, firsts=((0, 0), (0, 3), (1, 5)))
    z = model.encode(batch.obs)
    hidden, predicted = model.observe(z, batch.action, batch.is_first)
    for b in range(2):
        h, z_prev = model.initial_state(1), torch.zeros(1, 8)
        for t in range(7):
            if batch.is_first[b, t]:
                h, z_prev = model.initial_state(1), torch.zeros(1, 8)
            h, z_pred = model.step(h, z_prev, batch.action[b, t][None])
            torch.testing.assert_close(hidden[b, t], h[0])
            torch.testing.assert_close(predicted[b, t], z_pred[0])
            z_prev = z[b, t][None]
    # After the reset at step 3, window 0 does not depend on what came before: observe the suffix alone.
    suffix, _ = model.observe(z[:1, 3:], batch.action[:1, 3:], batch.is_first[:1, 3:])
    torch.testing.assert_close(hidden[:1, 3:], suffix)
    # And the state at is_first is the episode-start state whatever came before.
    start, _ = model.step(model.initial_state(1), torch.zeros(1, 8), torch.zeros(1, 2))
    torch.testing.assert_close(hidden[0, 3], start[0])
    torch.testing.assert_close(hidden[1, 5], start[0])
    assert not torch.allclose(hidden[1, 4], start[0])
    # Continuing from the previous window's last step equals observing the whole window at once.
    head, _ = model.observe(z[:, :2], batch.action[:, :2], batch.is_first[:, :2])
    tail, _ = model.observe(z[:, 2:], batch.action[:, 2:], batch.is_first[:, 2:], initial=(head[:, -1], z[:, 1]))
    torch.testing.assert_close(torch.cat([head, tail], dim=1), hidden)


def test_valid_and_warm_masks_by_hand():
    is_first = torch.tensor([[True, False, False, True, False]])
    valid = open_loop_valid(is_first, torch.tensor([0, 2, 3]), 2)  # (1, 3, 2)
    # start 0: steps 1, 2 ok; start 2: step 3 is a new episode; start 3: step 4 ok, step 5 outside the window.
    assert valid[0].tolist() == [[True, True], [False, False], [True, False]]
    assert warm_mask(torch.tensor([[False, False, True, False]]), 3).tolist() == [[False, False, True, True]]
    assert warm_mask(torch.tensor([[False, False, False, False]]), 1).tolist() == [[False, True, True, True]]


def test_open_loop_unrolls_only_the_valid_pairs_of_the_chosen_starts_as_stepping_by_hand():
    torch.manual_seed(0)
    model = JEPAWorldModel((5,), 2, **TINY)
    batch = make_batch((5,), batch=3, time=7, firsts=((0, 0), (1, 2), (1, 5), (2, 3)))
    z, _ = model.latents(batch)
    hidden, _ = model.observe(z, batch.action, batch.is_first)
    starts, horizon = torch.tensor([0, 1, 3, 4, 6]), 3
    chosen = torch.rand(3, len(starts), generator=torch.Generator().manual_seed(1)) > 0.3  # (B, S)
    roll = model.open_loop(hidden, z, batch.action, batch.is_first, starts, horizon, from_start=chosen)

    expected = open_loop_valid(batch.is_first, starts, horizon) & chosen[:, :, None]
    assert torch.equal(roll.unrolled, expected) and 0 < len(roll.pair) == int(expected.sum()) < expected.numel()
    assert torch.equal(roll.dense(torch.ones(len(roll.pair))).bool(), expected)
    by_pair = {int(p): i for i, p in enumerate(roll.pair)}
    for b in range(3):
        for i, s in enumerate(starts.tolist()):
            h, z_hat = hidden[b, s][None], z[b, s][None]
            for k in range(horizon):
                if not expected[b, i, k]:
                    assert (b * len(starts) + i) * horizon + k not in by_pair
                    continue
                n = by_pair[(b * len(starts) + i) * horizon + k]
                h, z_hat = model.step(h, z_hat, batch.action[b, s + k + 1][None])
                torch.testing.assert_close(roll.latent[n], z_hat[0])
                torch.testing.assert_close(roll.hidden[n], h[0])
                torch.testing.assert_close(roll.at_targets(z)[n], z[b, s + k + 1])
                torch.testing.assert_close(roll.dense(roll.latent)[b, i, k], z_hat[0])


@pytest.mark.parametrize("guard", ["ema", "sigreg"])
def test_loss_equals_open_loop_unroll_by_hand(guard):
    torch.manual_seed(0)
    model = JEPAWorldModel((5,), 2, **TINY, collapse_guard=guard)
    batch = make_batch((5,), batch=2, time=9, firsts=((1, 3),))
    horizon, burn_in = 4, 2
    losses = model.loss(batch, horizon, burn_in, generator=torch.Generator().manual_seed(0))

    z, z_target = model.latents(batch)
    hidden, _ = model.observe(z, batch.action, batch.is_first)
    latent_errors, reward_errors, ensemble_errors = [], [], []
    for b in range(2):
        for s in range(9):
            warm = s >= burn_in or bool(batch.is_first[b, : s + 1].any())
            if not warm:
                continue
            reward_errors.append((model.reward(hidden[b, s], z[b, s]) - batch.reward[b, s]) ** 2)
            h, z_hat = hidden[b, s][None], z[b, s][None]
            for k in range(1, horizon + 1):
                if s + k > 8 or batch.is_first[b, s + 1 : s + k + 1].any():
                    break
                h, z_hat = model.step(h, z_hat, batch.action[b, s + k][None])  # feed back its own prediction
                latent_errors.append(((z_hat[0] - z_target[b, s + k]) ** 2).mean())
                reward_errors.append((model.reward(h[0], z_hat[0]) - batch.reward[b, s + k]) ** 2)
                ensemble_errors.append(((model.ensemble(h) - z_target[b, s + k]) ** 2).mean())
    # Counted by hand. Window 0 from s = 2..7: 4 + 4 + 4 + 3 + 2 + 1; window 1 (is_first at 3) from s = 3..7:
    # 4 + 4 + 3 + 2 + 1.
    assert len(latent_errors) == 32
    torch.testing.assert_close(losses["latent"], torch.stack(latent_errors).mean())
    torch.testing.assert_close(losses["reward"], torch.stack(reward_errors).mean())
    torch.testing.assert_close(losses["ensemble"], torch.stack(ensemble_errors).mean())


def test_ensemble_loss_does_not_shape_the_dynamics_and_ema_target_gets_no_gradient():
    torch.manual_seed(0)
    model = JEPAWorldModel((5,), 2, **TINY)
    losses = model.loss(make_batch((5,)), 3)
    losses["ensemble"].backward()
    assert all(p.grad is None for p in model.gru.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.ensemble_heads.w1.grad is not None
    model.zero_grad(set_to_none=True)
    losses = model.loss(make_batch((5,)), 3)
    combine_losses(losses, all_weights(model)).backward()
    assert all(p.grad is None for p in model.target_backbone.parameters())
    assert all(p.grad is None for p in model.target_projection.parameters())
    assert all(p.grad is not None for p in model.gru.parameters())


# ---------------------------------------------------------------------------------------------- EMA


def test_ema_update_matches_hand_computation():
    model = JEPAWorldModel((5,), 2, **TINY)
    online = list(model.backbone.parameters()) + list(model.projection.parameters())
    target = list(model.target_backbone.parameters()) + list(model.target_projection.parameters())
    with torch.no_grad():
        for p in target:
            p.fill_(1.0)
        for p in online:
            p.fill_(3.0)
    model.update_target(0.75)  # 0.75 * 1 + 0.25 * 3 = 1.5
    assert all(torch.all(p == 1.5) for p in target)
    assert all(torch.all(p == 3.0) for p in online)
    model.update_target(1.0)  # momentum 1 freezes the target
    assert all(torch.all(p == 1.5) for p in target)
    with pytest.raises(ValueError, match="momentum"):
        model.update_target(1.5)


def test_input_blur_blurs_the_frames_the_encoder_sees_and_keys_its_own_latent_cache():
    from experiments.features import encoder_fingerprint
    from worldmodel.perception.augment import gaussian_blur, normalize, resize

    torch.manual_seed(0)
    sharp = JEPAWorldModel((16, 16, 3), 2, **PIXELS_MICRO, freeze_encoder=True)
    blurred = JEPAWorldModel((16, 16, 3), 2, **PIXELS_MICRO, freeze_encoder=True, input_blur=2.0)
    blurred.load_state_dict(sharp.state_dict())
    obs = make_batch((16, 16, 3)).obs[:, 0]  # (3, 16, 16, 3) uint8
    images = gaussian_blur(resize(obs.permute(0, 3, 1, 2), 16), 2.0)
    expected = sharp.backbone.pooled(normalize(images, sharp._pixel_mean, sharp._pixel_std))
    torch.testing.assert_close(blurred.encode_features(obs), expected)
    assert not torch.allclose(sharp.encode_features(obs), expected)
    keys = {encoder_fingerprint(model) for model in (sharp, blurred)}
    assert len(keys) == 2  # cached features of sharp frames are never read for blurred ones
    with pytest.raises(ValueError, match="input_blur"):
        JEPAWorldModel((16, 16, 3), 2, **PIXELS_MICRO, input_blur=-1.0)


def test_mean_std_pooling_feeds_the_patch_spread_too_and_keys_its_own_latent_cache():
    from experiments.features import encoder_fingerprint
    from worldmodel.perception.augment import normalize, resize

    torch.manual_seed(0)
    mean = JEPAWorldModel((16, 16, 3), 2, **PIXELS_MICRO, freeze_encoder=True)
    mean_std = JEPAWorldModel((16, 16, 3), 2, **PIXELS_MICRO, freeze_encoder=True, pooling="mean_std")
    assert (mean.feature_dim, mean_std.feature_dim) == (64, 128)  # the micro ViT is 64 wide
    mean_std.backbone.load_state_dict(mean.backbone.state_dict())
    obs = make_batch((16, 16, 3)).obs[:, :2]  # (3, 2, 16, 16, 3) uint8
    tokens = mean.backbone(normalize(resize(obs.flatten(0, 1).permute(0, 3, 1, 2), 16)))  # (6, 4, 64)
    features = mean_std.encode_features(obs)
    assert features.shape == (3, 2, 128)
    torch.testing.assert_close(features[..., :64], mean.encode_features(obs))
    torch.testing.assert_close(features[..., 64:].flatten(0, 1), tokens.std(dim=1, correction=0))
    assert encoder_fingerprint(mean) != encoder_fingerprint(mean_std)  # never reads the other's cached features
    with pytest.raises(ValueError, match="pooling: must be one of"):
        JEPAWorldModel((16, 16, 3), 2, **PIXELS_MICRO, pooling="max")


def test_grid_pooling_feeds_each_cell_of_the_image_and_keys_its_own_latent_cache():
    from experiments.features import encoder_fingerprint
    from worldmodel.perception.augment import normalize, resize

    torch.manual_seed(0)
    mean = JEPAWorldModel((16, 16, 3), 2, **PIXELS_MICRO, freeze_encoder=True)
    grid = JEPAWorldModel((16, 16, 3), 2, **PIXELS_MICRO, freeze_encoder=True, pooling="grid2")
    assert grid.feature_dim == 4 * 64  # four cells of the micro ViT's 64 features
    grid.backbone.load_state_dict(mean.backbone.state_dict())
    obs = make_batch((16, 16, 3)).obs[:, :2]  # (3, 2, 16, 16, 3) uint8
    tokens = mean.backbone(normalize(resize(obs.flatten(0, 1).permute(0, 3, 1, 2), 16)))  # (6, 4, 64): a 2 x 2 grid
    torch.testing.assert_close(grid.encode_features(obs).flatten(0, 1), tokens.flatten(1))  # one patch per cell
    assert encoder_fingerprint(mean) != encoder_fingerprint(grid)
    with pytest.raises(ValueError, match=r"pooling 'grid4' needs a patch grid side it divides, got 2"):
        JEPAWorldModel((16, 16, 3), 2, **PIXELS_MICRO, pooling="grid4")


def test_frozen_backbone_is_its_own_target_and_sigreg_has_none():
    frozen = JEPAWorldModel((16, 16, 3), 2, **PIXELS_MICRO, freeze_encoder=True)
    assert frozen.target_backbone is None and frozen.target_projection is not None
    with torch.no_grad():
        frozen.target_projection.weight.fill_(0.0)
        frozen.projection.weight.fill_(2.0)
    frozen.update_target(0.5)
    assert torch.all(frozen.target_projection.weight == 1.0)

    model = JEPAWorldModel((5,), 2, **TINY, collapse_guard="sigreg")
    assert model.target_backbone is None and model.target_projection is None
    before = [p.clone() for p in model.parameters()]
    model.update_target(0.5)  # no target network: nothing changes
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    obs = make_batch((5,)).obs
    torch.testing.assert_close(model.targets(obs), model.encode(obs))  # targets are the online latents
    assert not model.targets(obs).requires_grad


def test_pretrained_encoder_loads_into_online_and_target():
    vit = VisionTransformer(16, 8, 3, "micro")
    model = JEPAWorldModel((16, 16, 3), 2, **PIXELS_MICRO)
    model.load_pretrained_encoder(vit.state_dict())
    for module in (model.backbone, model.target_backbone):
        for key, value in vit.state_dict().items():
            assert torch.equal(module.state_dict()[key], value)


# ---------------------------------------------------------------------------------------------- training


def truncated_batch(cont_at_end: float) -> WorldModelBatch:
    """Windows that end an episode: is_last at the final step, cont there 1 (truncated) or 0 (terminal)."""
    batch = make_batch((5,), batch=4, time=6, firsts=((0, 0), (1, 0), (2, 0), (3, 0)), seed=3)
    cont = torch.ones(4, 6)
    cont[:, -1] = cont_at_end
    return batch._replace(cont=cont)


def end_probability(model: WorldModel, batch: WorldModelBatch) -> float:
    with torch.no_grad():
        z = model.encode(batch.obs)
        hidden, _ = model.observe(z, batch.action, batch.is_first)
        return torch.sigmoid(model.cont(hidden[:, -1], z[:, -1])).mean().item()


def test_truncated_ends_never_push_the_continue_head_towards_zero():
    for cont_at_end, rises in ((1.0, True), (0.0, False)):  # truncated, then terminal as the contrast
        torch.manual_seed(0)
        model = JEPAWorldModel((5,), 2, **TINY)
        batch = truncated_batch(cont_at_end)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        before = end_probability(model, batch)
        for _ in range(60):
            optimizer.zero_grad()
            model.loss(batch, horizon=2)["cont"].backward()
            optimizer.step()
        after = end_probability(model, batch)
        if rises:
            assert after >= before and after > 0.9
        else:
            assert after < min(before, 0.5)


def train(model: WorldModel, batch: WorldModelBatch, steps: int, seed: int = 0) -> list[dict[str, float]]:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        losses = model.loss(batch, horizon=3, burn_in=1, generator=generator)
        optimizer.zero_grad()
        combine_losses(losses, all_weights(model)).backward()
        optimizer.step()
        model.update_target(0.95)
        history.append({k: v.item() for k, v in losses.items()})
    return history


@pytest.mark.slow
@pytest.mark.parametrize("guard", ["ema", "sigreg"])
def test_tiny_model_overfits_one_batch(guard):
    torch.manual_seed(0)
    model = JEPAWorldModel((5,), 2, latent_dim=8, hidden_dim=32, mlp_dim=32, ensemble_size=3, collapse_guard=guard)
    batch = make_batch((5,), batch=6, time=10, firsts=((0, 0), (3, 5)))
    history = train(model, batch, 150)
    first, last = history[0], history[-1]
    assert last["reward"] < first["reward"] / 100
    assert last["cont"] < first["cont"] / 50
    assert last["latent"] < first["latent"] / 5
    assert last["ensemble"] < first["ensemble"] / 3
    if guard == "sigreg":
        assert last["sigreg"] < first["sigreg"]


def test_same_seed_gives_same_losses():
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = JEPAWorldModel((5,), 2, **TINY, collapse_guard="sigreg")
        runs.append(train(model, make_batch((5,)), 3, seed=11))
    assert runs[0] == runs[1]
    torch.manual_seed(8)
    other = train(JEPAWorldModel((5,), 2, **TINY, collapse_guard="sigreg"), make_batch((5,)), 3, seed=11)
    assert other != runs[0]


@torch.no_grad()
def predictions(model: WorldModel, batch: WorldModelBatch) -> list[torch.Tensor]:
    """Every output of the model on a batch: latents, targets, a dream from the last step, the losses."""
    z = model.encode(batch.obs)
    hidden, _ = model.observe(z, batch.action, batch.is_first)
    dream = model.imagine(hidden[:, -1], z[:, -1], batch.action[:, :4])
    return [z, model.targets(batch.obs), hidden, *dream, *model.loss(batch, 3).values()]


@pytest.mark.parametrize("obs_shape, options", [((5,), TINY), ((16, 16, 3), PIXELS_MICRO)])
def test_save_then_load_gives_identical_predictions(obs_shape, options):
    torch.manual_seed(0)
    model = JEPAWorldModel(obs_shape, 2, **options)
    batch = make_batch(obs_shape)
    train(model, batch, 2)  # move the EMA target away from the online copy
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    restored = JEPAWorldModel(obs_shape, 2, **options)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(predictions(model, batch), predictions(restored, batch), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- weights and batches


def test_combine_losses_checks_keys_and_weights_each_loss():
    losses = {"latent": torch.tensor(2.0), "reward": torch.tensor(3.0)}
    assert combine_losses(losses, {"latent": 1.0, "reward": 0.5}).item() == 3.5
    with pytest.raises(ValueError, match=r"without a weight \['reward'\].*without a loss \[\]"):
        combine_losses(losses, {"latent": 1.0})
    with pytest.raises(ValueError, match=r"without a weight \[\].*without a loss \['sigreg'\]"):
        combine_losses(losses, {"latent": 1.0, "reward": 1.0, "sigreg": 1.0})
    model = JEPAWorldModel((5,), 2, **TINY)
    with pytest.raises(ValueError, match="sigreg"):
        combine_losses(
            model.loss(make_batch((5,)), 2), {"latent": 1, "reward": 1, "cont": 1, "ensemble": 1, "sigreg": 1}
        )


def test_sigreg_loss_needs_a_generator():
    model = JEPAWorldModel((5,), 2, **TINY, collapse_guard="sigreg")
    with pytest.raises(ValueError, match="generator"):
        model.loss(make_batch((5,)), 2)


def test_batch_from_windows_converts_numpy_fields():
    Windows = namedtuple("Windows", "obs action reward cont is_first is_last state latent")
    rng = np.random.default_rng(0)
    windows = Windows(
        obs=rng.integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8),
        action=np.zeros((2, 3, 2), np.float32),
        reward=np.zeros((2, 3), np.float32),
        cont=np.ones((2, 3), np.float32),
        is_first=np.array([[True, False, False]] * 2),
        is_last=np.zeros((2, 3), bool),
        state=None,
        latent=rng.standard_normal((2, 3, 64)).astype(np.float16),
    )
    batch = batch_from_windows(windows)
    assert batch.obs.dtype == torch.uint8 and batch.obs.shape == (2, 3, 16, 16, 3) and batch.features is None
    assert batch.is_first.dtype == torch.bool and batch.action.dtype == torch.float32
    cached = batch_from_windows(windows, use_features=True)
    assert cached.obs is None and cached.features.dtype == torch.float32 and cached.features.shape == (2, 3, 64)
    with pytest.raises(ValueError, match="latent"):
        batch_from_windows(windows._replace(latent=None), use_features=True)


def test_feature_standardisation_uses_the_given_statistics_and_is_saved():
    torch.manual_seed(0)
    model = JEPAWorldModel((16, 16, 3), 2, **PIXELS_MICRO, freeze_encoder=True)
    # Features of one env barely differ between frames: a large shared offset and a small spread.
    features = 5.0 + 0.01 * torch.randn(2, 6, model.feature_dim)
    before = model.encode(features=features)
    assert not model.feature_statistics_set
    model.set_feature_statistics(features)
    assert model.feature_statistics_set
    flat = features.reshape(-1, model.feature_dim)
    expected = model.projection((features - flat.mean(0)) / flat.std(0))
    torch.testing.assert_close(model.encode(features=features), expected)
    torch.testing.assert_close(
        model.targets(features=features), model.target_projection((features - flat.mean(0)) / flat.std(0))
    )
    # The latents now spread like the features do, not like their offset: standardised spread is O(1).
    assert model.encode(features=features).std(dim=(0, 1)).mean() > 10 * before.std(dim=(0, 1)).mean()
    copy = JEPAWorldModel((16, 16, 3), 2, **PIXELS_MICRO, freeze_encoder=True)
    copy.load_state_dict(model.state_dict())
    assert copy.feature_statistics_set
    torch.testing.assert_close(copy.encode(features=features), model.encode(features=features))
