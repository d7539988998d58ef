"""Data: reading, checking and preprocessing 3D NIfTI and 2D PNG datasets, and Lightning DataModules."""

from zoo.data.datamodule3d import NiftiDataModule3D
from zoo.data.dataset3d import Sample3D, TargetDataset
from zoo.errors import DataError
from zoo.data.layout3d import CaseFiles, TargetRecord, find_cases, list_targets, read_dataset_json
from zoo.io.nifti import Volume, check_same_grid, load_image, load_label, read_header
from zoo.io.png import read_image, read_mask
from zoo.data.predict import PromptedImagesDataModule
from zoo.data.sa_med2d import ImageMasksDataset, MaskImageDataset, SAMed2DDataModule, collate_2d
from zoo.data.sliced import SlicedVolumeDataModule
from zoo.data.slicer import SlicedVolumeDataset, assemble_volume, slice_volume
from zoo.data.transforms3d import build_transforms_3d, crop_to_original_map, restore_to_original

__all__ = [
    "CaseFiles",
    "DataError",
    "ImageMasksDataset",
    "MaskImageDataset",
    "NiftiDataModule3D",
    "PromptedImagesDataModule",
    "SAMed2DDataModule",
    "Sample3D",
    "SlicedVolumeDataModule",
    "SlicedVolumeDataset",
    "TargetDataset",
    "TargetRecord",
    "Volume",
    "assemble_volume",
    "build_transforms_3d",
    "check_same_grid",
    "collate_2d",
    "crop_to_original_map",
    "find_cases",
    "list_targets",
    "load_image",
    "load_label",
    "read_dataset_json",
    "read_header",
    "read_image",
    "read_mask",
    "restore_to_original",
    "slice_volume",
]
