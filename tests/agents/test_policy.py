"""PolicyStep (agents/policy.py) against LatentAgent: stepped over the frames of real CartPole episodes at 32 px that
the agent played, it chooses the very same action vectors and carries the same state, for a deterministic and a
stochastic tiny model, one env or several at once, and for a continuous action space; its ONNX graph run by
onnxruntime and its torch.export program choose the same actions too."""

from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents.agent import LatentAgent
from agents.controllers import Controller
from agents.policy import (
    EXPORT_EXTRA,
    OnnxPolicy,
    PolicyStep,
    Recorded,
    StatefulStep,
    actions_agree,
    export_onnx,
    export_program,
    record_steps,
    replay,
    require_export_packages,
)
from envs import make_env
from worldmodel.dynamics.build import build_world_model
from worldmodel.dynamics.jepa import JEPAWorldModel
from worldmodel.dynamics.world_model import WorldModel

SIZE, STEPS = 32, 60
TINY = dict(latent_dim=8, hidden_dim=16, mlp_dim=16, ensemble_size=2)
PIXELS = dict(vit_size="micro", image_size=SIZE, patch_size=4, input_blur=1.0, pooling="mean_std")
LATENTS = {"deterministic": {}, "stochastic": dict(freeze_encoder=True, latent="stochastic")}


class Played:
    """A LatentAgent's steps in one real env: each observation, whether it started an episode, the action vector
    chosen on it, and h and z after it."""

    def __init__(self):
        self.obs, self.is_first, self.actions, self.hidden, self.latent = [], [], [], [], []


def play(agent: LatentAgent, env_id: str, steps: int, seed: int, **env_options) -> Played:
    """`steps` steps of the agent in a real env, seeded, across as many episodes as they take."""
    env, _ = make_env(env_id, **env_options)
    played = Played()
    obs, _ = env.reset(seed=seed)
    first = True
    for _ in range(steps):
        obs = np.array(obs)  # a writable copy, as `record_steps` keeps
        agent.reset(np.array([first]))
        played.obs.append(obs)
        played.is_first.append(first)
        action = agent(obs[None])[0]
        played.actions.append(agent.action[0].clone())
        played.hidden.append(agent.hidden[0].clone())
        played.latent.append(agent.latent[0].clone())
        obs, _, terminated, truncated, _ = env.step(action)
        first = terminated or truncated
        if first:
            obs, _ = env.reset()
    env.close()
    return played


def pixel_model(latent: str) -> WorldModel:
    torch.manual_seed(0)
    model = build_world_model((SIZE, SIZE, 3), 2, **TINY, **PIXELS, **LATENTS[latent]).eval()
    # Standardisation away from the identity, so that the step is checked to apply it.
    model.feature_mean.normal_(0.0, 0.1)
    model.feature_std.uniform_(0.5, 2.0)
    return model


