"""Inference workflows around the networks and their processors: the interactive predictor, how it runs, and slice
propagation of a 2D model through a volume."""

from zoo.inference.predictor import Prediction, Predictor
from zoo.inference.propagation import Propagation, propagate_box
from zoo.inference.runtime import ModelRuntime

__all__ = ["ModelRuntime", "Prediction", "Predictor", "Propagation", "propagate_box"]
