"""Parking-v0 and ParkingLot-v0: API conformance, solvability by a scripted controller, random failure, cameras and
gauges, the start distributions (the near start shows the space; the whole lot's is the old one) and their options."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from envs import EpisodeStore, collect, make_env, make_vector_env, register_envs
from envs.parking import (
    CAMERA_PIXELS,
    CAMERA_SPAN,
    MAX_FORWARD_SPEED,
    NEAR_HEADING_SPREAD,
    NEAR_START_DISTANCE,
    SPACE_LENGTH,
    SPACE_WIDTH,
    START_MARGIN,
    TARGET_FILL,
    ParkingEnv,
    ScriptedParker,
    ScriptedParkers,
    parking_pixels,
    space_in_view,
)


def run_episode(env: gym.Env, policy) -> dict:
    """One episode; returns the last info with the episode's length and return."""
    observation, info = env.reset()
    total, steps = 0.0, 0
    while True:
        observation, reward, terminated, truncated, info = env.step(policy(observation))
        total += reward
        steps += 1
        if terminated or truncated:
            return {**info, "length": steps, "return": total, "terminated": terminated}


def test_check_env_passes_with_warnings_as_errors() -> None:
    register_envs()
    for kwargs in ({}, {"observation": "state"}):
        env = gym.make("Parking-v0", render_mode="rgb_array", **kwargs).unwrapped
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_env(env)
        env.close()


@pytest.mark.parametrize("env_id", ["Parking-v0", "wm/ParkingLot-v0"])
def test_scripted_controller_parks_at_least_90_percent(env_id: str) -> None:
    env, _ = make_env(env_id, obs="state", seed=2024)
    parker = ScriptedParker()

    def policy(state: np.ndarray) -> int:
        return parker(state)

    results = []
    for _ in range(50):
        parker.reset()
        results.append(run_episode(env, policy))
    success = np.mean([r["success"] for r in results])
    assert success >= 0.9, f"scripted success {success:.2f}"
    for r in results:
        if r["success"]:  # success ends the episode by termination, stopped inside the space
            assert r["terminated"] and r["inside"] and abs(r["state"][4]) < 0.05 and r["return"] > 5


def test_scripted_parkers_collect_successful_episodes(tmp_path) -> None:
    envs, spec = make_vector_env("Parking-v0", 2, obs="state", seed=7)
    store = EpisodeStore(tmp_path, spec=spec)
    stats = collect(envs, ScriptedParkers(2), 1200, store=store, cut_partial=False)
    envs.close()
    assert stats.episodes >= 6
    assert stats.terminated / stats.episodes >= 0.8 and np.mean(np.array(stats.returns) > 5) >= 0.8
    for episode in store:  # each stored episode starts at rest and, when parked, ends stopped in the space
        assert episode.state[0, 4] == 0.0
        if episode.terminated:
            assert abs(episode.state[-1, 4]) < 0.05


def test_random_actions_almost_never_park() -> None:
    env, spec = make_env("Parking-v0", obs="state", seed=99)
    rng = np.random.default_rng(0)
    results = [run_episode(env, lambda _: int(rng.integers(spec.action_dim))) for _ in range(50)]
    assert np.mean([r["success"] for r in results]) <= 0.05
    assert all(r["length"] <= 300 for r in results)
    assert any(not r["terminated"] for r in results)  # some run into the 300-step limit (truncation)


def test_leaving_the_lot_terminates_with_a_penalty() -> None:
    env = ParkingEnv(observation="state")
    env.reset(seed=5)
    for _ in range(400):
        _, reward, terminated, truncated, info = env.step(3)  # full throttle, straight on
        if terminated:
            break
    assert terminated and not info["success"] and reward < -4


def potential(info: dict) -> float:
    """The reward's shaping potential, by hand from the true state: exp(-d / 5) + inside * (0.5 + exp(-|v| / 0.3))."""
    state = info["state"]
    distance = math.hypot(state[6], state[7])  # the space's centre in the car frame: its distance from the car
    return math.exp(-distance / 5) + info["inside"] * (0.5 + math.exp(-abs(state[4]) / 0.3))


