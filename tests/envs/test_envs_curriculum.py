"""StartCurriculum: its stages run from Parking-v0's start to ParkingLot-v0's, it widens by the rule (oracle), never
past the last stage, checks its arguments, and resumes from its state."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

from envs import register_envs
from envs.curriculum import LOT_STAGE, NEAR_STAGE, StartCurriculum, StartStage, widening_stages
from envs.parking import ParkingEnv


def test_default_stages_widen_from_parking_to_parking_lot() -> None:
    register_envs()
    stages = StartCurriculum().stages
    assert len(stages) == 5 and stages[0] == NEAR_STAGE and stages[-1] == LOT_STAGE
    near, lot = gym.make("wm/Parking-v0").unwrapped, gym.make("wm/ParkingLot-v0").unwrapped
    assert stages[0].env_kwargs() == {
        "start_distance": near.start_distance,
        "start_heading_spread": near.start_heading_spread,
    }
    assert stages[-1].env_kwargs() == {
        "start_distance": lot.start_distance,
        "start_heading_spread": lot.start_heading_spread,
    }
    middle = stages[:-1]
    assert all(a.distance[1] < b.distance[1] for a, b in zip(middle[:-1], middle[1:], strict=True))  # farther each step
    assert all(
        a.heading_spread < b.heading_spread for a, b in zip(stages[:-1], stages[1:], strict=True)
    )  # and turned further away
    assert len(widening_stages(1)) == 2 and widening_stages(1)[1] == LOT_STAGE


def test_a_stage_s_kwargs_give_starts_in_that_stage() -> None:
    stage = widening_stages()[2]
    env = ParkingEnv(observation="state")
    env.set_start(**stage.env_kwargs())
    for seed in range(100):
        state, _ = env.reset(seed=seed)
        distance, bearing = math.hypot(state[6], state[7]), math.atan2(state[7], state[6])
        assert stage.distance[0] - 1e-4 <= distance <= stage.distance[1] + 1e-4
        assert abs(bearing) <= stage.heading_spread + 1e-5


def test_widens_when_the_recent_mean_reaches_the_threshold() -> None:
    """Oracle: threshold 0.8 over the last 2 evaluations; rates from before a widening do not count after it."""
    stages = (NEAR_STAGE, StartStage((6.0, 16.0), 1.5), LOT_STAGE)
    curriculum = StartCurriculum(stages, threshold=0.8, window=2)
    widened = [curriculum.update(rate) for rate in (0.9, 0.5, 0.9, 0.8, 1.0, 0.6, 0.9, 1.0, 1.0)]
    # 0.9 (one rate), 0.7, 0.7, 0.85 -> stage 1; 1.0 (one rate), 0.8 -> stage 2 (the last); then nothing more
    assert widened == [False, False, False, True, False, True, False, False, False]
    assert curriculum.index == 2 and curriculum.finished and curriculum.stage == LOT_STAGE


def test_window_of_one_and_a_single_stage() -> None:
    curriculum = StartCurriculum(threshold=0.5, window=1)
    assert [curriculum.update(0.5) for _ in range(6)] == [True] * 4 + [False] * 2
    only = StartCurriculum([NEAR_STAGE])
    assert only.finished and not only.update(1.0) and only.stage == NEAR_STAGE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0.0}, r"threshold must be a success rate in \(0, 1\], got 0.0"),
        ({"threshold": 1.5}, "threshold must be a success rate"),
        ({"window": 0}, "window must be an integer >= 1, got 0"),
        ({"window": 2.0}, "window must be an integer >= 1"),
        ({"stages": []}, "stages must be a non-empty sequence of StartStage"),
        ({"stages": [{"distance": None}]}, "stages must be a non-empty sequence of StartStage"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^StartCurriculum: {message}"):
        StartCurriculum(**kwargs)


def test_bad_rates_stages_and_steps_are_refused() -> None:
    curriculum = StartCurriculum()
    for rate in (-0.1, 1.1, float("nan"), None, True):
        with pytest.raises(ValueError, match="success_rate must be a number in"):
            curriculum.update(rate)
    assert curriculum.state_dict() == {"index": 0, "recent": []}
    with pytest.raises(ValueError, match="start_distance's low end must be >= 6 m"):
        StartStage((2.0, 8.0), 0.5)  # a stage the env would refuse is refused when made
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        widening_stages(0)


def test_state_dict_resumes_the_same_course() -> None:
    """Property: stopping after any evaluation and resuming from the state gives the same stages as running on."""
    rng = np.random.default_rng(0)
    rates = rng.uniform(0.5, 1.0, size=30).tolist()
    straight = StartCurriculum(window=3)
    expected = [(straight.update(rate), straight.index) for rate in rates]
    for cut in (0, 1, 7, 19):
        first = StartCurriculum(window=3)
        course = [(first.update(rate), first.index) for rate in rates[:cut]]
        resumed = StartCurriculum(window=3)
        resumed.load_state_dict(first.state_dict())
        course += [(resumed.update(rate), resumed.index) for rate in rates[cut:]]
        assert course == expected
    assert expected[-1][1] > 0  # the course did widen
    with pytest.raises(ValueError, match=r"stage index must be in \[0, 5\)"):
        StartCurriculum().load_state_dict({"index": 5, "recent": []})
    with pytest.raises(ValueError, match="recent must be a list of at most 2 rates"):
        StartCurriculum().load_state_dict({"index": 0, "recent": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match=r"recent rates must lie in \[0, 1\]"):
        StartCurriculum().load_state_dict({"index": 0, "recent": [2.0]})
