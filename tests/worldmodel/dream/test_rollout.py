"""The dream's rollout (worldmodel/dream/rollout.py) on a real tiny WorldModel: the batched rollout equals a loop over
candidates and a rollout by hand, ends where the continue head says, counts the disagreement penalty exactly; real
start states."""

import math

import pytest
import torch
from gymnasium import spaces

from agents.controllers import Controller
from worldmodel.dream.rollout import (
    DISAGREEMENT_EVERY,
    EXPECTED_MIN_WEIGHT,
    DreamNoise,
    DreamSettings,
    DreamState,
    draw_noise,
    dream_starts,
    rollout,
)
from worldmodel.dynamics.jepa import JEPAWorldModel
from worldmodel.dynamics.world_model import WorldModel, WorldModelBatch

TINY = dict(latent_dim=8, hidden_dim=16, mlp_dim=16, ensemble_size=3)
OBS_DIM, ACTION_DIM, LATENT_DIM, HIDDEN_DIM = 4, 2, 8, 16
FEATURES = LATENT_DIM + HIDDEN_DIM
P, E, HORIZON = 4, 3, 10
# Each row of a rollout must end for one of its reasons somewhere in the tests: a sharper continue head biased
# towards "going on" (an untrained one hovers around 0.5 and ends almost every rollout at once) does that.
CONT_GAIN, CONT_BIAS = 6.0, 3.0
SPACES = {"discrete": spaces.Discrete(2), "box": spaces.Box(-2.0, 3.0, (ACTION_DIM,))}


def make_model(cont_bias: float = CONT_BIAS) -> WorldModel:
    torch.manual_seed(0)
    model = JEPAWorldModel((OBS_DIM,), ACTION_DIM, **TINY).eval()
    with torch.no_grad():
        model.cont_head[-1].weight.mul_(CONT_GAIN)
        model.cont_head[-1].bias.fill_(cont_bias)
    return model