def parameters(controller: Controller, seed: int = 0, scale: float = 3.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal(controller.num_params)


def balanced_parameters(model: WorldModel, controller: Controller, played: Played, seed: int = 0) -> np.ndarray:
    """A linear controller that picks both CartPole actions about equally often on the states of `played`.

    A random one over an untrained model's [z, h] picks one action throughout, which would test little: score a random
    direction of z against its median over the states seen instead (as tests/agents/test_agent.py does; h follows
    the actions taken, and a direction with a part along h locked into one action in the closed loop)."""
    features = torch.cat([torch.stack(played.latent), torch.stack(played.hidden)], dim=-1)  # (T, F)
    direction = torch.randn(features.shape[1], generator=torch.Generator().manual_seed(seed))
    direction[model.latent_dim :] = 0.0  # z alone
    projections = features @ direction  # (T,)
    weight = torch.stack([direction, torch.zeros_like(direction)], dim=1) / projections.std()  # (F, A)
    bias = torch.tensor([-(projections.median() / projections.std()).item(), 0.0])
    return torch.cat([weight.flatten(), bias]).numpy()


@pytest.fixture(scope="module", params=sorted(LATENTS))
def pixel_run(request) -> tuple[PolicyStep, Played]:
    """A tiny pixel model of each latent kind, a random linear controller and its agent's play in pixel CartPole."""
    model = pixel_model(request.param)
    controller = Controller(model.latent_dim + model.hidden_dim, spaces.Discrete(2), "linear")
    pixels = dict(obs="pixels", size=SIZE)
    random = LatentAgent(model, controller, parameters(controller), 1, exploration=1.0, seed=4)  # random actions
    seen = play(random, "CartPole-v1", STEPS, seed=4, **pixels)
    params = balanced_parameters(model, controller, seen)
    played = play(LatentAgent(model, controller, params, 1), "CartPole-v1", STEPS, seed=5, **pixels)
    return PolicyStep(model, controller, params), played


def step_through(step, obs: list[np.ndarray], is_first: list[bool | np.ndarray], state) -> list[tuple]:
    """Step a PolicyStep-like callable over observations (N, *obs_shape) each, carrying its own state; its outputs
    (action, hidden, latent) at every step."""
    outputs = []
    for frame, first in zip(obs, is_first, strict=True):
        with torch.no_grad():
            action, hidden, latent = step(torch.as_tensor(frame), *state, torch.as_tensor(np.atleast_1d(first)))
        state = (hidden, latent, action)
        outputs.append((action, hidden, latent))
    return outputs


def batch_of_one(obs: list[np.ndarray]) -> list[np.ndarray]:
    return [frame[None] for frame in obs]  # (*obs_shape) -> (1, *obs_shape) each


def test_policy_step_chooses_the_agents_action_vectors_over_a_real_episode(pixel_run):
    step, played = pixel_run
    assert sum(played.is_first) >= 2, "the steps should cross an episode's end"
    chosen = torch.stack([a for a in played.actions]).argmax(-1)
    assert 0 < chosen.float().mean() < 1, "a constant controller would test little"
    outputs = step_through(step, batch_of_one(played.obs), played.is_first, step.initial_state(1))
    for t, (action, hidden, latent) in enumerate(outputs):
        assert torch.equal(action[0], played.actions[t]), t
        torch.testing.assert_close(hidden[0], played.hidden[t], rtol=0, atol=0)
        torch.testing.assert_close(latent[0], played.latent[t], rtol=0, atol=0)
    assert np.array_equal(step.env_actions(torch.stack([a for a, _, _ in outputs])[:, 0]), chosen.numpy())


def test_a_batch_of_envs_steps_each_as_the_agent_steps_it(pixel_run):
    """Two streams of real frames that start their episodes at different steps, as N = 2 envs."""
    step, played = pixel_run
    model, controller = step.model, step.controller
    params = step.controller_parameters[0].numpy()
    shift = 7
    obs = [np.stack([played.obs[t], played.obs[t + shift]]) for t in range(STEPS - shift)]  # (2, H, W, C) each
    firsts = [np.array([played.is_first[t], played.is_first[t + shift] or t == 0]) for t in range(STEPS - shift)]
    agent = LatentAgent(model, controller, params, 2)
    expected = []
    for frame, first in zip(obs, firsts, strict=True):
        agent.reset(first)
        agent(frame)
        expected.append(agent.action.clone())
    outputs = step_through(step, obs, firsts, step.initial_state(2))
    for t, (action, _, _) in enumerate(outputs):
        assert torch.equal(action, expected[t]), t


def test_a_continuous_controller_s_vectors_are_its_env_actions_within_the_bounds():
    """State Pendulum: the step's vectors equal the agent's, lie within the bounds, and are the env's actions."""
    torch.manual_seed(0)
    env, spec = make_env("Pendulum-v1", obs="state")
    space = env.action_space
    env.close()
    model = JEPAWorldModel(spec.obs_shape, spec.action_dim, **TINY).eval()
    controller = Controller(model.latent_dim + model.hidden_dim, space, "mlp", hidden=8)
    params = parameters(controller, seed=1, scale=0.3)  # larger ones saturate the tanh at a bound
    played = play(LatentAgent(model, controller, params, 1), "Pendulum-v1", 30, seed=2, obs="state")
    step = PolicyStep(model, controller, params)
    outputs = step_through(step, batch_of_one(played.obs), played.is_first, step.initial_state(1))
    actions = torch.stack([action[0] for action, _, _ in outputs])  # (T, A)
    torch.testing.assert_close(actions, torch.stack(played.actions), rtol=0, atol=0)
    assert (actions >= -2).all() and (actions <= 2).all() and actions.std() > 0
    np.testing.assert_array_equal(step.env_actions(actions), actions.numpy())


def test_parameters_of_another_shape_are_refused(pixel_run):
    step, _ = pixel_run
    with pytest.raises(ValueError, match=r"controller parameters must have shape \(50,\)"):
        PolicyStep(step.model, step.controller, np.zeros(7))


def test_missing_export_packages_name_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="needs onnxscript") as error:
        require_export_packages()
    assert EXPORT_EXTRA in str(error.value) and "\n" not in str(error.value)


