"""benchmarks/controllers.py: its batched episode scoring equals a plain loop over gymnasium episodes, and the
quick run prints every figure for each controller kind."""

import importlib.util
import math
import re

import gymnasium as gym
import numpy as np
import pytest
from run_benchmark import REPO, quick_run, records_of, run_script


def load_benchmark():
    spec = importlib.util.spec_from_file_location("controllers_benchmark", REPO / "benchmarks" / "controllers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_batched_episode_returns_equal_a_plain_loop_over_each_episode():
    from agents.controllers import Controller
    from envs.make import make_vector_env

    bench = load_benchmark()
    envs, spec = make_vector_env("CartPole-v1", 2 * 3, obs="state")
    controller = Controller(4, gym.spaces.Discrete(2), "linear")
    # Candidate 0 pushes right when the pole leans right (a balancer); candidate 1 always pushes left.
    balancer = np.zeros(controller.num_params)
    balancer[[5, 7]] = [1.0, 0.5]  # weight[theta, right], weight[theta_dot, right]: (F, A) row-major
    always_left = np.zeros(controller.num_params)
    always_left[8] = 1.0  # bias[left]
    successes = np.full(2 * 3, np.nan)
    returns = bench.episode_returns(
        envs, controller, np.stack([balancer, always_left]), 3, seed=40, successes=successes
    )
    envs.close()
    assert np.isnan(successes).all()  # CartPole does not say whether an episode succeeded

    expected = np.zeros((2, 3))
    for candidate, choose in enumerate([lambda s: int(s[2] + 0.5 * s[3] > 0), lambda s: 0]):
        for episode in range(3):
            env = gym.make("CartPole-v1")
            state, _ = env.reset(seed=40 + candidate * 3 + episode)
            done = False
            while not done:
                state, reward, terminated, truncated, _ = env.step(choose(state))
                expected[candidate, episode] += reward
                done = terminated or truncated
            env.close()
    np.testing.assert_array_equal(returns, expected)
    assert returns[0].min() > returns[1].max()  # the balancer outlasts pushing one way


def test_parking_episodes_report_their_success_and_returns_equal_a_plain_loop():
    from agents.controllers import Controller
    from envs.make import make_vector_env

    bench = load_benchmark()
    envs, spec = make_vector_env("Parking-v0", 2 * 2, obs="state")
    controller = Controller(spec.obs_shape[0], gym.spaces.Discrete(9), "linear")
    candidates = np.zeros((2, controller.num_params))
    candidates[0, -9 + 3] = 1.0  # bias[3]: full throttle, straight on, out of the lot (terminates)
    candidates[1, -9 + 0] = 1.0  # bias[0]: coast, standing where it started until the time limit
    successes = np.full(2 * 2, np.nan)
    returns = bench.episode_returns(envs, controller, candidates, 2, seed=70, successes=successes)
    envs.close()

    expected, ends = np.zeros((2, 2)), []
    for candidate, action in enumerate([3, 0]):
        for episode in range(2):
            env = gym.make("Parking-v0", observation="state")
            env.reset(seed=70 + candidate * 2 + episode)
            done = False
            while not done:
                _, reward, terminated, truncated, info = env.step(action)
                expected[candidate, episode] += reward
                done = terminated or truncated
            ends.append((terminated, info["success"]))
            env.close()
    np.testing.assert_allclose(returns, expected, atol=1e-9)
    np.testing.assert_array_equal(successes, [float(success) for _, success in ends])  # reported, each 0
    assert [terminated for terminated, _ in ends] == [True, True, False, False]


@pytest.mark.slow
def test_quick_run_prints_each_figure_for_each_controller_kind():
    result = run_script("controllers.py", "--quick", "--env", "CartPole-v1", "--controller", "linear")
    records = records_of(result)
    assert "success=" not in result.stderr  # CartPole says nothing of success: the bar shows no share
    assert sorted(records) == ["num_params", "return_mean", "return_std", "search_s"]
    assert all(record["bench"] == "controllers" and record["env"] == "CartPole-v1" for record in records.values())
    assert records["num_params"]["value"] == 4 * 2 + 2  # CartPole's 4 state values to 2 action scores, + 2 biases
    assert 8 <= records["return_mean"]["value"] <= 500  # a CartPole-v1 episode lasts 8 to 500 steps
    assert records["return_std"]["value"] >= 0 and math.isfinite(records["search_s"]["value"])


@pytest.mark.slow
def test_quick_run_on_parking_prints_its_success_rate():
    result = run_script("controllers.py", "--quick", "--env", "Parking-v0", "--controller", "linear")
    records = records_of(result)
    # The progress bar's last line says the last generation's share of parked episodes.
    assert re.search(r"3/3 .*success=[0-9.e-]+", result.stderr.replace("\r", "\n"))
    assert sorted(records) == ["num_params", "return_mean", "return_std", "search_s", "success_rate"]
    assert records["num_params"]["value"] == 10 * 9 + 9  # the 10 state values to 9 action scores, + 9 biases
    assert 0.0 <= records["success_rate"]["value"] <= 1.0 and records["success_rate"]["episodes"] == 4


def test_the_controllers_view_hides_and_scales_state_dimensions():
    import pytest

    bench = load_benchmark()
    states = np.array([[15.0, 0.5, 7.0, -4.0], [-30.0, -1.0, -3.0, 1.0]], dtype=np.float32)
    view, width = bench.state_view(4, hide=[1], scale=[30.0, 1.0, 5.0])
    # Dimension 1 hidden; 0 divided by 30, 2 by 1, 3 by 5.
    assert width == 3
    np.testing.assert_allclose(view(states), [[0.5, 7.0, -0.8], [-1.0, -3.0, 0.2]])
    view, width = bench.state_view(4, hide=[], scale=None)
    assert width == 4 and np.array_equal(view(states), states)
    with pytest.raises(SystemExit, match=r"--hide: state dimensions are 0..3, got \[4\]"):
        bench.state_view(4, hide=[4], scale=None)
    with pytest.raises(SystemExit, match="must see at least one"):
        bench.state_view(4, hide=[0, 1, 2, 3], scale=None)
    with pytest.raises(SystemExit, match=r"--scale: one positive number per state dimension seen \(3\), got \[1.0\]"):
        bench.state_view(4, hide=[1], scale=[1.0])
    with pytest.raises(SystemExit, match="--scale: one positive number"):
        bench.state_view(4, hide=[1], scale=[1.0, 0.0, 2.0])


def test_a_success_weight_adds_its_multiple_of_the_share_of_successes_to_the_mean_return():
    bench = load_benchmark()
    returns = np.array([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]])
    successes = np.array([[1.0, 0.0], [np.nan, np.nan], [1.0, 1.0]])  # the middle env does not say: counts as none
    np.testing.assert_allclose(bench.scored(returns, successes, 10.0), [2.0 + 5.0, 0.0, 2.0 + 10.0])
    np.testing.assert_allclose(bench.scored(returns, successes, 0.0), [2.0, 0.0, 2.0])  # the return alone


def test_the_success_share_counts_unsaid_episodes_as_failures_and_is_none_when_no_episode_says():
    bench = load_benchmark()
    assert bench.success_share(np.array([1.0, 0.0, np.nan, 1.0])) == 0.5
    assert bench.success_share(np.array([np.nan, np.nan])) is None


@pytest.mark.slow
def test_quick_run_with_the_cars_view_alone_sees_six_state_dimensions():
    records = quick_run("controllers.py", "--env", "Parking-v0", "--controller", "linear", "--hide", "0,1,2,3",
                        "--scale", "6,0.6,20,20,1,1", "--success-weight", "10")  # fmt: skip
    assert records["num_params"]["value"] == 6 * 9 + 9  # speed, steering and the space from the car, to 9 scores
    assert 0.0 <= records["success_rate"]["value"] <= 1.0


@pytest.mark.slow
def test_a_population_below_two_is_refused_by_name():
    result = run_script("controllers.py", "--population", "1")
    assert result.returncode == 2 and "--population must be >= 2, got 1" in result.stderr
