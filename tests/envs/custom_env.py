"""An env defined outside the toolkit that registers itself when its module is imported, as a user's own env does:
`--set env.id=custom_env:ShortPole-v0` must work in every command (tests/envs/test_envs_namespace.py)."""

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class ShortPole(CartPoleEnv):
    """CartPole by another name, with episodes of at most 100 steps."""


if "ShortPole-v0" not in gym.registry:
    gym.register(id="ShortPole-v0", entry_point=ShortPole, max_episode_steps=100)
