"""zoo.geometry.grid3d reproduces SAM-Med3D's torchio geometry: against the authors' pipeline fixture and
against torchio 0.23.1 / SimpleITK 2.5.7 (test oracles) on random small volumes."""

from __future__ import annotations

import ast
import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from zoo.errors import DataError
from zoo.geometry.grid3d import (
    CropWindow,
    SmallVolumeWarning,
    crop_window,
    paste_back_nearest,
    plan_resample,
    resample,
    resampled_bbox,
    torchio_dtype,
    torchio_resample_grid,
    torchio_voxels,
)

from .oracle import (
    IN_CI,
    REPO_ROOT,
    case_image,
    ground_truth_voxel,
    pending_root,
    pipeline_cases,
    random_case,
    random_image,
    random_label,
    require,
    torchio_crop_or_pad,
    torchio_paste_back,
    torchio_resample_canonical,
)

AFFINE_ATOL_MM = 1e-6
VALUE_RTOL = 1e-4

CASES = (
    [random_case(seed, "axis") for seed in range(100, 114)]
    + [random_case(seed, "tie") for seed in range(200, 210)]
    + [random_case(seed, "oblique") for seed in range(300, 308)]
)
DTYPES = [np.int16, np.float32, np.uint16, np.uint8]


def _zscore_positive(crop: np.ndarray) -> torch.Tensor:
    """upstream's ZNormalization(masking_method=x > 0) = the project's ``NormalizeIntensityd._zscore_positive``."""
    x = torch.from_numpy(crop).float()
    values = x[x > 0]
    return (x - values.mean()) / values.std()


def _assert_values_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} vs {want.dtype}"
    error = np.abs(got.astype(np.float64) - want.astype(np.float64))
    scale = np.maximum(np.abs(want.astype(np.float64)), 1.0)
    worst = np.unravel_index(error.argmax(), error.shape)
    assert (error <= VALUE_RTOL * scale).all(), f"{what}: max error {error.max():.3g} at {worst}"


# ------------------------------------------------------------------------------------------ against torchio
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_resample_canonical_crop_and_paste_back_match_torchio(case):
    require("torchio")
    dtype = DTYPES[case.seed % len(DTYPES)]
    image, label = random_image(case, dtype), random_label(case)
    want = torchio_resample_canonical(image, label, case.affine, case.target)

    plan = plan_resample(case.shape, case.affine, case.target, itemsize=np.dtype(dtype).itemsize, on_small="ignore")
    assert plan.canonical.shape == tuple(want.image.spatial_shape)
    np.testing.assert_allclose(plan.canonical.affine, want.image.affine, rtol=0, atol=AFFINE_ATOL_MM)
    np.testing.assert_allclose(torchio_resample_grid(case.shape, case.affine, case.target).affine,
                               plan.resampled.affine, rtol=0, atol=0)

    _assert_values_close(resample(image, plan, "linear"), want.image.data[0].numpy(), "linear resampling")
    np.testing.assert_array_equal(resample(label, plan, "nearest"), want.label.data[0].numpy())

    rng = np.random.default_rng(case.seed + 3)
    size = tuple(int(s) for s in rng.integers(7, 41, 3))
    cropped = torchio_crop_or_pad(want, size)
    window = crop_window(plan.canonical.shape, size, resampled_bbox(label, plan))
    np.testing.assert_allclose(window.affine(plan.canonical.affine), cropped.image.affine, rtol=0, atol=AFFINE_ATOL_MM)
    _assert_values_close(resample(image, plan, "linear", window), cropped.image.data[0].numpy(), "crop")
    np.testing.assert_array_equal(resample(label, plan, "nearest", window), cropped.label.data[0].numpy())

    # A random mask in crop space tests every voxel's nearest-neighbour decision, ties included.
    mask = (rng.random(size) < 0.5).astype(np.uint8)
    expected = torchio_paste_back(mask, cropped.image.affine, case.shape, case.affine)
    pasted = paste_back_nearest(mask.astype(np.float32), cropped.image.affine, case.shape, case.affine)
    assert int((pasted != expected).sum()) == 0, f"{int((pasted != expected).sum())} voxels differ"