def make_windows(batch: int = 8, time: int = 5, seed: int = 0) -> WorldModelBatch:
    """Random state windows starting episodes; window 1 restarts an episode at step 2, window 2 ends terminal."""
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, time, OBS_DIM, generator=generator)
    is_first = torch.zeros(batch, time, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[1, 2] = True
    action = torch.nn.functional.one_hot(torch.randint(0, ACTION_DIM, (batch, time), generator=generator), 2)
    action = action.float().masked_fill(is_first[..., None], 0.0)
    cont = torch.ones(batch, time)
    cont[2, -1] = 0.0
    return WorldModelBatch(obs, action, torch.randn(batch, time, generator=generator), cont, is_first)


@pytest.fixture(scope="module")
def model() -> WorldModel:
    return make_model()


@pytest.fixture(scope="module")
def starts(model) -> DreamState:
    return dream_starts(model, make_windows())


def population(kind: str, seed: int = 1) -> tuple[Controller, torch.Tensor]:
    controller = Controller(FEATURES, SPACES[kind], "linear")
    generator = torch.Generator().manual_seed(seed)
    return controller, 2.0 * torch.randn(P, controller.num_params, generator=generator)  # (P, n)


def start_rows(starts: DreamState, seed: int = 2) -> DreamState:
    """P*E start states, candidate-major, each (candidate, episode) from its own random row."""
    generator = torch.Generator().manual_seed(seed)
    return starts.select(torch.randint(0, len(starts.latent), (P * E,), generator=generator))


def settings_for(mode: str, **changes) -> DreamSettings:
    options = dict(horizon=HORIZON, cont_mode=mode, latent_noise=0.3, disagreement_penalty=0.5, disagreement_limit=0.1)
    return DreamSettings(**{**options, **changes})


# ---------------------------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("kind", ["discrete", "box"])
@pytest.mark.parametrize("mode", ["threshold", "sample", "expected"])
def test_batched_dream_equals_loop_over_candidates(model, starts, kind, mode):
    controller, params = population(kind)
    settings = settings_for(mode)
    start = start_rows(starts)
    noise = draw_noise(P * E, settings, LATENT_DIM, torch.Generator().manual_seed(3))
    batched = rollout(model, controller.policy(params, E), start, settings, noise)
    assert batched.returns.shape == batched.lengths.shape == (P * E,) and batched.lengths.dtype == torch.int64
    assert len(set(batched.lengths.tolist())) > 2, "the rollouts must end at different steps to test anything"

    for p in range(P):
        rows = slice(p * E, (p + 1) * E)
        alone = rollout(model, controller.policy(params[p : p + 1], E), start.select(rows), settings, noise.rows(rows))
        assert torch.equal(alone.lengths, batched.lengths[rows])
        for field in ("returns", "disagreement", "penalty"):
            torch.testing.assert_close(getattr(alone, field), getattr(batched, field)[rows], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["sample", "expected"])
def test_rollout_steps_only_the_rows_still_going(model, starts, mode):
    controller, params = population("discrete")
    settings = settings_for(mode)
    noise = draw_noise(P * E, settings, LATENT_DIM, torch.Generator().manual_seed(3))
    stepped = []  # rows in each model step
    real_step = model.step
    model.step = lambda h, z, action, *rest: (stepped.append(len(h)), real_step(h, z, action, *rest))[1]
    try:
        result = rollout(model, controller.policy(params, E), start_rows(starts), settings, noise)
    finally:
        del model.step  # the instance attribute shadowed the method
    assert stepped[0] == P * E > stepped[-1] > 0
    assert sum(stepped) == int(result.lengths.sum())


# ---------------------------------------------------------------------------------------------- oracle


def rollout_by_hand(model, controller, params, start, settings, noise, row):
    """One row, one python step at a time, straight from the module docstring's equations."""
    h, z = start.hidden[row : row + 1], start.latent[row : row + 1]  # (1, hd), (1, D)
    candidate = params[row // E : row // E + 1]  # (1, n)
    total = penalty = disagreement_sum = 0.0
    measured = 0  # steps whose disagreement counts in the mean: every step, or every DISAGREEMENT_EVERY-th
    weight = 1.0  # 'expected': the chance the episode is still going before this step
    for t in range(settings.horizon):
        action = controller.act(candidate, torch.cat([z, h], dim=-1)[None])[0]  # (1, 1, F) -> (1, A)
        h, z = model.step(h, z, action)
        if noise.latent is not None:
            z = z + settings.latent_noise * noise.latent[row : row + 1, t]
        reward = model.reward(h, z).item()
        cont = torch.sigmoid(model.cont(h, z)).item()
        disagreement = model.disagreement(h).item()
        total += weight * (reward - settings.disagreement_penalty * disagreement)
        penalty += weight * settings.disagreement_penalty * disagreement
        if settings.uses_disagreement or t % DISAGREEMENT_EVERY == 0:
            disagreement_sum += disagreement
            measured += 1
        if settings.cont_mode == "threshold":
            ended = cont < settings.cont_threshold
        elif settings.cont_mode == "sample":
            ended = noise.uniform[row, t].item() >= cont
        else:
            weight *= cont
            ended = weight < EXPECTED_MIN_WEIGHT
        if settings.disagreement_limit > 0 and disagreement > settings.disagreement_limit:
            ended = True
        if ended:
            break
    return total, t + 1, disagreement_sum / measured, penalty


@pytest.mark.parametrize("honest", [True, False], ids=["penalty-and-limit", "neither"])
@pytest.mark.parametrize("kind", ["discrete", "box"])
@pytest.mark.parametrize("mode", ["threshold", "sample", "expected"])
@torch.no_grad()
def test_rollout_equals_rollout_by_hand(model, starts, kind, mode, honest):
    controller, params = population(kind, seed=4)
    settings = settings_for(mode)
    if not honest:
        settings = settings_for(mode, disagreement_penalty=0.0, disagreement_limit=0.0)
    start = start_rows(starts, seed=5)
    noise = draw_noise(P * E, settings, LATENT_DIM, torch.Generator().manual_seed(6))
    result = rollout(model, controller.policy(params, E), start, settings, noise)
    for row in range(P * E):
        total, length, disagreement, penalty = rollout_by_hand(model, controller, params, start, settings, noise, row)
        assert result.lengths[row].item() == length, f"row {row}"
        assert result.returns[row].item() == pytest.approx(total, rel=1e-5, abs=1e-5)
        assert result.disagreement[row].item() == pytest.approx(disagreement, rel=1e-5)
        assert result.penalty[row].item() == pytest.approx(penalty, rel=1e-5)


@torch.no_grad()
def test_expected_return_is_the_mean_of_sampled_returns(model, starts):
    """Without latent noise the dynamics are deterministic and only termination is random: 'expected' mode's
    return is the mean return of 'sample' mode's rollouts from the same start (Monte Carlo, 20k draws)."""
    controller, params = population("discrete", seed=8)
    draws = 20000
    start = start_rows(starts, seed=9).select(torch.zeros(draws, dtype=torch.long))  # one start, many times
    policy = controller.policy(params[:1].expand(draws, -1), 1)
    sampled = settings_for("sample", latent_noise=0.0, disagreement_limit=0.0)
    expected = settings_for("expected", latent_noise=0.0, disagreement_limit=0.0)
    generator = torch.Generator().manual_seed(1)
    mc = rollout(model, policy, start, sampled, draw_noise(draws, sampled, LATENT_DIM, generator))
    exact = rollout(model, policy, start, expected, draw_noise(draws, expected, LATENT_DIM))
    assert mc.lengths.float().std() > 1, "termination must vary for the comparison to mean anything"
    assert torch.allclose(exact.returns, exact.returns[0])  # no randomness at all
    standard_error = mc.returns.std() / draws**0.5
    assert abs(mc.returns.mean() - exact.returns[0]) < 4 * standard_error + 1e-3 * HORIZON


@torch.no_grad()
def test_expected_mode_stops_once_the_chance_of_going_on_is_below_the_minimum(starts):
    """A continue logit of 3 at every step: 'expected' mode weights step t by sigmoid(3)^(t + 1) and stops a row
    once that falls below EXPECTED_MIN_WEIGHT = 1e-3. By hand: sigmoid(3) = 0.952574, ln(1e-3) / ln(0.952574) =
    142.2, so the 143rd step ends it."""
    constant = make_model(cont_bias=3.0)
    with torch.no_grad():
        constant.cont_head[-1].weight.zero_()
    controller, params = population("discrete")
    settings = DreamSettings(horizon=200, cont_mode="expected")
    result = rollout(
        constant, controller.policy(params, E), start_rows(starts), settings, draw_noise(P * E, settings, LATENT_DIM)
    )
    assert result.lengths.tolist() == [143] * (P * E)


@torch.no_grad()
def test_rollout_ends_at_first_step_below_threshold_and_counts_its_reward(starts):
    controller, params = population("discrete")
    settings = DreamSettings(horizon=HORIZON, cont_threshold=0.5)
    noise = draw_noise(P * E, settings, LATENT_DIM)
    start = start_rows(starts)
    policy = controller.policy(params, E)

    certain_end = make_model(cont_bias=-30.0)  # continue probability ~0 at every step: each rollout is one step
    result = rollout(certain_end, policy, start, settings, noise)
    assert result.lengths.tolist() == [1] * (P * E)
    hidden, latent = certain_end.step(start.hidden, start.latent, policy(start.observation()))
    torch.testing.assert_close(result.returns, certain_end.reward(hidden, latent))  # the last step's reward counts
    torch.testing.assert_close(result.disagreement, certain_end.disagreement(hidden))

    never_end = make_model(cont_bias=30.0)  # continue probability ~1: the horizon ends every rollout
    for horizon in (1, 3, 7):
        short = DreamSettings(horizon=horizon)
        lengths = rollout(never_end, policy, start, short, draw_noise(P * E, short, LATENT_DIM)).lengths
        assert lengths.tolist() == [horizon] * (P * E)


@torch.no_grad()
def test_without_penalty_or_limit_the_ensemble_runs_every_tenth_step_for_the_figures(starts):
    """The disagreement then feeds only `Rollout.disagreement`: the mean of steps t = 0, 10, 20 of a 25-step rollout,
    as stepping by hand measures them; the ensemble runs at those steps alone, and at every step once a penalty
    needs it."""
    controller, params = population("discrete")
    never_end = make_model(cont_bias=30.0)  # every rollout runs the whole horizon
    start, policy = start_rows(starts), controller.policy(params, E)
    h, z = start.hidden, start.latent
    rewards, disagreements = torch.zeros(P * E), []
    for t in range(25):
        h, z = never_end.step(h, z, policy(torch.cat([z, h], dim=-1)))
        rewards += never_end.reward(h, z)
        if t % DISAGREEMENT_EVERY == 0:
            disagreements.append(never_end.disagreement(h))
    runs = []  # rows the ensemble ran on, per call
    real_disagreement = never_end.disagreement
    never_end.disagreement = lambda hidden: (runs.append(len(hidden)), real_disagreement(hidden))[1]
    try:
        plain = DreamSettings(horizon=25)
        result = rollout(never_end, policy, start, plain, draw_noise(P * E, plain, LATENT_DIM))
        assert runs == [P * E] * 3
        paid = DreamSettings(horizon=25, disagreement_penalty=0.5)
        rollout(never_end, policy, start, paid, draw_noise(P * E, paid, LATENT_DIM))
        assert len(runs) == 3 + 25
    finally:
        del never_end.disagreement  # the instance attribute shadowed the method
    assert result.lengths.tolist() == [25] * (P * E)
    assert len(disagreements) == 3
    torch.testing.assert_close(result.disagreement, torch.stack(disagreements).mean(dim=0))
    torch.testing.assert_close(result.returns, rewards)
    assert torch.equal(result.penalty, torch.zeros(P * E))


@torch.no_grad()
def test_lengths_stay_within_horizon_and_end_at_the_first_low_continue(model, starts):
    controller, params = population("discrete")
    settings = DreamSettings(horizon=HORIZON, cont_threshold=0.5)
    start = start_rows(starts)
    result = rollout(model, controller.policy(params, E), start, settings, draw_noise(P * E, settings, LATENT_DIM))
    assert ((result.lengths >= 1) & (result.lengths <= HORIZON)).all()
    # Replay each row for the full horizon (no ending): its length is the first step with continue < 0.5, + 1.
    h, z = start.hidden, start.latent
    conts = []
    for _ in range(HORIZON):
        h, z = model.step(h, z, controller.policy(params, E)(torch.cat([z, h], dim=-1)))
        conts.append(torch.sigmoid(model.cont(h, z)))
    low = torch.stack(conts, dim=1) < 0.5  # (N, H)
    expected = torch.where(low.any(dim=1), low.float().argmax(dim=1) + 1, torch.tensor(HORIZON))
    assert torch.equal(result.lengths, expected)
    assert (expected < HORIZON).any() and (expected == HORIZON).any()


@pytest.mark.parametrize("mode", ["threshold", "sample"])
@torch.no_grad()
def test_disagreement_penalty_subtracts_penalty_times_disagreement(model, starts, mode):
    controller, params = population("discrete")
    start = start_rows(starts)
    plain = settings_for(mode, disagreement_penalty=0.0, disagreement_limit=0.0)
    penalised = settings_for(mode, disagreement_penalty=0.7, disagreement_limit=0.0)
    noise = draw_noise(P * E, plain, LATENT_DIM, torch.Generator().manual_seed(7))
    free = rollout(model, controller.policy(params, E), start, plain, noise)
    paid = rollout(model, controller.policy(params, E), start, penalised, noise)
    assert torch.equal(free.lengths, paid.lengths)  # the penalty changes no trajectory
    assert torch.equal(free.penalty, torch.zeros(P * E))
    torch.testing.assert_close(free.returns - paid.returns, paid.penalty)
    torch.testing.assert_close(paid.penalty, 0.7 * paid.disagreement * paid.lengths)  # per live step
    assert (paid.penalty > 0).all()


@torch.no_grad()
def test_latent_noise_is_scaled_by_its_std(model, starts):
    """Standard-normal draws times `latent_noise`: a tiny std gives (almost) the noiseless rollout."""
    controller, params = population("box")
    start = start_rows(starts)
    quiet = DreamSettings(horizon=HORIZON, latent_noise=1e-6)
    noiseless = DreamSettings(horizon=HORIZON)
    noise = draw_noise(P * E, quiet, LATENT_DIM, torch.Generator().manual_seed(8))
    assert noise.latent.std().item() == pytest.approx(1.0, abs=0.1)  # drawn standard normal
    a = rollout(model, controller.policy(params, E), start, quiet, noise)
    b = rollout(model, controller.policy(params, E), start, noiseless, draw_noise(P * E, noiseless, LATENT_DIM))
    assert torch.equal(a.lengths, b.lengths)
    torch.testing.assert_close(a.returns, b.returns, rtol=1e-4, atol=1e-4)


def test_draw_noise_shapes_and_determinism():
    both = settings_for("sample")
    noise = draw_noise(5, both, LATENT_DIM, torch.Generator().manual_seed(0))
    assert noise.latent.shape == (5, HORIZON, LATENT_DIM) and noise.uniform.shape == (5, HORIZON)
    assert ((noise.uniform >= 0) & (noise.uniform < 1)).all()
    again = draw_noise(5, both, LATENT_DIM, torch.Generator().manual_seed(0))
    assert torch.equal(noise.latent, again.latent) and torch.equal(noise.uniform, again.uniform)
    none = draw_noise(5, DreamSettings(horizon=HORIZON), LATENT_DIM)
    assert none.latent is None and none.uniform is None
    rows = noise.rows(slice(1, 3))
    assert torch.equal(rows.latent, noise.latent[1:3]) and torch.equal(rows.uniform, noise.uniform[1:3])


def test_rollout_refuses_noise_that_does_not_fit(model, starts):
    controller, params = population("discrete")
    start = start_rows(starts)
    settings = settings_for("sample")
    policy = controller.policy(params, E)
    with pytest.raises(ValueError, match="rows"):  # drawn per episode, not per rollout row: would broadcast
        rollout(model, policy, start, settings, draw_noise(1, settings, LATENT_DIM))
    with pytest.raises(ValueError, match="uniform"):
        rollout(model, policy, start, settings, DreamNoise(draw_noise(P * E, settings, LATENT_DIM).latent, None))
    with pytest.raises(ValueError, match="latent"):
        rollout(model, policy, start, settings, DreamNoise(None, torch.rand(P * E, HORIZON)))


# ---------------------------------------------------------------------------------------------- start states


@torch.no_grad()
def test_dream_starts_are_observe_states_of_windows_that_go_on(model):
    windows = make_windows()
    starts = dream_starts(model, windows)
    latents = model.encode(windows.obs)  # (B, T, D)
    hidden, _ = model.observe(latents, windows.action, windows.is_first)  # (B, T, hd)
    keep = torch.tensor([b != 2 for b in range(len(windows.obs))])  # window 2 ends terminal
    assert len(starts.latent) == len(windows.obs) - 1
    torch.testing.assert_close(starts.hidden, hidden[keep, -1], rtol=0, atol=0)
    torch.testing.assert_close(starts.latent, latents[keep, -1], rtol=0, atol=0)
    assert torch.equal(starts.observation(), torch.cat([starts.latent, starts.hidden], dim=-1))
    # Window 1 restarts at step 2, so its start state depends only on steps 2..T-1.
    cropped = WorldModelBatch(*(None if f is None else f[1:2, 2:] for f in windows))
    alone = dream_starts(model, cropped)
    torch.testing.assert_close(alone.hidden, starts.hidden[1:2], rtol=1e-5, atol=1e-6)


def test_dream_starts_refuses_windows_that_all_end_terminal(model):
    windows = make_windows()
    with pytest.raises(ValueError, match="terminal"):
        dream_starts(model, windows._replace(cont=windows.cont.clone().index_fill_(1, torch.tensor([4]), 0.0)))


# ---------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(horizon=0), "horizon"),
        (dict(cont_mode="bernoulli"), "cont_mode"),
        (dict(cont_threshold=0.0), "cont_threshold"),
        (dict(cont_threshold=1.0), "cont_threshold"),
        (dict(latent_noise=-0.1), "latent_noise"),
        (dict(disagreement_penalty=math.nan), "disagreement_penalty"),
        (dict(disagreement_limit=-1.0), "disagreement_limit"),
    ],
)
def test_dream_settings_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        DreamSettings(**changes)
    DreamSettings()  # the defaults are valid
