"""Inference workflows around the pure networks: preprocessing, prompt mapping, cached-embedding predictors."""

from zoo.inference.predictor2d import Prediction2D, SamMed2DPredictor
from zoo.inference.predictor3d import Prediction3D, SamMed3DPredictor

__all__ = ["Prediction2D", "Prediction3D", "SamMed2DPredictor", "SamMed3DPredictor"]