def test_return_is_the_potential_difference_plus_the_outcome() -> None:
    """Oracle: the shaping telescopes, so a return is potential(end) - potential(start) + 5 parked - 5 left the lot."""
    env, _ = make_env("Parking-v0", obs="state", seed=11)
    parker, rng = ScriptedParker(), np.random.default_rng(0)
    outcomes = set()
    for episode in range(6):
        parker.reset()
        observation, info = env.reset()
        start, total = potential(info), 0.0
        while True:
            action = parker(observation) if episode % 2 else int(rng.integers(9))
            observation, reward, terminated, truncated, info = env.step(action)
            total += reward
            if terminated or truncated:
                break
        left_lot = terminated and not info["success"]
        outcomes.add("parked" if info["success"] else "left the lot" if left_lot else "time limit")
        expected = potential(info) - start + 5 * info["success"] - 5 * left_lot
        assert total == pytest.approx(expected, abs=1e-6)
    assert "parked" in outcomes and len(outcomes) >= 2


def test_parking_beats_lingering_in_the_space() -> None:
    """The same drive in, then stopped (parked) or creeping about inside until the time limit: parking earns more."""
    env, _ = make_env("Parking-v0", obs="state", seed=3)

    def creep(state: np.ndarray) -> int:
        """Keep moving inside the space: brake above 0.25 m/s, coast, push towards its centre below 0.08 m/s."""
        speed, centre_ahead = state[4], state[6] > 0
        if abs(speed) > 0.25:
            return 6 if speed > 0 else 3  # drive against the motion: brake
        if abs(speed) < 0.08:
            return 3 if centre_ahead else 6  # forwards or backwards, straight
        return 0

    def drive_in(seed: int, linger: bool) -> tuple[float, bool]:
        parker = ScriptedParker()
        observation, info = env.reset(seed=seed)
        total, lingering = 0.0, False
        while True:
            lingering = lingering or (linger and info["inside"])
            action = creep(info["state"]) if lingering else parker(observation)
            observation, reward, terminated, truncated, info = env.step(action)
            total += reward
            if terminated or truncated:
                return total, info["success"]

    for seed in range(100, 105):
        parked, success = drive_in(seed, linger=False)
        lingered, lingered_success = drive_in(seed, linger=True)
        assert success and not lingered_success
        assert parked > lingered + 4, (seed, parked, lingered)


def test_observation_spaces_and_true_state() -> None:
    env = ParkingEnv(render_mode="rgb_array")
    observation, info = env.reset(seed=3)
    assert observation["cameras"].shape == (4, 80, 80, 3) and observation["cameras"].dtype == np.uint8
    assert env.observation_space.contains(observation)
    state = info["state"]
    # Oracle: the space's pose relative to the car, from the env's world-frame attributes.
    heading = math.atan2(state[3], state[2])
    offset = env.space_center - state[:2]
    local = [
        math.cos(heading) * offset[0] + math.sin(heading) * offset[1],
        -math.sin(heading) * offset[0] + math.cos(heading) * offset[1],
    ]
    np.testing.assert_allclose(state[6:8], local, atol=1e-4)
    np.testing.assert_allclose(
        math.atan2(state[9], state[8]) % (2 * math.pi), (env.space_heading - heading) % (2 * math.pi), atol=1e-5
    )
    top = env.render()
    assert top.shape == (400, 400, 3) and top.dtype == np.uint8
    # The cameras move with the car: driving changes what they see.
    before = observation["cameras"].copy()
    for _ in range(5):
        observation, *_ = env.step(3)
    assert np.abs(observation["cameras"].astype(int) - before).mean() > 1


def test_camera_pixels_match_the_texture() -> None:
    """Equivalence: the vectorised camera gather equals a per-pixel lookup for a few pixels."""
    env = ParkingEnv()
    observation, _ = env.reset(seed=11)
    from envs.parking import CAMERA_PIXELS, _camera_points

    points, ego = _camera_points()
    rng = np.random.default_rng(0)
    for flat in rng.choice(np.flatnonzero(~ego), size=50, replace=False):
        x, y = points[:, flat]
        world_x = env.x + math.cos(env.heading) * x - math.sin(env.heading) * y
        world_y = env.y + math.sin(env.heading) * x + math.cos(env.heading) * y
        col = int((world_x - env._origin_x) / 0.1)
        row = int((env._origin_y - world_y) / 0.1)
        camera, rest = divmod(int(flat), CAMERA_PIXELS * CAMERA_PIXELS)
        pixel = observation["cameras"][camera].reshape(-1, 3)[rest]
        # float32 rounding may move a point across a texel edge: accept the texel or a neighbour
        window = env._texture[row - 1 : row + 2, col - 1 : col + 2].reshape(-1, 3)
        assert (window == pixel).all(axis=1).any()