@pytest.mark.parametrize("case", CASES[::3], ids=repr)
def test_paste_back_of_small_objects_resamples_only_their_neighbourhood_and_matches_torchio(case, monkeypatch):
    """Masks that fill a few voxels of the crop (at its faces and corners too): only the box around them is
    resampled, and the result is still upstream's on every voxel of the original grid; an empty mask resamples
    nothing."""
    require("torchio")
    from zoo.geometry import grid3d

    boxes = []
    resample_box = grid3d.resample_box
    monkeypatch.setattr(grid3d, "resample_box", lambda *args: boxes.append((args[3], args[4])) or resample_box(*args))
    rng = np.random.default_rng(case.seed + 11)
    plan = plan_resample(case.shape, case.affine, case.target, on_small="ignore")
    size = tuple(int(s) for s in rng.integers(12, 30, 3))
    crop_affine = crop_window(plan.canonical.shape, size).affine(plan.canonical.affine)
    for corner in (np.zeros(3, int), np.array(size) - 2, rng.integers(0, np.array(size) - 3)):
        mask = np.zeros(size, dtype=np.uint8)
        mask[tuple(slice(c, c + 2) for c in corner)] = rng.integers(0, 2, (2, 2, 2))
        mask[tuple(corner)] = 1
        bar = [slice(c, c + 1) for c in corner]
        bar[case.seed % 3] = slice(None, None)  # a line through the crop: longer than the box's margin
        mask[tuple(bar)] = 1
        expected = torchio_paste_back(mask, crop_affine, case.shape, case.affine)
        pasted = paste_back_nearest(mask, crop_affine, case.shape, case.affine)
        assert int((pasted != expected).sum()) == 0, f"{int((pasted != expected).sum())} voxels differ"
    small = [np.prod(np.subtract(hi, lo)) for lo, hi in boxes]
    boxes.clear()
    paste_back_nearest(np.ones(size, np.uint8), crop_affine, case.shape, case.affine)
    whole = np.prod(np.subtract(boxes[0][1], boxes[0][0]))  # the crop's whole footprint on the original grid
    assert all(volume < whole for volume in small)  # objects in the crop's padding resample nothing
    boxes.clear()
    assert not paste_back_nearest(np.zeros(size, np.uint8), crop_affine, case.shape, case.affine).any()
    assert boxes == []


def test_tie_cases_really_have_ties():
    """The ``tie`` family puts original voxel centres exactly halfway between resampled ones (3 mm -> 1.5 mm),
    which is what the paste-back's tie rule decides: the test above checks the rule, not only generic points."""
    spacings = {c.seed: np.linalg.norm(c.affine[:3, :3], axis=0) for c in CASES if c.kind == "tie"}
    case = next(c for c in CASES if c.kind == "tie" and (spacings[c.seed] == 3.0).any())
    axis = int(np.argmax(spacings[case.seed] == 3.0))
    plan = plan_resample(case.shape, case.affine, case.target, on_small="ignore")
    to_resampled = np.linalg.solve(plan.resampled.affine, case.affine)  # original index -> resampled index
    positions = to_resampled[axis, axis] * np.arange(case.shape[axis]) + to_resampled[axis, 3]
    np.testing.assert_allclose(np.mod(positions, 1.0), 0.5, atol=1e-9)


def test_paste_back_ties_take_the_higher_crop_voxel():
    """3 mm original, 1.5 mm crop whose centres straddle every original centre: the higher crop index wins."""
    original = np.diag([3.0, 3.0, 3.0, 1.0])
    crop = np.diag([1.5, 1.5, 1.5, 1.0])
    crop[:3, 3] = -0.75  # crop voxels 2k and 2k+1 sit 0.75 mm either side of original voxel k
    mask = np.zeros((8, 2, 2), dtype=np.uint8)
    mask[1::2] = 1  # only the odd (higher) crop voxels are set
    pasted = paste_back_nearest(mask, crop, (4, 1, 1), original)
    np.testing.assert_array_equal(pasted[:, 0, 0], [1, 1, 1, 1])
    pasted = paste_back_nearest(1 - mask, crop, (4, 1, 1), original)
    np.testing.assert_array_equal(pasted[:, 0, 0], [0, 0, 0, 0])


def test_paste_back_outside_the_crop_is_zero():
    mask = np.ones((4, 4, 4), dtype=np.uint8)
    crop = np.eye(4)
    crop[:3, 3] = 10.0
    pasted = paste_back_nearest(mask, crop, (20, 20, 20), np.eye(4))
    assert pasted.sum() == 64 and pasted[10:14, 10:14, 10:14].all()


