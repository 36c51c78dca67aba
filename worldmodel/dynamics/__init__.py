"""Dynamics: the latent world model that the dream runs and the agents act through.

`world_model.WorldModel` is the interface every caller uses, and holds what both kinds share: it encodes frames (a
perception encoder) into a latent z, carries history in a recurrent h and predicts the next latent, the reward and the
continue flag, with an ensemble for disagreement. The kinds are two classes: the deterministic JEPA predictor
(`jepa.JEPAWorldModel`) and the stochastic state-space model (`rssm.RSSMWorldModel`, an RSSM);
`build.build_world_model` picks one by name. SIGReg (`sigreg`) is one of the JEPA model's collapse
guards; the decoder (`decoder`) turns detached latents into pictures only; `metrics` scores a model beside trivial
baselines. It may import perception, never the dream.
"""

from worldmodel.dynamics.build import build_world_model, world_model_class
from worldmodel.dynamics.decoder import Decoder
from worldmodel.dynamics.jepa import JEPAWorldModel
from worldmodel.dynamics.rssm import RSSMWorldModel
from worldmodel.dynamics.world_model import WorldModel, WorldModelBatch

__all__ = [
    "Decoder",
    "JEPAWorldModel",
    "RSSMWorldModel",
    "WorldModel",
    "WorldModelBatch",
    "build_world_model",
    "world_model_class",
]
