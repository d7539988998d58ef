"""A run's masks appear together or not at all; volumes the models cannot use are refused (or flagged) up front,
through the paths a user calls."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from zoo.errors import DataError
from zoo.geometry.grid3d import SmallVolumeWarning
from zoo.io.masks import STAGING_PREFIX, MaskSet


def test_a_failure_while_writing_the_second_mask_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(source)
    out = tmp_path / "masks"
    with pytest.raises(ValueError, match="must not contain a folder"):
        with MaskSet(out) as masks:
            masks.add("first_mask.png", np.ones((4, 4), dtype=np.uint8), source)
            masks.add("bad/second_mask.png", np.ones((4, 4), dtype=np.uint8), source)
    assert sorted(out.iterdir()) == []  # neither mask, and no staging folder left behind
    with MaskSet(out) as masks:  # a rerun is not blocked by "already exists"
        masks.add("first_mask.png", np.ones((4, 4), dtype=np.uint8), source)
    assert [p.name for p in out.iterdir()] == ["first_mask.png"]


def test_masks_appear_only_when_the_whole_run_is_written(tmp_path: Path) -> None:
    source = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(source)
    out = tmp_path / "masks"
    with MaskSet(out) as masks:
        masks.add("a_mask.png", np.ones((4, 4), dtype=np.uint8), source)
        assert not (out / "a_mask.png").exists()
        assert [p.name.startswith(STAGING_PREFIX) for p in out.iterdir()] == [True]
    assert [p.name for p in out.iterdir()] == ["a_mask.png"]


def _volume(path: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Path:
    data = np.random.default_rng(0).integers(0, 500, size=shape).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))
    return path


def test_a_volume_whose_resampling_would_not_fit_in_memory_is_refused_naming_file_and_spacing(tmp_path: Path) -> None:
    import zoo
    from zoo.inference import Predictor

    path = _volume(tmp_path / "huge_spacing.nii.gz", (40, 40, 40), (1000.0, 1000.0, 1000.0))
    model = zoo.create_model("sam_med3d_turbo", image_size=32, embed_dim=24, depth=1, num_heads=2, prompt_embed_dim=48)
    with pytest.warns(UserWarning):
        predictor = Predictor(model)
    predictor.set_image(path)
    with pytest.raises(DataError, match=r"huge_spacing\.nii\.gz: spacing \(1000, 1000, 1000\) mm .* over the limit"):
        predictor.predict(point_coords=[[20, 20, 20]], point_labels=[1])


def test_a_tiny_volume_is_flagged(tmp_path: Path) -> None:
    import zoo
    from zoo.inference import Predictor

    path = _volume(tmp_path / "tiny.nii.gz", (5, 5, 5), (1.0, 1.0, 1.0))
    model = zoo.create_model("sam_med3d_turbo", image_size=32, embed_dim=24, depth=1, num_heads=2, prompt_embed_dim=48)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = Predictor(model)
    predictor.set_image(path)
    with pytest.warns(SmallVolumeWarning, match=r"tiny\.nii\.gz: .* mostly padding"):
        predictor.predict(point_coords=[[2, 2, 2]], point_labels=[1])