def test_scaled_nifti_voxels_match_simpleitk(tmp_path):
    """With nibabel's ``dataobj.slope``/``.inter``; a header with slope 0 and an intercept (which ITK applies
    and nibabel ignores) needs the raw header fields."""
    sitk = require("SimpleITK")
    from nibabel.openers import ImageOpener

    raw = np.arange(-60, 60, dtype=np.int16).reshape(4, 5, 6)
    for slope, inter in ((0.5, 10.0), (1.0, 0.0), (float("nan"), float("nan")), (0.0, 3.0), (2.5, 0.0), (1.0, -1.0)):
        image = nib.Nifti1Image(raw, np.eye(4))
        image.header["scl_slope"], image.header["scl_inter"] = slope, inter
        path = tmp_path / "scaled.nii.gz"
        nib.save(image, path)
        loaded = nib.load(path)
        with ImageOpener(path) as stream:
            header = nib.Nifti1Header.from_fileobj(stream)
        want = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose()
        got = torchio_voxels(loaded.dataobj.get_unscaled(), header["scl_slope"], header["scl_inter"])
        assert got.dtype == want.dtype == torchio_dtype(raw.dtype, header["scl_slope"], header["scl_inter"])
        np.testing.assert_array_equal(got, want)
        if slope != 0.0:
            np.testing.assert_array_equal(
                torchio_voxels(loaded.dataobj.get_unscaled(), loaded.dataobj.slope, loaded.dataobj.inter), want)


def test_torchio_widens_unsigned_voxels():
    assert torchio_dtype(np.uint16) == np.int32 and torchio_dtype(np.uint32) == np.int64
    assert torchio_dtype(np.int16) == np.int16 and torchio_dtype(np.uint8) == np.uint8


# ------------------------------------------------------------------------------------------ CropOrPad window
def test_crop_window_without_target_centres_like_torchio():
    window = crop_window((244, 202, 60), 128)
    assert window.cropping == (58, 58, 37, 37, 0, 0) and window.padding == (0, 0, 0, 0, 34, 34)
    odd = crop_window((9, 4, 7), (4, 9, 7))
    assert odd.cropping == (3, 2, 0, 0, 0, 0) and odd.padding == (0, 0, 3, 2, 0, 0)


@pytest.mark.parametrize("size", [4, 5])
@pytest.mark.parametrize("lo,hi", [(10, 12), (10, 13), (0, 1), (29, 30)])
def test_crop_window_around_a_box_matches_torchio_formula(size, lo, hi):
    window = crop_window((30, 30, 30), size, ((lo, lo, lo), (hi, hi, hi)))
    centre = (lo + hi) / 2
    assert window.start[0] == int(np.floor(centre - size / 2))
    assert isinstance(window, CropWindow) and window.size == (size, size, size)


def test_crop_window_apply_pads_with_fill():
    array = np.arange(27).reshape(3, 3, 3)
    out = CropWindow((-1, 0, 1), (3, 3, 3), (3, 3, 3)).apply(array, fill=-5)
    assert (out[0] == -5).all() and (out[:, :, 2] == -5).all()
    np.testing.assert_array_equal(out[1:, :, :2], array[:2, :, 1:])


# ------------------------------------------------------------------------------------------ planning
def test_plan_refuses_a_grid_too_large_before_allocating():
    affine = np.diag([1.0, 1.0, 1000.0, 1.0])
    with pytest.raises(DataError) as error:
        plan_resample((512, 512, 100), affine, 1.5, path="huge.nii.gz")
    message = str(error.value)
    assert message.startswith("huge.nii.gz:") and "1000" in message and "341 x 341 x 66666" in message


def test_plan_limit_is_configurable():
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    plan = plan_resample((100, 100, 100), affine, 1.5, itemsize=2)
    assert plan.nbytes == 2_000_000 and plan.canonical.shape == (100, 100, 100)
    with pytest.raises(DataError, match="over the limit"):
        plan_resample((100, 100, 100), affine, 1.5, itemsize=2, max_bytes=1_000_000)