def recorded_of(played: Played) -> Recorded:
    states = (torch.stack(values).numpy() for values in (played.actions, played.hidden, played.latent))
    return Recorded(np.stack(played.obs), np.array(played.is_first), *states)


def test_record_steps_keeps_what_the_agent_saw_and_chose(pixel_run):
    """The library's recording loop (what `wm export` checks on) plays the very steps of this file's `play`."""
    step, played = pixel_run
    agent = LatentAgent(step.model, step.controller, step.controller_parameters[0].numpy(), 1)
    env, _ = make_env("CartPole-v1", obs="pixels", size=SIZE)
    recorded = record_steps(agent, env, STEPS, seed=5)
    env.close()
    expected = recorded_of(played)
    for field in Recorded._fields:
        np.testing.assert_array_equal(getattr(recorded, field), getattr(expected, field), err_msg=field)
    assert recorded.obs.dtype == np.uint8 and recorded.actions.dtype == np.float32
    replayed = replay(StatefulStep(step, step.initial_state(1)), recorded)
    for field in Recorded._fields:
        np.testing.assert_array_equal(getattr(replayed, field), getattr(recorded, field), err_msg=field)
    assert actions_agree(step.controller, recorded.actions, replayed.actions)
    flipped = recorded.actions[:, ::-1]  # every discrete action the other one
    assert not actions_agree(step.controller, recorded.actions, flipped)


@pytest.mark.slow
def test_the_onnx_graph_and_the_program_choose_the_same_actions(pixel_run, tmp_path: Path):
    """Exported from one frame, run over the real episode and over a batch of 3: onnxruntime (carrying its own
    state) and the torch.export program give the agent's action vectors."""
    pytest.importorskip("onnxruntime")
    step, played = pixel_run
    recorded = recorded_of(played)
    (tmp_path / "policy.onnx").write_bytes(export_onnx(step, recorded.obs[:1]))
    (tmp_path / "policy.pt2").write_bytes(export_program(step, recorded.obs[:1]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.onnx", "policy.pt2"]  # no temp file left

    loaded = torch.export.load(tmp_path / "policy.pt2").module()
    for policy in (OnnxPolicy(tmp_path / "policy.onnx", 1, threads=1), StatefulStep(loaded, step.initial_state(1))):
        replayed = replay(policy, recorded)
        for field in ("actions", "hidden", "latent"):
            np.testing.assert_allclose(getattr(replayed, field), getattr(recorded, field), rtol=0, atol=1e-5)
        assert actions_agree(step.controller, recorded.actions, replayed.actions)

    batch = recorded.obs[:3]  # (3, H, W, C): the batch is not fixed at the example's
    with torch.no_grad():
        action, _, _ = step(torch.as_tensor(batch), *step.initial_state(3), torch.ones(3, dtype=torch.bool))
    np.testing.assert_allclose(OnnxPolicy(tmp_path / "policy.onnx", 3, threads=1)(batch), action.numpy(), atol=1e-5)
