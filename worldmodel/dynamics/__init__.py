"""Dynamics: the latent world model that the dream runs and the agents act through.

`world_model.WorldModel` encodes frames (a perception encoder) into a latent z, carries history in a recurrent h and
predicts the next latent, the reward and the continue flag, with an ensemble for disagreement; the latent is the
deterministic JEPA predictor or a stochastic state-space model (RSSM). SIGReg (`sigreg`) is one of its collapse
guards; the decoder (`decoder`) turns detached latents into pictures only; `metrics` scores a model beside trivial
baselines. It may import perception, never the dream.
"""

from worldmodel.dynamics.decoder import Decoder
from worldmodel.dynamics.world_model import WorldModel, WorldModelBatch

__all__ = ["Decoder", "WorldModel", "WorldModelBatch"]
