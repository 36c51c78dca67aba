"""EnvSpec: the facts about an environment that the rest of the toolkit is built around.

It travels as an argument instead of being written into the config (STYLE.md 3), and it is stored in
checkpoints and episode stores and compared on load, so it converts to and from plain Python types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class EnvSpec:
    """What an environment made by `make_env` looks like from outside."""

    env_id: str
    """The gymnasium id, e.g. "CartPole-v1"."""
    obs_mode: str
    """"pixels" (uint8 HWC images) or "state" (float32 vectors)."""
    obs_shape: tuple[int, ...]
    """Shape of one observation: (size, size, 3) for pixels, (S,) for state."""
    obs_dtype: str
    """"uint8" for pixels, "float32" for state."""
    discrete: bool
    """True when actions are integers in [0, action_dim)."""
    action_dim: int
    """Number of actions if discrete, else the length of the action vector."""
    action_low: tuple[float, ...] | None
    """Lower bounds of a continuous action, None when discrete."""
    action_high: tuple[float, ...] | None
    """Upper bounds of a continuous action, None when discrete."""
    max_episode_steps: int | None
    """Agent steps (after action repeat) before truncation, None if unlimited."""
    state_dim: int | None = None
    """Length of `info["state"]`, None when the env has no true low-dimensional state."""
    action_repeat: int = 1
    """Env steps per agent step."""

    def __post_init__(self) -> None:
        if self.obs_mode not in ("pixels", "state"):
            raise ValueError(f"EnvSpec.obs_mode must be 'pixels' or 'state', got {self.obs_mode!r}")
        if self.obs_dtype not in ("uint8", "float32"):
            raise ValueError(f"EnvSpec.obs_dtype must be 'uint8' or 'float32', got {self.obs_dtype!r}")
        if self.action_dim < 1:
            raise ValueError(f"EnvSpec.action_dim must be >= 1, got {self.action_dim}")
        if self.discrete != (self.action_low is None) or self.discrete != (self.action_high is None):
            raise ValueError("EnvSpec: action_low/action_high must be None exactly when the actions are discrete")
        if not self.discrete and not (len(self.action_low) == len(self.action_high) == self.action_dim):
            raise ValueError(
                f"EnvSpec: action_low/action_high need action_dim={self.action_dim} entries, "
                f"got {len(self.action_low)} and {len(self.action_high)}"
            )

    @property
    def action_shape(self) -> tuple[int, ...]:
        """Shape of one action as the env takes it: () when discrete, (action_dim,) when continuous."""
        return () if self.discrete else (self.action_dim,)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe dict (lists, not tuples; inf bounds become the strings "inf"/"-inf")."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [_float_to_plain(v) if f.name.startswith("action_") else int(v) for v in value]
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvSpec:
        """Inverse of `to_dict`; unknown keys are an error naming the valid ones."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"EnvSpec.from_dict: unknown keys {unknown}; valid keys are {names}")
        values = dict(data)
        values["obs_shape"] = tuple(int(v) for v in data["obs_shape"])
        for key in ("action_low", "action_high"):
            if values.get(key) is not None:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    def differences(self, other: EnvSpec) -> list[str]:
        """Human-readable list of fields that differ, e.g. ["obs_shape: (64, 64, 3) != (96, 96, 3)"]."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def _float_to_plain(value: float) -> float | str:
    """JSON has no infinity: keep finite floats, spell infinities as strings float() reads back."""
    value = float(value)
    return value if math.isfinite(value) else str(value)
