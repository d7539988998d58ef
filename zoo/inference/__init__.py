"""Inference workflows around the networks and their processors: the interactive predictor and sessions, how they
run, objects larger than one crop, slice propagation of a 2D model through a volume, several objects per image,
and automatic prompts."""

from zoo.inference.large_objects import LargeObjects
from zoo.inference.predictor import Prediction, Predictor
from zoo.inference.propagation import Propagation, propagate_box
from zoo.inference.runtime import ModelRuntime
from zoo.inference.session import Session, SessionResult
from zoo.inference.volume2d import VolumeSegmentation, segment_volume

__all__ = [
    "LargeObjects",
    "ModelRuntime",
    "Prediction",
    "Predictor",
    "Propagation",
    "Session",
    "SessionResult",
    "VolumeSegmentation",
    "propagate_box",
    "segment_volume",
]
