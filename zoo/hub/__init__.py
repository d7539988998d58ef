"""Weights in and out: safe reading of the authors' checkpoints, conversion to the Hub format, loading."""

from zoo.hub.convert import Conversion, convert
from zoo.errors import CheckpointError
from zoo.hub.fingerprint import CheckpointKind, detect_checkpoint
from zoo.hub.loading import load_official_weights
from zoo.hub.pretrained import from_pretrained
from zoo.hub.safe_load import read_checkpoint_file
from zoo.hub.sam_init import InitReport, init_from_sam
from zoo.hub.state_dict import extract_state_dict, read_state_dict

__all__ = [
    "CheckpointError",
    "CheckpointKind",
    "Conversion",
    "InitReport",
    "convert",
    "detect_checkpoint",
    "extract_state_dict",
    "from_pretrained",
    "init_from_sam",
    "load_official_weights",
    "read_checkpoint_file",
    "read_state_dict",
]
