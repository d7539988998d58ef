"""Inference workflows around the pure networks: preprocessing, prompt mapping, cached-embedding predictors."""

from zoo.inference.predictor2d import Prediction2D, SamMed2DPredictor, SamUNetPredictor
from zoo.inference.predictor3d import Prediction3D, SamMed3DPredictor
from zoo.inference.runtime import ModelRuntime

__all__ = [
    "ModelRuntime",
    "Prediction2D",
    "Prediction3D",
    "SamMed2DPredictor",
    "SamMed3DPredictor",
    "SamUNetPredictor",
]
