"""The real world: gymnasium envs as pixels or state, the Parking env, collection and the episode store.

Importing this package registers the toolkit's own envs with gymnasium under the `wm` namespace, as gymnasium 1.x
packages do (`import envs; gymnasium.make("wm/Parking-v0")`, or `gymnasium.make("envs:wm/Parking-v0")` with no
import); that is its only side effect. It imports nothing from the toolkit's other packages.
"""

from envs.collect import CollectStats, Policy, RandomPolicy, collect
from envs.make import BoundedAsyncVectorEnv, WorkerTimeoutError, make_env, make_vector_env, register_envs
from envs.spec import EnvSpec
from envs.store import CorruptShardError, Episode, EpisodeStore, LatentCache, StoreLayout, StoreWarning, Windows

register_envs()

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
