"""Inference workflows around the networks and their processors: the interactive predictor and how it runs."""

from zoo.inference.predictor import Prediction, Predictor
from zoo.inference.runtime import ModelRuntime

__all__ = ["ModelRuntime", "Prediction", "Predictor"]
