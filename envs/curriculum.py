"""A start curriculum for the Parking envs: widen where the car starts as it learns to park.

Parking-v0 starts the car with the space in its front camera's view; ParkingLot-v0 anywhere in the lot. A
`StartCurriculum` walks a list of `StartStage`s between the two: it is told each evaluation's success rate and moves
to the next, wider stage once the mean of the last `window` rates on the current stage reaches `threshold`. It never
narrows again. Its state is two plain numbers and a short list, so a checkpoint holds it without pickles.

    curriculum = StartCurriculum()                                  # the default stages, 80% over 2 evaluations
    envs.call("set_start", **curriculum.stage.env_kwargs())         # a vector env of Parking envs
    ...
    if curriculum.update(success_rate):                             # after each evaluation
        envs.call("set_start", **curriculum.stage.env_kwargs())     # from each sub-env's next reset on
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from envs.parking import NEAR_HEADING_SPREAD, NEAR_START_DISTANCE, check_start


@dataclass(frozen=True)
class StartStage:
    """One start distribution of `envs.parking.ParkingEnv` (its constructor's and `set_start`'s arguments)."""

    distance: tuple[float, float] | None
    """(low, high) metres from the space's centre; None: anywhere in the lot (ParkingLot-v0)."""
    heading_spread: float
    """Radians the car's nose may point away from the space; pi: any heading."""

    def __post_init__(self) -> None:
        distance, spread = check_start(self.distance, self.heading_spread)  # raises on a value the env would refuse
        object.__setattr__(self, "distance", distance)
        object.__setattr__(self, "heading_spread", spread)

    def env_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `ParkingEnv(...)` and `ParkingEnv.set_start(...)` for this stage."""
        return {"start_distance": self.distance, "start_heading_spread": self.heading_spread}


LOT_FAR_DISTANCE = 24.0
"""m: the whole lot's start lies closer than this to the space in 9 of 10 episodes (median 16.6 m, at least 10 m)."""
NEAR_STAGE = StartStage(NEAR_START_DISTANCE, NEAR_HEADING_SPREAD)
"""Parking-v0's start: the space in the front camera's view."""
LOT_STAGE = StartStage(None, math.pi)
"""ParkingLot-v0's start: anywhere in the lot, any heading."""


def widening_stages(steps: int = 4) -> tuple[StartStage, ...]:
    """`steps + 1` stages from the near start to the whole lot: the near start, then `steps - 1` stages whose farthest
    distance and heading spread grow in equal steps (towards LOT_FAR_DISTANCE and pi), then the whole lot.

    Args:
        steps: how many times the start widens (>= 1; 1 goes from the near start straight to the lot).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"StartCurriculum: steps must be an integer >= 1, got {steps!r}")
    low, near_high = NEAR_START_DISTANCE
    stages = [NEAR_STAGE]
    for step in range(1, steps):
        share = step / steps
        high = near_high + share * (LOT_FAR_DISTANCE - near_high)
        spread = NEAR_HEADING_SPREAD + share * (math.pi - NEAR_HEADING_SPREAD)
        stages.append(StartStage((low, high), spread))
    stages.append(LOT_STAGE)
    return tuple(stages)


class StartCurriculum:
    """Widen the start stage by stage as the success rate on the current one reaches a threshold.

    Args:
        stages: the start distributions in order, narrowest first (default: `widening_stages()`, the near start to
            the whole lot in 4 steps).
        threshold: in (0, 1]: move on once the mean success rate of the last `window` evaluations reaches it.
        window: evaluations on a stage averaged (>= 1); rates from an earlier stage never count.
    """

    def __init__(self, stages: Sequence[StartStage] | None = None, threshold: float = 0.8, window: int = 2) -> None:
        stages = widening_stages() if stages is None else tuple(stages)
        if not stages or not all(isinstance(stage, StartStage) for stage in stages):
            raise ValueError(f"StartCurriculum: stages must be a non-empty sequence of StartStage, got {stages!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"StartCurriculum: threshold must be a success rate in (0, 1], got {threshold!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"StartCurriculum: window must be an integer >= 1, got {window!r}")
        self.stages = stages
        self.threshold = float(threshold)
        self.window = window
        self.index = 0  # the current stage
        self.recent: list[float] = []  # success rates on the current stage, the newest last, at most `window`

    @property
    def stage(self) -> StartStage:
        """The current start distribution."""
        return self.stages[self.index]

    @property
    def finished(self) -> bool:
        """Whether the current stage is the last (the curriculum widens no more)."""
        return self.index == len(self.stages) - 1

    def update(self, success_rate: float) -> bool:
        """Record one evaluation's success rate on the current stage, in [0, 1]; widen when the last `window` rates
        average `threshold` or more. Returns whether the stage changed (then apply `stage.env_kwargs()`)."""
        if isinstance(success_rate, bool) or not (
            isinstance(success_rate, (int, float)) and 0.0 <= success_rate <= 1.0
        ):
            raise ValueError(f"StartCurriculum: success_rate must be a number in [0, 1], got {success_rate!r}")
        if self.finished:
            return False
        self.recent = [*self.recent, float(success_rate)][-self.window :]
        if len(self.recent) < self.window or sum(self.recent) / self.window < self.threshold:
            return False
        self.index += 1
        self.recent = []
        return True

    def state_dict(self) -> dict[str, Any]:
        """Where the curriculum stands, as plain numbers (for a checkpoint)."""
        return {"index": self.index, "recent": list(self.recent)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`'s output; raises ValueError on one that does not fit these stages."""
        index, recent = state.get("index"), state.get("recent")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.stages):
            raise ValueError(f"StartCurriculum: stage index must be in [0, {len(self.stages)}), got {index!r}")
        if not isinstance(recent, list) or len(recent) > self.window:
            raise ValueError(f"StartCurriculum: recent must be a list of at most {self.window} rates, got {recent!r}")
        if not all(isinstance(rate, (int, float)) and 0.0 <= rate <= 1.0 for rate in recent):
            raise ValueError(f"StartCurriculum: recent rates must lie in [0, 1], got {recent!r}")
        self.index = index
        self.recent = [float(rate) for rate in recent]