def test_plan_warns_below_one_model_patch():
    with pytest.warns(SmallVolumeWarning, match="tiny.nii.gz"):
        plan = plan_resample((5, 5, 5), np.eye(4), 1.5, path="tiny.nii.gz")
    assert plan.canonical.shape == (3, 3, 3)
    with pytest.raises(DataError, match="tiny.nii.gz"):
        plan_resample((5, 5, 5), np.eye(4), 1.5, path="tiny.nii.gz", on_small="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan_resample((5, 5, 5), np.eye(4), 1.5, on_small="ignore")
        plan_resample((30, 30, 30), np.eye(4), 1.5)


def test_plan_refuses_an_axis_without_voxels():
    with pytest.raises(DataError, match="shorter than one target voxel"):
        plan_resample((2, 40, 40), np.diag([0.5, 1.0, 1.0, 1.0]), 1.5, path="thin.nii.gz")


def test_plan_rejects_bad_affines():
    with pytest.raises(DataError, match="singular"):
        plan_resample((10, 10, 10), np.diag([1.0, 0.0, 1.0, 1.0]), 1.5)


# ------------------------------------------------------------------------------------------ product boundary
def test_product_code_never_imports_the_oracles():
    offenders = []
    for path in (REPO_ROOT / "zoo").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path}: {n}" for n in names if n.split(".")[0] in ("torchio", "SimpleITK")]
    assert not offenders


# ------------------------------------------------------------------------------------------ the authors' fixture
FIXTURES = pipeline_cases()


def test_pipeline_fixture_present():
    if not FIXTURES:
        message = f"no sam_med3d_pipeline* fixture under {pending_root()} (set ZOO_PARITY_PENDING_DIR)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.parametrize("case_dir", FIXTURES, ids=[p.name for p in FIXTURES])
def test_pipeline_fixture_geometry(case_dir: Path):
    from safetensors.numpy import load_file

    spec = json.loads((case_dir / "case.json").read_text(encoding="utf-8"))
    tensors = load_file(str(case_dir / "io.safetensors"))
    original_shape = tuple(int(n) for n in tensors["original_shape"])
    original_affine = tensors["original_affine"]

    # 1-3: tio.Resample(1.5) + tio.ToCanonical grid.
    plan = plan_resample(original_shape, original_affine, 1.5, on_small="ignore")
    assert plan.canonical.shape == tuple(int(n) for n in tensors["resampled_shape"])
    np.testing.assert_allclose(plan.canonical.affine, tensors["resampled_affine"], rtol=0, atol=AFFINE_ATOL_MM)

    # What case.json calls padding/cropping params is CropOrPad's *centred* crop (upstream records
    # _compute_center_crop_or_pad in meta_info); the ROI itself is cut around the label (roi_affine).
    size = tuple(tensors["model_input"].shape[-3:])
    centred = crop_window(plan.canonical.shape, size)
    assert centred.padding == tuple(tensors["padding_params"]) and centred.cropping == tuple(tensors["cropping_params"])

    # 5: paste-back of the authors' ROI mask with the authors' ROI affine.
    pasted = paste_back_nearest(tensors["roi_mask"].astype(np.float32), tensors["roi_affine"], original_shape,
                                original_affine).astype(np.uint8)
    assert int((pasted != tensors["final_mask"]).sum()) == 0

    # 4: the ROI window around the resampled one-voxel label, its affine, label and normalised image.
    image_path = case_image(case_dir, spec["inputs"]["image"])
    if image_path is None:
        message = f"input image {spec['inputs']['image']} of {case_dir.name} not found"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    image = nib.load(str(image_path))
    assert tuple(image.shape[:3]) == original_shape
    label = np.zeros(original_shape, dtype=np.uint8)
    label[ground_truth_voxel(spec, tensors["click_original_voxel"])] = 1
    window = crop_window(plan.canonical.shape, size, resampled_bbox(label, plan))
    roi_affine = window.affine(plan.canonical.affine)
    np.testing.assert_allclose(roi_affine, tensors["roi_affine"], rtol=0, atol=AFFINE_ATOL_MM)
    np.testing.assert_array_equal(resample(label, plan, "nearest", window), tensors["roi_label"][0, 0])
    assert tensors["roi_label"][0, 0][tuple(tensors["click_crop"][0, 0])] == 1

    voxels = torchio_voxels(image.dataobj.get_unscaled(), image.dataobj.slope, image.dataobj.inter)
    roi = resample(voxels, plan, "linear", window)
    model_input = _zscore_positive(roi).numpy()
    np.testing.assert_allclose(model_input, tensors["model_input"][0, 0], rtol=1e-4, atol=1e-4)

    pasted_ours = paste_back_nearest(tensors["roi_mask"], roi_affine, original_shape, original_affine)
    assert int((pasted_ours != tensors["final_mask"]).sum()) == 0
