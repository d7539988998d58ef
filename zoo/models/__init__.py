"""Pure ``nn.Module`` networks. Importing this package registers every released variant."""

from zoo.models.litemedsam import LiteMedSAM, LiteMedSAMConfig
from zoo.models.outputs import MaskPrediction
from zoo.models.sam_med2d import Sam, SamConfig, SamMed2D, SamMed2DConfig
from zoo.models.sam_med3d import SamMed3D, SamMed3DConfig
from zoo.models.sam_unet import SamUNet, SamUNetConfig

__all__ = [
    "LiteMedSAM",
    "LiteMedSAMConfig",
    "MaskPrediction",
    "Sam",
    "SamConfig",
    "SamMed2D",
    "SamMed2DConfig",
    "SamMed3D",
    "SamMed3DConfig",
    "SamUNet",
    "SamUNetConfig",
]
