"""The real world: gymnasium envs as pixels or state, the Parking env, collection and the episode store.

Importing this package has no side effects; `register_envs()` (called by `make_env`) registers Parking-v0.
It imports nothing from the toolkit's other packages.
"""

from envs.collect import CollectStats, Policy, RandomPolicy, collect
from envs.make import BoundedAsyncVectorEnv, WorkerTimeoutError, make_env, make_vector_env, register_envs
from envs.spec import EnvSpec
from envs.store import CorruptShardError, Episode, EpisodeStore, LatentCache, StoreLayout, StoreWarning, Windows

__all__ = [
    "BoundedAsyncVectorEnv",
    "CollectStats",
    "CorruptShardError",
    "EnvSpec",
    "Episode",
    "EpisodeStore",
    "LatentCache",
    "Policy",
    "RandomPolicy",
    "StoreLayout",
    "StoreWarning",
    "Windows",
    "WorkerTimeoutError",
    "collect",
    "make_env",
    "make_vector_env",
    "register_envs",
]
