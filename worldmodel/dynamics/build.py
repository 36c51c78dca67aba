"""Which class each kind of latent is, and the one constructor that picks it (the config's `world_model.latent`)."""

from __future__ import annotations

from typing import Any

from worldmodel.dynamics.jepa import JEPAWorldModel
from worldmodel.dynamics.rssm import RSSMWorldModel
from worldmodel.dynamics.world_model import WorldModel

WORLD_MODELS: dict[str, type[WorldModel]] = {"deterministic": JEPAWorldModel, "stochastic": RSSMWorldModel}
"""The class of each kind of latent, by its name."""
LATENT_KINDS: tuple[str, ...] = tuple(WORLD_MODELS)


def world_model_class(latent: str) -> type[WorldModel]:
    """The class of the latent kind `latent` ("deterministic" or "stochastic")."""
    if latent not in WORLD_MODELS:
        raise ValueError(f"latent must be one of {LATENT_KINDS}, got {latent!r}")
    return WORLD_MODELS[latent]


def build_world_model(
    obs_shape: tuple[int, ...], action_dim: int, latent: str = "deterministic", **keywords: Any
) -> WorldModel:
    """`world_model_class(latent)(obs_shape, action_dim, **keywords)`: the keywords are that class's."""
    return world_model_class(latent)(obs_shape, action_dim, **keywords)
