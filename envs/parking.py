"""Parking-v0 and ParkingLot-v0: park a car in a marked space of a bounded lot, seen through four egocentric cameras.

The two tasks differ only in where the car starts (`ParkingEnv`'s `start_distance` and `start_heading_spread`):

- Parking-v0 (the default): 6 to 12.5 m from the space's centre, the nose within 26 degrees of the direction to
  it, so that the space's centre lies at least 1.5 m inside the front camera's patch in the first frame
  (`NEAR_START_DISTANCE`, `NEAR_HEADING_SPREAD`, computed from the camera geometry below).
- ParkingLot-v0: anywhere in the lot at least 10 m from the space, any heading (`start_distance=None`,
  `start_heading_spread=pi`), so the space is out of every camera's view in about half the first frames.

Between the two, `start_distance=(low, high)` draws the distance uniformly from that range and the direction from
the space uniformly, redrawn until the car lies in the lot; `start_heading_spread=s` turns the car's nose up to s
radians away from the direction to the space (s = pi: any heading). `set_start` changes them between episodes, which
is how `envs.curriculum.StartCurriculum` widens the start from the near one to the whole lot.

World frame: metres, x east, y north, headings counter-clockwise from +x; the lot is the square
[-half, half]^2 (default 40 m wide). Car frame: x forward, y left, origin at the car's centre.

Physics (dt = 0.1 s) is a kinematic single-track (bicycle) model referenced at the car's centre with
longitudinal forces: traction limited by tyre friction, aerodynamic drag, rolling resistance and
braking; cornering is limited by the tyres' lateral grip (above it the car understeers) and
scrubs speed. Resistive forces never reverse the motion, so braking stops the car exactly.

Actions, `Discrete(9)`, `action = 3 * drive + steer`:

    drive 0 coast | 1 forward: gas forward, or brake while rolling backwards
                  | 2 backward: brake while rolling forwards, then reverse
    steer 0 straight (wheels return to centre) | 1 left | 2 right (wheels turn at a limited rate)

Observation (`observation="cameras"`, the default): `{"cameras": uint8 (4, 80, 80, 3), "vector":
float32 [speed m/s, steering rad]}`. The cameras are a surround view (front, rear, left, right), each an
orthographic top-down 14 m x 14 m patch beside the car, with the car's own body painted in. They
are rendered with numpy: the lot is drawn once per episode into a texture, and each frame is one
affine map of precomputed camera points plus one gather. `observation="state"` gives the true state
instead and skips the cameras. Parked cars and lines are visual only (no collisions).

Reward: potential-based shaping (Ng, Harada & Russell 1999, "Policy invariance under reward
transformations") plus the outcome. Each step pays `potential(after) - potential(before)`, where

    potential = exp(-distance / 5) + inside * (0.5 + exp(-|speed| / 0.3))

(distance from the car's centre to the space's, m; inside: the whole car within the space), so getting
closer, getting in and slowing down inside pay, and the reverse costs as much. On top: `+5` on success,
`-5` when any corner leaves the lot (terminates). The shaping telescopes, so an episode's return is
`potential(end) - potential(start)` plus its outcome: a car cannot earn by lingering, and parking beats
any episode that does not park (the potential lies in [0, 2.5], the success bonus is 5). A per-step
reward for being inside would not: creeping about inside the space until the time limit out-earned
parking seven times over (about 50 against 7 for the scripted parker, over 20 episodes).
Success (terminates, `info["success"] = True`): the whole car inside the space and `|speed| < 0.05 m/s`
for 3 consecutive steps; either heading counts (forwards or reversed in). The step limit (300) comes
from the registration's `TimeLimit` (truncation).

`info["state"]` (float32, 10): `[x, y, cos h, sin h, speed, steering, space_x, space_y, cos dh, sin dh]`,
the space's centre and heading relative to the car, in the car frame.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

DT = 0.1  # s per step
GRAVITY = 9.81
MASS = 1200.0  # kg
WHEELBASE = 2.6  # m
CAR_LENGTH = 4.2
CAR_WIDTH = 1.8
MAX_STEER = 0.6  # rad, wheel angle at full lock
STEER_RATE = 2.0  # rad/s, how fast the wheels turn
ENGINE_FORCE = 4000.0  # N forwards, tapering to 0 at MAX_FORWARD_SPEED (a speed limiter)
REVERSE_FORCE = 2500.0  # N backwards, tapering to 0 at MAX_REVERSE_SPEED
MAX_FORWARD_SPEED = 6.0  # m/s
MAX_REVERSE_SPEED = 3.0
BRAKE_FORCE = 8000.0  # N
FRICTION = 0.9  # tyre-road friction coefficient
DRIVEN_AXLE_LOAD = 0.55  # share of the weight on the driven (front) axle: bounds traction
DRAG = 0.5 * 1.2 * 0.32 * 2.2  # 1/2 rho c_d A, N s^2 / m^2
ROLLING_RESISTANCE = 0.015  # c_rr
MAX_LATERAL_ACCEL = 0.9 * FRICTION * GRAVITY  # m/s^2 the tyres can hold in a corner
CORNER_SCRUB = 0.08  # share of the lateral acceleration lost as longitudinal drag while cornering
STOP_SPEED = 0.05  # m/s below which the car counts as stopped
SUCCESS_STEPS = 3  # consecutive stopped-inside steps that end the episode with success
SUCCESS_BONUS = 5.0  # the reward of parking (and the penalty of leaving the lot)

LOT_SIZE = 40.0  # m
SPACE_WIDTH = 3.0  # m, across the space
SPACE_LENGTH = 6.0  # m, along the space
ROW_SPACES = 3  # painted spaces on each side of the target in its row
MAX_STEPS = 300  # registered TimeLimit

NUM_CAMERAS = 4
CAMERA_PIXELS = 80
CAMERA_SPAN = 14.0  # m covered by one camera image, side to side
TEXTURE_RESOLUTION = 0.1  # m per texture pixel
# Texture padding beyond the lot: the car may overhang the lot by a few metres before the episode ends and a
# camera's far corner reaches sqrt(14^2 + 7^2) ~ 15.7 m from the car's centre.
TEXTURE_PADDING = 20.0

# Start distribution. The car's centre starts this far inside the lot's edge (as in the whole-lot start).
START_MARGIN = 6.0  # m
# Closer than the car's and the space's half-diagonals (2.3 + 3.4 m) the car could start on the space.
MIN_START_DISTANCE = 6.0  # m
# The farthest apart two starts in the lot can be; and the farthest a range's low end may lie: a circle of up to this
# radius (the starts' square's inscribed one) about any space's centre, which lies inside that square, keeps an arc
# of starts in the square, not just a few points.
MAX_START_DISTANCE = 2 * math.sqrt(2) * (LOT_SIZE / 2 - START_MARGIN)  # 39.6 m
MAX_START_DISTANCE_LOW = LOT_SIZE / 2 - START_MARGIN  # 14 m
LOT_START_DISTANCE = 10.0  # m, the whole-lot start's least distance from the space
# The near start (Parking-v0): the space's centre at least VIEW_MARGIN inside the front camera's patch, which reaches
# CAMERA_SPAN ahead of the car's centre and CAMERA_SPAN / 2 to either side. At distance d and bearing b from the nose
# the centre lies d cos(b) ahead and d sin(b) aside: d <= CAMERA_SPAN - VIEW_MARGIN keeps it below the top edge, and
# |b| <= asin((CAMERA_SPAN / 2 - VIEW_MARGIN) / d_max) inside the side edges at every d up to d_max.
VIEW_MARGIN = 1.5  # m
NEAR_START_DISTANCE = (MIN_START_DISTANCE, CAMERA_SPAN - VIEW_MARGIN)  # (6, 12.5) m
NEAR_HEADING_SPREAD = math.asin((CAMERA_SPAN / 2 - VIEW_MARGIN) / NEAR_START_DISTANCE[1])  # 0.455 rad, 26 degrees

ASPHALT = (92, 92, 96)
GRASS = (52, 110, 48)
LINE_WHITE = (235, 235, 235)
TARGET_LINE = (250, 210, 40)
TARGET_FILL = (70, 110, 170)
EGO_BODY = (210, 40, 40)
EGO_GLASS = (40, 40, 60)
PARKED_COLORS = ((200, 200, 210), (30, 60, 140), (40, 40, 40), (150, 30, 30), (220, 180, 60), (60, 120, 70))

ACTION_MEANINGS = tuple(
    f"{drive}+{steer}" for drive in ("coast", "forward", "backward") for steer in ("straight", "left", "right")
)
STATE_DIM = 10


def _rotation(heading: float) -> np.ndarray:
    """2x2 rotation from a frame with the given heading to the world frame."""
    c, s = math.cos(heading), math.sin(heading)
    return np.array([[c, -s], [s, c]])


def _camera_points() -> tuple[np.ndarray, np.ndarray]:
    """Car-frame ground points of every camera pixel, and which of them lie on the car itself.

    Returns:
        points: float32 (2, NUM_CAMERAS * 80 * 80), x and y in the car frame, cameras in the order front,
            rear, left, right; within a camera row-major with the image's top being far from the car.
        ego: bool (NUM_CAMERAS * 80 * 80,), pixels covering the car's body.
    """
    span, n = CAMERA_SPAN, CAMERA_PIXELS
    pixel = span / n
    half = span / 2
    # (top-left corner, step down one row, step right one column) in the car frame; each camera looks away
    # from the car with the car's near side at the image's bottom edge.
    layouts = [
        ((span, half), (-1, 0), (0, -1)),  # front: up the image is forwards
        ((-span, -half), (1, 0), (0, 1)),  # rear
        ((-half, span), (0, -1), (1, 0)),  # left
        ((half, -span), (0, 1), (-1, 0)),  # right
    ]
    rows, cols = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5, indexing="ij")  # (80, 80) each
    points = []
    for corner, down, right in layouts:
        x = corner[0] + pixel * (rows * down[0] + cols * right[0])
        y = corner[1] + pixel * (rows * down[1] + cols * right[1])
        points.append(np.stack([x.ravel(), y.ravel()]))  # (2, 6400)
    points = np.concatenate(points, axis=1).astype(np.float32)  # (2, 4 * 6400)
    ego = (np.abs(points[0]) <= CAR_LENGTH / 2) & (np.abs(points[1]) <= CAR_WIDTH / 2)
    return points, ego


def space_in_view(states: np.ndarray) -> np.ndarray:
    """Whether the target space's centre lies on a camera's patch, for true states (..., 10) -> bool (...).

    The four patches make a cross around the car: the front and rear ones reach CAMERA_SPAN ahead and behind
    within half a span to either side, the left and right ones the same across the car.
    """
    along, across = np.abs(states[..., 6]), np.abs(states[..., 7])
    span, half = CAMERA_SPAN, CAMERA_SPAN / 2
    return ((along <= span) & (across <= half)) | ((along <= half) & (across <= span))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_start(start_distance: Any, start_heading_spread: Any) -> tuple[tuple[float, float] | None, float]:
    """Validate a start distribution (see the module docstring); returns it as plain floats.

    Args:
        start_distance: None (anywhere in the lot, at least 10 m from the space) or a pair (low, high) of metres with
            MIN_START_DISTANCE <= low <= high <= MAX_START_DISTANCE and low <= MAX_START_DISTANCE_LOW.
        start_heading_spread: radians in [0, pi], how far the car's nose may point away from the space.

    Raises:
        ValueError: in one line, naming the setting, its bounds and the value given.
    """
    if start_distance is not None:
        pair = tuple(start_distance) if isinstance(start_distance, (tuple, list, np.ndarray)) else None
        if pair is None or len(pair) != 2 or not all(_is_number(v) and math.isfinite(v) for v in pair):
            raise ValueError(
                f"ParkingEnv: start_distance must be None (anywhere in the lot) or a pair (low, high) of metres, "
                f"got {start_distance!r}"
            )
        low, high = float(pair[0]), float(pair[1])
        if low < MIN_START_DISTANCE:
            raise ValueError(
                f"ParkingEnv: start_distance's low end must be >= {MIN_START_DISTANCE:g} m (closer, the car could "
                f"start on the space), got {low:g}"
            )
        if high < low:
            raise ValueError(f"ParkingEnv: start_distance must be (low, high), low <= high, got ({low:g}, {high:g})")
        if low > MAX_START_DISTANCE_LOW:
            raise ValueError(
                f"ParkingEnv: start_distance's low end must be <= {MAX_START_DISTANCE_LOW:.1f} m (farther, some spaces "
                f"have no start that far in the lot), got {low:g}"
            )
        if high > MAX_START_DISTANCE:
            raise ValueError(
                f"ParkingEnv: start_distance's high end must be <= {MAX_START_DISTANCE:.1f} m (no two starts in the "
                f"lot lie farther apart), got {high:g}"
            )
        start_distance = (low, high)
    if not (_is_number(start_heading_spread) and 0.0 <= start_heading_spread <= math.pi):
        raise ValueError(
            f"ParkingEnv: start_heading_spread must be a number of radians in [0, pi], got {start_heading_spread!r}"
        )
    return start_distance, float(start_heading_spread)


class ParkingEnv(gym.Env):
    """Top-down car parking with egocentric cameras; see the module docstring for the full definition.

    Args:
        render_mode: None or "rgb_array" (`render()` draws the lot from above).
        observation: "cameras" (the default) or "state" (the true state, no cameras drawn).
        start_distance: None, anywhere in the lot at least 10 m from the space (ParkingLot-v0); or (low, high), the
            car's centre drawn that many metres from the space's centre (default: the near start of Parking-v0).
        start_heading_spread: radians in [0, pi]: the car's nose points within this angle of the direction to the
            space; pi, any heading (default: the near start's, which keeps the space on the front camera).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1 / DT))}

    def __init__(
        self,
        render_mode: str | None = None,
        observation: str = "cameras",
        start_distance: tuple[float, float] | None = NEAR_START_DISTANCE,
        start_heading_spread: float = NEAR_HEADING_SPREAD,
    ) -> None:
        self.start_distance, self.start_heading_spread = check_start(start_distance, start_heading_spread)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"Parking-v0: render_mode must be None or 'rgb_array', got {render_mode!r}")
        if observation not in ("cameras", "state"):
            raise ValueError(f"Parking-v0: observation must be 'cameras' or 'state', got {observation!r}")
        self.render_mode = render_mode
        self.observation = observation
        self.half = LOT_SIZE / 2

        self.action_space = spaces.Discrete(9)
        vector_low = np.array([-10.0, -MAX_STEER], dtype=np.float32)
        vector_high = np.array([10.0, MAX_STEER], dtype=np.float32)
        if observation == "cameras":
            self.observation_space = spaces.Dict(
                {
                    "cameras": spaces.Box(0, 255, (NUM_CAMERAS, CAMERA_PIXELS, CAMERA_PIXELS, 3), np.uint8),
                    "vector": spaces.Box(vector_low, vector_high, dtype=np.float32),
                }
            )
        else:
            self.observation_space = self.state_space()

        # Texture: the lot plus padding, uint8 (n, n, 3) with row 0 at the north edge.
        self._origin_x = -self.half - TEXTURE_PADDING  # world x of the texture's left edge
        self._origin_y = self.half + TEXTURE_PADDING  # world y of its top edge
        self._texture_size = int(round((LOT_SIZE + 2 * TEXTURE_PADDING) / TEXTURE_RESOLUTION))
        self._base_texture = self._draw_base_texture()
        self._texture = self._base_texture.copy()
        points, ego = _camera_points()
        self._points = np.vstack([points, np.ones_like(points[:1])])  # (3, points) homogeneous car-frame points
        self._ego_pixels = np.flatnonzero(ego & ~((points[0] > 0.3) & (points[0] < 1.0)))
        self._glass_pixels = np.flatnonzero(ego & (points[0] > 0.3) & (points[0] < 1.0))  # windscreen: the front

        # Episode state; set properly by reset().
        self.x = self.y = self.heading = self.speed = self.steer = 0.0
        self.space_center = np.zeros(2)
        self.space_heading = 0.0
        self._stopped_inside = 0
        self._last_potential = 0.0
        self._layout_ready = False

    def set_start(self, *, start_distance: tuple[float, float] | None, start_heading_spread: float) -> None:
        """Change the start distribution from the next reset on (the constructor's arguments of the same names).

        A vector env reaches every sub-env's copy by `envs.call("set_start", start_distance=..., ...)`."""
        self.start_distance, self.start_heading_spread = check_start(start_distance, start_heading_spread)

    # ---------------------------------------------------------------- spaces

    def state_space(self) -> spaces.Box:
        """Bounds of the true state vector (see the module docstring)."""
        pos = self.half + 10.0
        rel = LOT_SIZE * math.sqrt(2) + 10.0
        low = np.array([-pos, -pos, -1, -1, -10, -MAX_STEER, -rel, -rel, -1, -1], dtype=np.float32)
        return spaces.Box(low, -low, dtype=np.float32)

    # ---------------------------------------------------------------- gym API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        rng = self.np_random
        self._place_space(rng)
        self._place_car(rng)
        self.speed = 0.0
        self.steer = 0.0
        self._stopped_inside = 0
        if self.observation == "cameras" or self.render_mode == "rgb_array":
            self._draw_layout(rng)
        self._layout_ready = True
        inside = self._car_inside_space()
        self._last_potential = self._potential(inside)
        info = {"state": self.state_vector(), "success": False, "inside": inside}
        return self._observation(), info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        if not self._layout_ready:
            raise RuntimeError("Parking-v0: call reset() before step()")
        try:
            index = operator.index(action)  # ints, numpy integers and 0-d integer arrays; not floats
        except TypeError:
            index = -1
        if not 0 <= index < 9:
            raise ValueError(f"Parking-v0: action must be an integer in [0, 9), got {action!r}")
        drive, steer = divmod(index, 3)
        self._physics(drive, steer)

        left_lot = self._car_left_lot()
        inside = not left_lot and self._car_inside_space()
        stopped = abs(self.speed) < STOP_SPEED
        self._stopped_inside = self._stopped_inside + 1 if inside and stopped else 0
        success = self._stopped_inside >= SUCCESS_STEPS

        potential = self._potential(inside)
        reward = potential - self._last_potential
        self._last_potential = potential
        if success:
            reward += SUCCESS_BONUS
        if left_lot:
            reward -= SUCCESS_BONUS
        terminated = bool(success or left_lot)
        info = {"state": self.state_vector(), "success": bool(success), "inside": bool(inside)}
        return self._observation(), float(reward), terminated, False, info

    def render(self) -> np.ndarray | None:
        """Top-down view of the lot with the car, uint8 (400, 400, 3) for the default 40 m lot."""
        if self.render_mode != "rgb_array":
            return None
        texture = self._texture.copy()
        self._fill_rect(texture, (self.x, self.y), self.heading, CAR_LENGTH / 2, CAR_WIDTH / 2, EGO_BODY)
        front = np.array([self.x, self.y]) + _rotation(self.heading) @ np.array([0.65, 0.0])
        self._fill_rect(texture, front, self.heading, 0.35, CAR_WIDTH / 2 - 0.15, EGO_GLASS)
        pad = int(round(TEXTURE_PADDING / TEXTURE_RESOLUTION))
        return np.ascontiguousarray(texture[pad:-pad, pad:-pad])  # (400, 400, 3)

    # ---------------------------------------------------------------- true state

    def state_vector(self) -> np.ndarray:
        """The true state, float32 (10,): see the module docstring."""
        c, s = math.cos(self.heading), math.sin(self.heading)
        dx, dy = self.space_center[0] - self.x, self.space_center[1] - self.y
        dh = self.space_heading - self.heading
        return np.array(
            [
                self.x,
                self.y,
                c,
                s,
                self.speed,
                self.steer,
                c * dx + s * dy,
                -s * dx + c * dy,
                math.cos(dh),
                math.sin(dh),
            ],
            dtype=np.float32,
        )

    # ---------------------------------------------------------------- dynamics

    def _physics(self, drive: int, steer: int) -> None:
        target = (0.0, MAX_STEER, -MAX_STEER)[steer]
        delta = target - self.steer
        # Land exactly on the target (never 0.6000000000000001, which is outside the observation bounds).
        self.steer = target if abs(delta) <= STEER_RATE * DT else self.steer + math.copysign(STEER_RATE * DT, delta)

        v = self.speed
        weight = MASS * GRAVITY
        traction = 0.0
        brake = 0.0
        if drive == 1:
            if v < 0:
                brake = BRAKE_FORCE
            else:
                traction = ENGINE_FORCE * max(0.0, 1.0 - v / MAX_FORWARD_SPEED)
        elif drive == 2:
            if v > 0:
                brake = BRAKE_FORCE
            else:
                traction = -REVERSE_FORCE * max(0.0, 1.0 + v / MAX_REVERSE_SPEED)
        # Tyres transmit at most friction x load: the driven axle for traction, all wheels for braking.
        grip = FRICTION * DRIVEN_AXLE_LOAD * weight
        traction = min(max(traction, -grip), grip)
        brake = min(brake, FRICTION * weight)

        # Cornering: lateral acceleration v^2 tan(steer) / L is capped by grip; beyond it the car understeers.
        steer_eff = self.steer
        tan_steer = math.tan(steer_eff)
        lateral = v * v * abs(tan_steer) / WHEELBASE
        if lateral > MAX_LATERAL_ACCEL:
            steer_eff = math.copysign(math.atan(MAX_LATERAL_ACCEL * WHEELBASE / (v * v)), steer_eff)
            tan_steer = math.tan(steer_eff)
            lateral = MAX_LATERAL_ACCEL

        resist = brake + DRAG * v * v + CORNER_SCRUB * MASS * lateral
        if v != 0.0 or traction != 0.0:
            resist += ROLLING_RESISTANCE * weight
        v_new = v + traction / MASS * DT
        slowdown = resist / MASS * DT
        # Resistive forces oppose the motion and stop it at zero, never reverse it.
        v_new = 0.0 if abs(v_new) <= slowdown else v_new - math.copysign(slowdown, v_new)
        self.speed = v_new

        v_mean = 0.5 * (v + v_new)
        slip = math.atan(0.5 * tan_steer)  # body slip angle at the centre, rear/front axle equidistant
        self.x += v_mean * math.cos(self.heading + slip) * DT
        self.y += v_mean * math.sin(self.heading + slip) * DT
        self.heading += v_mean * math.cos(slip) * tan_steer / WHEELBASE * DT
        self.heading = (self.heading + math.pi) % (2 * math.pi) - math.pi

    def _potential(self, inside: bool) -> float:
        """The shaping potential of the current state (see the module docstring), in [0, 2.5]."""
        distance = math.hypot(float(self.space_center[0]) - self.x, float(self.space_center[1]) - self.y)
        shaping = math.exp(-distance / 5.0)
        if inside:
            shaping += 0.5 + math.exp(-abs(self.speed) / 0.3)
        return shaping

    def _car_corners(self) -> list[tuple[float, float]]:
        """World corners of the car, 4 x (x, y). Plain floats: this runs twice a step and numpy is slower here."""
        c, s = math.cos(self.heading), math.sin(self.heading)
        hl, hw = CAR_LENGTH / 2, CAR_WIDTH / 2
        return [
            (self.x + c * a - s * b, self.y + s * a + c * b) for a, b in ((hl, hw), (hl, -hw), (-hl, -hw), (-hl, hw))
        ]

    def _car_left_lot(self) -> bool:
        return any(abs(x) > self.half or abs(y) > self.half for x, y in self._car_corners())

    def _car_inside_space(self) -> bool:
        c, s = math.cos(self.space_heading), math.sin(self.space_heading)
        cx, cy = float(self.space_center[0]), float(self.space_center[1])
        for x, y in self._car_corners():
            along, lateral = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
            if abs(along) > SPACE_LENGTH / 2 or abs(lateral) > SPACE_WIDTH / 2:
                return False
        return True

    # ---------------------------------------------------------------- layout

    def _place_space(self, rng: np.random.Generator) -> None:
        # The space sits away from the walls, with room in front of at least one of its ends to drive in.
        while True:
            center = rng.uniform(-self.half + 7.0, self.half - 7.0, size=2)
            heading = float(rng.uniform(-math.pi, math.pi))
            axis = np.array([math.cos(heading), math.sin(heading)])
            approaches = [center + 6.0 * axis, center - 6.0 * axis]
            if any(np.all(np.abs(p) <= self.half - 5.0) for p in approaches):
                break
        self.space_center = center
        self.space_heading = heading

    def _place_car(self, rng: np.random.Generator) -> None:
        """Draw the car's pose from the start distribution (see the module docstring)."""
        limit = self.half - START_MARGIN
        if self.start_distance is None:  # anywhere in the lot, away from the space
            while True:
                position = rng.uniform(-limit, limit, size=2)
                if np.hypot(*(position - self.space_center)) >= LOT_START_DISTANCE:
                    break
        else:  # at a drawn distance in a drawn direction from the space; check_start keeps some of it in the lot
            low, high = self.start_distance
            while True:
                distance = rng.uniform(low, high)
                direction = rng.uniform(-math.pi, math.pi)  # from the space's centre to the car's
                position = self.space_center + distance * np.array([math.cos(direction), math.sin(direction)])
                if np.all(np.abs(position) <= limit):
                    break
        self.x, self.y = float(position[0]), float(position[1])
        if self.start_heading_spread >= math.pi:
            self.heading = float(rng.uniform(-math.pi, math.pi))
        else:
            towards_space = math.atan2(self.space_center[1] - self.y, self.space_center[0] - self.x)
            heading = towards_space + rng.uniform(-self.start_heading_spread, self.start_heading_spread)
            self.heading = (heading + math.pi) % (2 * math.pi) - math.pi

    def _draw_base_texture(self) -> np.ndarray:
        """Grass, the asphalt lot with a fixed grain (so motion shows in the cameras) and its white edge."""
        n = self._texture_size
        grain_rng = np.random.default_rng(12345)  # fixed: the grain is scenery, not part of the env's randomness
        rgb = np.empty((n, n, 3), dtype=np.int16)
        rgb[:] = GRASS
        pad = int(round(TEXTURE_PADDING / TEXTURE_RESOLUTION))
        rgb[pad:-pad, pad:-pad] = ASPHALT
        rgb += grain_rng.integers(-10, 11, size=(n, n, 1), dtype=np.int16)
        # Coarse patches of darker asphalt give the cameras landmarks to track.
        blotches = grain_rng.integers(-14, 1, size=(n // 20, n // 20, 1), dtype=np.int16)
        rgb += np.repeat(np.repeat(blotches, 20, axis=0), 20, axis=1)[:n, :n]
        texture = np.clip(rgb, 0, 255).astype(np.uint8)
        edge = 0.3
        for sign in (-1, 1):
            self._fill_rect(texture, (sign * self.half, 0.0), 0.0, edge / 2, self.half, LINE_WHITE)
            self._fill_rect(texture, (0.0, sign * self.half), 0.0, self.half, edge / 2, LINE_WHITE)
        return texture

    def _draw_layout(self, rng: np.random.Generator) -> None:
        """A row of painted spaces through the target, some holding parked cars; the target highlighted."""
        texture = self._base_texture.copy()
        axis = np.array([math.cos(self.space_heading), math.sin(self.space_heading)])
        across = np.array([-axis[1], axis[0]])
        line = 0.15
        for k in range(-ROW_SPACES, ROW_SPACES + 1):
            center = self.space_center + k * SPACE_WIDTH * across
            if np.any(np.abs(center) > self.half - SPACE_LENGTH / 2):
                continue
            for side in (-1, 1):
                self._fill_rect(
                    texture,
                    center + side * SPACE_WIDTH / 2 * across,
                    self.space_heading,
                    SPACE_LENGTH / 2,
                    line,
                    LINE_WHITE,
                )
            if k != 0 and rng.random() < 0.5:
                color = PARKED_COLORS[int(rng.integers(len(PARKED_COLORS)))]
                flip = 1.0 if rng.random() < 0.5 else -1.0
                self._fill_rect(texture, center, self.space_heading, CAR_LENGTH / 2, CAR_WIDTH / 2, color)
                self._fill_rect(
                    texture, center + flip * 0.65 * axis, self.space_heading, 0.35, CAR_WIDTH / 2 - 0.15, EGO_GLASS
                )
        c = self.space_center
        self._fill_rect(texture, c, self.space_heading, SPACE_LENGTH / 2, SPACE_WIDTH / 2, TARGET_LINE)
        self._fill_rect(texture, c, self.space_heading, SPACE_LENGTH / 2 - 0.2, SPACE_WIDTH / 2 - 0.2, TARGET_FILL)
        self._texture = texture

    def _fill_rect(
        self,
        texture: np.ndarray,
        center: Any,
        heading: float,
        half_length: float,
        half_width: float,
        rgb: tuple[int, int, int],
    ) -> None:
        """Paint a rotated rectangle into an (n, n, 3) texture, touching only its bounding box."""
        radius = math.hypot(half_length, half_width)
        res = TEXTURE_RESOLUTION
        n = texture.shape[0]
        col0 = max(int((center[0] - radius - self._origin_x) / res), 0)
        col1 = min(int((center[0] + radius - self._origin_x) / res) + 1, n)
        row0 = max(int((self._origin_y - center[1] - radius) / res), 0)
        row1 = min(int((self._origin_y - center[1] + radius) / res) + 1, n)
        if col0 >= col1 or row0 >= row1:
            return
        xs = self._origin_x + (np.arange(col0, col1) + 0.5) * res - center[0]  # (w,)
        ys = self._origin_y - (np.arange(row0, row1) + 0.5) * res - center[1]  # (h,)
        c, s = math.cos(heading), math.sin(heading)
        along = c * xs[None, :] + s * ys[:, None]  # (h, w) coordinates in the rectangle's frame
        lateral = -s * xs[None, :] + c * ys[:, None]
        mask = (np.abs(along) <= half_length) & (np.abs(lateral) <= half_width)
        texture[row0:row1, col0:col1][mask] = rgb

    # ---------------------------------------------------------------- cameras

    def _observation(self) -> Any:
        if self.observation == "state":
            return self.state_vector()
        return {
            "cameras": self._render_cameras(),
            "vector": np.array([self.speed, self.steer], dtype=np.float32),
        }

    def _render_cameras(self) -> np.ndarray:
        """Sample the lot texture at every camera pixel: uint8 (4, 80, 80, 3)."""
        inv = 1.0 / TEXTURE_RESOLUTION
        c, s = math.cos(self.heading), math.sin(self.heading)
        # world = position + R(heading) @ point; texture column = (x - origin_x) / res, row = (origin_y - y) / res.
        affine = np.array(
            [
                [c * inv, -s * inv, (self.x - self._origin_x) * inv],
                [-s * inv, -c * inv, (self._origin_y - self.y) * inv],
            ],
            dtype=np.float32,
        )
        cols, rows = (affine @ self._points).astype(np.int32)  # (points,) each; positive, so truncation is floor
        n = self._texture_size
        rows *= n
        rows += cols
        # One gather of 3-byte texels (a void view) fetches whole RGB pixels. The texture's padding keeps every
        # reachable point on it (the car overhangs the lot by at most its half-diagonal plus one step before the
        # episode ends), so "clip" only guards the buffer and never wraps a row.
        texels = self._texture.reshape(n * n, 3).view("V3")[:, 0]  # (n * n,)
        pixels = texels.take(rows, mode="clip").view(np.uint8).reshape(-1, 3)  # (points, 3)
        pixels[self._ego_pixels] = EGO_BODY
        pixels[self._glass_pixels] = EGO_GLASS
        return pixels.reshape(NUM_CAMERAS, CAMERA_PIXELS, CAMERA_PIXELS, 3)


# ==================================================================== pixels for the world model


def parking_pixels(cameras: np.ndarray, vector: np.ndarray, size: int) -> np.ndarray:
    """One square image for the world model: the cameras tiled 2x2, resized, with gauges along the bottom.

    Args:
        cameras: uint8 (4, 80, 80, 3) front, rear, left, right.
        vector: float32 (2,) speed (m/s) and steering (rad).
        size: output side in pixels (>= 16).

    Returns:
        uint8 (size, size, 3): the tiles [front, rear; left, right] in the top `size - g` rows, then two gauge
        rows of height g/2 each: speed (green) and steering (orange) drawn as bars from the centre, full scale at
        the maximum forward/reverse speed and full lock. g = 2 * max(1, size // 32).
    """
    from PIL import Image  # local: only the pixel path needs Pillow

    n = cameras.shape[1]
    grid = cameras.reshape(2, 2, n, n, 3).transpose(0, 2, 1, 3, 4).reshape(2 * n, 2 * n, 3)  # (160, 160, 3)
    bar = max(1, size // 32)
    body = size - 2 * bar
    image = np.empty((size, size, 3), dtype=np.uint8)
    # reducing_gap=1: box-average by the largest integer factor first (fast), then resample the rest bilinearly.
    image[:body] = np.asarray(Image.fromarray(grid).resize((size, body), Image.BILINEAR, reducing_gap=1.0))
    image[body:] = 30
    mid = size // 2
    speed = float(vector[0])
    speed_scale = MAX_FORWARD_SPEED if speed >= 0 else MAX_REVERSE_SPEED
    for row, value, color in (
        (body, speed / speed_scale, (60, 220, 60)),
        (body + bar, float(vector[1]) / MAX_STEER, (250, 150, 30)),
    ):
        end = mid + int(round(float(np.clip(value, -1.0, 1.0)) * (size / 2 - 1)))
        lo, hi = min(mid, end), max(mid, end)
        image[row : row + bar, lo : hi + 1] = color
        image[row : row + bar, mid] = 255  # the zero mark
    return image


# ==================================================================== scripted controller


@dataclass(frozen=True)
class _Path:
    """A sampled forward path ending beyond the space centre. points (N, 2); arc length s (N,)."""

    points: np.ndarray
    s: np.ndarray
    s_stop: float  # arc length at the space centre
    feasible: bool  # the car stays inside the lot along it


def _arc(start: np.ndarray, heading: float, length: float, turn: int, radius: float, ds: float) -> np.ndarray:
    """Points (points, 2) every ds along a left (turn=1), right (-1) arc or a straight (0) from a pose."""
    s = np.arange(0.0, length, ds)
    if turn == 0:
        return start + s[:, None] * np.array([math.cos(heading), math.sin(heading)])
    center = start + turn * radius * np.array([-math.sin(heading), math.cos(heading)])
    angle = heading + turn * s / radius
    return center + turn * radius * np.stack([np.sin(angle), -np.cos(angle)], axis=1)


def _arc_end(start: np.ndarray, heading: float, length: float, turn: int, radius: float) -> np.ndarray:
    """The end point of `_arc`'s curve, (2,)."""
    if turn == 0:
        return start + length * np.array([math.cos(heading), math.sin(heading)])
    center = start + turn * radius * np.array([-math.sin(heading), math.cos(heading)])
    angle = heading + turn * length / radius
    return center + turn * radius * np.array([math.sin(angle), -math.cos(angle)])


def _dubins_csc(
    start: np.ndarray, start_heading: float, goal: np.ndarray, goal_heading: float, radius: float
) -> list[list[tuple[int, float]]]:
    """Forward curve-straight-curve paths (LSL, RSR, LSR, RSL) between two poses as [(turn, length), ...]."""
    two_pi = 2 * math.pi
    paths = []
    for first, last in ((1, 1), (-1, -1), (1, -1), (-1, 1)):
        c0 = start + first * radius * np.array([-math.sin(start_heading), math.cos(start_heading)])
        c1 = goal + last * radius * np.array([-math.sin(goal_heading), math.cos(goal_heading)])
        v = c1 - c0
        distance = float(np.hypot(*v))
        if first == last:
            straight = distance
            phi = math.atan2(v[1], v[0])
        else:
            if distance < 2 * radius:
                continue
            straight = math.sqrt(distance * distance - 4 * radius * radius)
            # The tangent's heading phi satisfies v = straight * u(phi) - first * 2r * n_left(phi).
            phi = math.atan2(v[1], v[0]) + first * math.atan2(2 * radius, straight)
        turn0 = ((phi - start_heading) * first) % two_pi
        turn1 = ((goal_heading - phi) * last) % two_pi
        paths.append([(first, turn0 * radius), (0, straight), (last, turn1 * radius)])
    return paths


class ScriptedParker:
    """A controller that knows the true state: plan a forward Dubins path to a point in line with the space,
    follow it with pure pursuit, and brake to a stop at the space's centre.

    Use: `policy = ScriptedParker(); policy.reset()` at each episode start, then `action = policy(state)` with
    the 10-dim state vector of `ParkingEnv` (`info["state"]`, or the observation with `obs="state"`).
    `ScriptedParkers` runs one per env of a vector env, for `collect`.
    """

    def __init__(self, lot_size: float = LOT_SIZE, turn_radius: float = 5.0, cruise_speed: float = 3.5) -> None:
        self.half = lot_size / 2
        self.turn_radius = turn_radius
        self.cruise_speed = cruise_speed
        self.lead_in = 6.0  # m of straight line into the space, to settle before stopping
        self.lookahead = 2.5  # m
        self._path: _Path | None = None
        self._index = 0
        self._backing = 0  # steps spent reversing away from a wall

    def reset(self) -> None:
        """Forget the plan; call at the start of every episode."""
        self._path = None
        self._index = 0
        self._backing = 0

    def __call__(self, state: np.ndarray) -> int:
        """Choose an action (0..8) for one true state (10,)."""
        x, y, c, s, speed, steer, rel_x, rel_y, cos_dh, sin_dh = (float(v) for v in state)
        position = np.array([x, y])
        heading = math.atan2(s, c)
        rotation = np.array([[c, -s], [s, c]])
        space = position + rotation @ np.array([rel_x, rel_y])
        space_heading = heading + math.atan2(sin_dh, cos_dh)

        if self._path is None:
            plan = self._plan(position, heading, space, space_heading)
            rear = position - 2.5 * np.array([c, s])
            if not plan.feasible and self._backing < 40 and np.all(np.abs(rear) < self.half - 1.0):
                # Boxed in (facing a wall): reverse, turning the nose towards the lot's centre, and plan again.
                self._backing += 1
                error = math.atan2(-y, -x) - heading
                error = (error + math.pi) % (2 * math.pi) - math.pi
                return 3 * 2 + (2 if error > 0 else 1)  # reversing, right lock turns the nose left
            self._path = plan
            self._index = 0
        path = self._path
        window = slice(max(self._index - 5, 0), min(self._index + 60, len(path.s)))
        distances = np.hypot(*(path.points[window] - position).T)
        self._index = window.start + int(np.argmin(distances))
        if distances.min() > 2.0:  # knocked off the path: plan again from here
            self._path = path = self._plan(position, heading, space, space_heading)
            self._index = 0

        # Pure pursuit: steer on the circle through the point one lookahead further along the path.
        target_s = path.s[self._index] + self.lookahead
        carrot = path.points[min(int(np.searchsorted(path.s, target_s)), len(path.s) - 1)]
        local = rotation.T @ (carrot - position)
        alpha = math.atan2(local[1], local[0])
        distance = max(float(np.hypot(*local)), 1e-3)
        wanted_steer = math.atan(2.0 * WHEELBASE * math.sin(alpha) / distance)
        steer_action = min(
            (0, 1, 2),
            key=lambda a: abs(
                steer
                + np.clip((0.0, MAX_STEER, -MAX_STEER)[a] - steer, -STEER_RATE * DT, STEER_RATE * DT)
                - wanted_steer
            ),
        )

        # Speed: cruise, then a braking curve that ends at the space's centre.
        remaining = path.s_stop - path.s[self._index]
        wanted_speed = min(self.cruise_speed, math.sqrt(2.0 * 2.0 * max(remaining - 0.2, 0.0)))
        if remaining < 0.3:
            wanted_speed = 0.0
        if wanted_speed == 0.0:
            drive = 2 if speed > 0 else 0
        elif speed < wanted_speed - 0.25:
            drive = 1
        elif speed > wanted_speed + 0.25:
            drive = 2
        else:
            drive = 0
        return 3 * drive + steer_action

    def _plan(self, position: np.ndarray, heading: float, space: np.ndarray, space_heading: float) -> _Path:
        """Shortest forward path that stays inside the lot, via either end of the space; else the one that
        leaves it least (marked infeasible)."""
        ds = 0.1
        margin = self.half - 2.6  # the car's centre keeps this far inside so its corners stay in
        best: tuple[float, _Path] | None = None
        fallback: tuple[float, _Path] | None = None
        for direction in (space_heading, space_heading + math.pi):
            axis = np.array([math.cos(direction), math.sin(direction)])
            entry = space - self.lead_in * axis
            for words in _dubins_csc(position, heading, entry, direction, self.turn_radius):
                pieces = []
                pose, pose_heading = position, heading
                for turn, length in words:
                    pieces.append(_arc(pose, pose_heading, length, turn, self.turn_radius, ds))
                    pose = _arc_end(pose, pose_heading, length, turn, self.turn_radius)
                    pose_heading += turn * length / self.turn_radius
                approach = _arc(entry, direction, self.lead_in + 5.0, 0, 0.0, ds)  # through the space and beyond
                points = np.concatenate([*pieces, approach])  # (N, 2)
                steps = np.hypot(*np.diff(points, axis=0).T)
                s = np.concatenate([[0.0], np.cumsum(steps)])
                stop_index = sum(len(p) for p in pieces) + int(round(self.lead_in / ds))
                length_to_stop = float(s[stop_index])
                worst = float(np.abs(points[:stop_index]).max())
                candidate = _Path(points, s, length_to_stop, worst <= margin)
                if worst <= margin and (best is None or length_to_stop < best[0]):
                    best = (length_to_stop, candidate)
                if fallback is None or worst < fallback[0]:
                    fallback = (worst, candidate)
        assert fallback is not None  # LSL and RSR always exist
        return best[1] if best is not None else fallback[1]


class ScriptedParkers:
    """`ScriptedParker` for a batch of envs, as a `collect` policy: needs obs="state" (the true state)."""

    def __init__(self, num_envs: int) -> None:
        self.parkers = [ScriptedParker() for _ in range(num_envs)]

    def reset(self, is_first: np.ndarray) -> None:
        """Forget the plans of the envs whose observation starts an episode; is_first (N,) bool."""
        for parker, first in zip(self.parkers, is_first, strict=True):
            if first:
                parker.reset()

    def __call__(self, states: np.ndarray) -> np.ndarray:
        """states (N, 10) -> actions (N,) int64."""
        return np.array([parker(state) for parker, state in zip(self.parkers, states, strict=True)], dtype=np.int64)
