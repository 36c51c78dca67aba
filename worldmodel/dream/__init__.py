"""The dream: the world model stepped as a batched latent environment, from real start states.

`rollout` runs a whole population at once (P candidates x E episodes) with the noise, disagreement penalty and
termination that keep a controller honest; `gym_env` shows the same steps behind gymnasium's (vector) env API for any
gymnasium agent. It imports the dynamics; nothing in perception or dynamics imports it.
"""

from worldmodel.dream.gym_env import DreamEnv, DreamVectorEnv
from worldmodel.dream.rollout import DreamSettings, DreamState

__all__ = ["DreamEnv", "DreamSettings", "DreamState", "DreamVectorEnv"]