def test_space_in_view_oracle_and_camera_patches() -> None:
    """Oracle points, then equivalence: in view exactly where a camera's patch (its pixels' extent) covers."""
    from envs.parking import CAMERA_PIXELS, CAMERA_SPAN, NUM_CAMERAS, _camera_points

    def states(points: np.ndarray) -> np.ndarray:
        out = np.zeros((len(points), 10), np.float32)
        out[:, 6:8] = points
        return out

    # ahead, behind, left, right, a cross's inner corner; then a patch's outer corner's outside, far away
    hand = np.array([[10, 0], [-13, 6], [3, 13], [-6, -14], [7, 7], [10, 8], [-8, -8], [15, 0], [0, -14.5]])
    assert space_in_view(states(hand)).tolist() == [True] * 5 + [False] * 4

    points, _ = _camera_points()
    half_pixel = CAMERA_SPAN / CAMERA_PIXELS / 2
    patches = points.reshape(2, NUM_CAMERAS, -1)
    low, high = patches.min(axis=2) - half_pixel, patches.max(axis=2) + half_pixel  # (2, cameras)
    rng = np.random.default_rng(0)
    probe = rng.uniform(-20, 20, size=(5000, 2))
    covered = ((probe[:, :, None] >= low) & (probe[:, :, None] <= high)).all(axis=1).any(axis=1)
    assert 0.2 < covered.mean() < 0.8
    assert (space_in_view(states(probe)) == covered).all()


def test_pixels_tile_cameras_and_draw_gauges() -> None:
    cameras = np.zeros((4, 80, 80, 3), np.uint8)
    image = parking_pixels(cameras, np.array([MAX_FORWARD_SPEED, -0.6], np.float32), 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    speed_row, steer_row = image[-4], image[-2]
    green = (speed_row[:, 1] > 200) & (speed_row[:, 0] < 100)
    orange = (steer_row[:, 0] > 200) & (steer_row[:, 1] < 200) & (steer_row[:, 1] > 100)
    assert green[40:].all() and not green[:30].any()  # full forward speed: the bar fills the right half
    assert orange[1:30].all() and not orange[34:].any()  # full right lock (negative): the left half
    stopped = parking_pixels(cameras, np.zeros(2, np.float32), 64)
    assert not ((stopped[-4][:, 1] > 200) & (stopped[-4][:, 0] < 100)).sum() > 2


def test_pixel_mode_episode_through_make_env() -> None:
    env, spec = make_env("Parking-v0", obs="pixels", size=64, seed=1)
    observation, info = env.reset()
    assert spec.obs_shape == (64, 64, 3) and observation.shape == (64, 64, 3)
    assert spec.max_episode_steps == 300
    for _ in range(10):
        observation, _, terminated, truncated, info = env.step(4)
    assert "success" in info and info["state"].shape == (10,)


@pytest.mark.parametrize("bad", [9, -1, 2.0, "3"])
def test_parking_rejects_bad_actions(bad) -> None:
    env = ParkingEnv(observation="state")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"Parking-v0: action must be an integer in \[0, 9\)"):
        env.step(bad)


# ---------------------------------------------------------------------------- start distributions

LOT = {"start_distance": None, "start_heading_spread": math.pi}


def target_pixels(cameras: np.ndarray) -> int:
    """How many camera pixels show the target space's fill: the colour is painted there only (the env's texture)."""
    return int((cameras == TARGET_FILL).all(axis=-1).sum())


def test_near_start_shows_the_space_in_every_first_frame() -> None:
    """Property over 300 seeds: the first frame of Parking-v0 shows at least half of the space's fill on its cameras
    (the space's centre on a camera's patch too); the whole lot's first frame shows none of it about half the time."""
    pixel = CAMERA_SPAN / CAMERA_PIXELS
    whole_space = (SPACE_LENGTH - 0.4) * (SPACE_WIDTH - 0.4) / pixel**2  # ~475 pixels of fill when all of it is seen
    near, lot = ParkingEnv(), ParkingEnv(**LOT)
    near_counts, lot_counts = [], []
    for seed in range(300):
        observation, info = near.reset(seed=seed)
        near_counts.append(target_pixels(observation["cameras"]))
        assert space_in_view(info["state"]), seed
        observation, _ = lot.reset(seed=seed)
        lot_counts.append(target_pixels(observation["cameras"]))
    assert min(near_counts) >= 0.5 * whole_space, min(near_counts)
    assert 0.3 < np.mean(np.array(lot_counts) == 0) < 0.7


