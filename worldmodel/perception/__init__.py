"""Perception: a Vision Transformer that turns a frame into features, and how it learns on its own.

I-JEPA (`ijepa`) trains a context encoder and a predictor against an EMA target encoder on multi-block masks
(`masks`); images come from a folder, formula-driven fractals or env frames (`data`) through batched augmentation
(`augment`); k-NN, linear and R² probes (`probe`) score an encoder beside a random-init twin; `Encoder` (`encoder`)
embeds raw images with a trained ViT, its preprocessing inside. Nothing here knows about actions, dynamics or the
dream.
"""

from worldmodel.perception.encoder import Encoder
from worldmodel.perception.ijepa import IJEPA
from worldmodel.perception.masks import MultiBlockMaskSampler
from worldmodel.perception.vit import VisionTransformer

__all__ = ["Encoder", "IJEPA", "MultiBlockMaskSampler", "VisionTransformer"]