def test_near_start_geometry_over_many_resets() -> None:
    """Property: distance in range, the space within the heading spread of the nose, the car in the lot, at rest."""
    for kwargs, (low, high), spread in (
        ({}, NEAR_START_DISTANCE, NEAR_HEADING_SPREAD),
        ({"start_distance": (8.0, 30.0), "start_heading_spread": 2.0}, (8.0, 30.0), 2.0),
        ({"start_distance": [14, 14], "start_heading_spread": 0}, (14.0, 14.0), 0.0),
    ):
        env = ParkingEnv(observation="state", **kwargs)
        distances = []
        for seed in range(400):
            state, _ = env.reset(seed=seed)
            distance, bearing = math.hypot(state[6], state[7]), math.atan2(state[7], state[6])
            distances.append(distance)
            assert low - 1e-4 <= distance <= high + 1e-4 and abs(bearing) <= spread + 1e-5, (kwargs, seed)
            assert np.all(np.abs(state[:2]) <= 20.0 - START_MARGIN) and state[4] == 0.0
        assert max(distances) - min(distances) >= 0.8 * (high - low)  # the range is used, not one end of it


# Parking-v0 until the near start, recorded from its code before the change: per seed, the first reset's state, the
# sum of its camera pixels and its count of target pixels, then 120 fixed actions (or fewer: the episode ended), the
# return and last state, and a second reset (the env's RNG continues). ParkingLot-v0 must give the same.
OLD_PARKING = [
    (0, [-13.537227, 8.771566, -0.853478, 0.521129, 0.0, 0.0, -22.283319, 3.684494, 0.692666, 0.721258], 6447806, 0,
     -5.004674749, 68, [-17.766407, 7.772226, -0.897793, -0.440418, 1.028684, 0.6, -13.088424, 21.744606, 0.98034,
     -0.197317], [-10.520068, 4.777483, 0.601979, 0.798512, 0.0, 0.0, -0.621386, -21.120754, 0.212072, 0.977254],
     6580214),
    (2, [6.399695, -8.73877, -0.940568, -0.339605, 0.0, 0.0, 10.660612, -7.56982, 0.057015, -0.998373], 6762178, 188,
     -0.038728948, 120, [6.4421, -16.370008, 0.650505, -0.759502, 0.384878, 0.6, -16.676352, -2.359617, -0.953935,
     0.300014], [7.71579, -5.091895, -0.888762, 0.458369, 0.0, 0.0, 12.882859, 0.591265, 0.978571, -0.205909],
     6827188),
    (4, [-11.736591, 3.005963, 0.713681, -0.700471, 0.0, 0.0, 18.496681, 14.355089, -0.809913, -0.58655], 6537710, 0,
     0.02737125, 120, [-4.849039, -2.04687, 0.849432, -0.527698, 0.430596, 0.0, 12.66838, 10.626474, -0.918462,
     -0.39551], [-9.024608, 3.047845, 0.279807, 0.960056, 0.0, 0.0, 10.356554, -2.853626, 0.161635, 0.986851],
     6838086),
]  # fmt: skip


@pytest.mark.parametrize("make", ["registered", "kwargs"])
def test_parking_lot_is_the_old_parking(make: str) -> None:
    """Equivalence with recorded values: same seed, same starts, observations and rewards as the old Parking-v0."""
    for seed, start, pixel_sum, fill, total, length, end, second, second_sum in OLD_PARKING:
        env = gym.make("wm/ParkingLot-v0") if make == "registered" else ParkingEnv(**LOT)
        observation, info = env.reset(seed=seed)
        np.testing.assert_allclose(info["state"], start, atol=1e-5)
        # The cameras' float32 gather may move a point across a texel edge on other hardware: sums within 0.1%.
        assert observation["cameras"].astype(np.int64).sum() == pytest.approx(pixel_sum, rel=1e-3)
        assert abs(target_pixels(observation["cameras"]) - fill) <= 3
        rewards = []
        for t in range(120):
            _, reward, terminated, truncated, info = env.step((seed + 7 * t) % 9 if t % 3 else 4)
            rewards.append(reward)
            if terminated:
                break
        assert len(rewards) == length and sum(rewards) == pytest.approx(total, abs=1e-8)
        np.testing.assert_allclose(info["state"], end, atol=1e-5)
        observation, info = env.reset()
        np.testing.assert_allclose(info["state"], second, atol=1e-5)
        assert observation["cameras"].astype(np.int64).sum() == pytest.approx(second_sum, rel=1e-3)
        env.close()


def test_registered_ids_and_their_starts() -> None:
    """Parking-v0 (both ids) is the near start and ParkingLot-v0 the whole lot; make_env serves both as the same
    env (spaces, true state, step limit); gym.make passes the start options."""
    register_envs()
    for env_id in ("Parking-v0", "wm/Parking-v0"):
        env = gym.make(env_id).unwrapped
        assert (env.start_distance, env.start_heading_spread) == (NEAR_START_DISTANCE, NEAR_HEADING_SPREAD)
    lot = gym.make("wm/ParkingLot-v0").unwrapped
    assert (lot.start_distance, lot.start_heading_spread) == (None, math.pi)
    custom = gym.make("wm/Parking-v0", start_distance=(7, 9), start_heading_spread=0.5).unwrapped
    assert (custom.start_distance, custom.start_heading_spread) == ((7.0, 9.0), 0.5)
    for obs in ("state", "pixels"):
        near_env, near_spec = make_env("wm/Parking-v0", obs=obs, size=32, seed=0)
        lot_env, lot_spec = make_env("wm/ParkingLot-v0", obs=obs, size=32, seed=0)
        assert near_spec.to_dict() == {**lot_spec.to_dict(), "env_id": "wm/Parking-v0"}
        assert near_spec.state_dim == 10 and near_spec.max_episode_steps == 300
        _, info = lot_env.reset()
        assert info["state"].shape == (10,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_distance": 10.0}, r"start_distance must be None \(anywhere in the lot\) or a pair \(low, high\)"),
        ({"start_distance": (6, 8, 10)}, "start_distance must be None"),
        ({"start_distance": (6, float("nan"))}, "start_distance must be None"),
        ({"start_distance": ("6", 8)}, "start_distance must be None"),
        ({"start_distance": (3, 8)}, r"start_distance's low end must be >= 6 m .*, got 3"),
        ({"start_distance": (9, 8)}, r"start_distance must be \(low, high\), low <= high, got \(9, 8\)"),
        ({"start_distance": (15, 20)}, r"start_distance's low end must be <= 14.0 m .*, got 15"),
        ({"start_distance": (6, 45)}, r"start_distance's high end must be <= 39.6 m .*, got 45"),
        ({"start_heading_spread": 4.0}, r"start_heading_spread must be a number of radians in \[0, pi\], got 4.0"),
        ({"start_heading_spread": -0.1}, "start_heading_spread must be a number of radians"),
        ({"start_heading_spread": None}, "start_heading_spread must be a number of radians"),
        ({"start_heading_spread": True}, "start_heading_spread must be a number of radians"),
    ],
)
def test_start_options_are_checked_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^ParkingEnv: {message}") as raised:
        ParkingEnv(observation="state", **kwargs)
    assert "\n" not in str(raised.value)
    env = ParkingEnv(observation="state")
    with pytest.raises(ValueError, match=message):
        env.set_start(**{"start_distance": NEAR_START_DISTANCE, "start_heading_spread": NEAR_HEADING_SPREAD, **kwargs})
    assert env.start_distance == NEAR_START_DISTANCE  # a refused change leaves the start as it was


@pytest.mark.parametrize("asynchronous", [False, True])
def test_set_start_applies_from_the_next_reset_through_a_vector_env(asynchronous: bool) -> None:
    """Oracle: a fixed distance of 10 m with the nose on the space puts the space 10 m straight ahead."""
    envs, _ = make_vector_env("wm/Parking-v0", 2, obs="state", seed=0, asynchronous=asynchronous)
    first, _ = envs.reset()
    envs.call("set_start", start_distance=(10.0, 10.0), start_heading_spread=0.0)
    states, _ = envs.reset()
    envs.close()
    np.testing.assert_allclose(states[:, 6:8], [[10.0, 0.0], [10.0, 0.0]], atol=1e-4)
    assert not np.allclose(first[:, 6], 10.0, atol=1e-3)
