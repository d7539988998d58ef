"""Objects larger than one SAM-Med3D crop (zoo.inference.large_objects) with a tiny model whose image side and
decoder are replaced by a stand-in: the "embedding" is the crop itself and the logits say whether each low-res
cell lies inside a known ellipsoid of the volume, so every crop predicts the same world-fixed object and the test
knows the right answer."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tiny_models import tiny_model
from zoo.inference.large_objects import LargeObjects
from zoo.inference.predictor import Predictor
from zoo.inference.session import Session
from zoo.models.outputs import MaskPrediction
from zoo.processors import SamMed3DProcessor, SamMed3DProcessorConfig

pytestmark = pytest.mark.filterwarnings("ignore::zoo.inference.predictor.RandomWeightsWarning")

SHAPE = (70, 56, 44)  # at 1.5 mm: no resampling; the tiny model's crop is 32^3
CENTRE = np.array([36.0, 27.0, 22.0])
LARGE = (30.0, 22.0, 17.0)  # 60 x 44 x 34 voxels: about two crops along each axis


def inside_ellipsoid(radii: tuple[float, float, float]) -> np.ndarray:
    """``1 - sum(((x - centre) / radii)^2)`` per voxel: positive inside the ellipsoid, smooth across its surface."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1).astype(np.float64)
    return 1.0 - (((grid - CENTRE) / np.array(radii)) ** 2).sum(axis=-1)


def write(path: Path, values: np.ndarray) -> Path:
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = [-40.0, 10.0, 3.0]
    nib.save(nib.Nifti1Image(values.astype(np.float32), affine), str(path))
    return path


def stand_in(image_size: int = 32, edge_penalty: float = 0.0) -> tuple[torch.nn.Module, SamMed3DProcessor]:
    """A tiny SAM-Med3D whose encoder returns its input (the raw volume: no normalisation) and whose decoder returns
    each low-res cell's mean of it: positive inside the ellipsoid, whichever crop looks at it. ``edge_penalty``
    lowers the logits of the crop's outermost low-res cells, as a real model is less sure where it lacks context."""
    model = tiny_model("sam_med3d_turbo")
    model.config.image_size = image_size
    model.encode_image = lambda images: images  # type: ignore[method-assign]

    def decode(encoding, points=None, boxes=None, masks=None, multimask_output=False):
        low_res = F.avg_pool3d(encoding, kernel_size=4)
        edge = torch.zeros_like(low_res)
        for axis in (2, 3, 4):
            edge.narrow(axis, 0, 1).fill_(1.0)
            edge.narrow(axis, low_res.shape[axis] - 1, 1).fill_(1.0)
        return MaskPrediction(low_res - edge_penalty * edge, torch.ones(low_res.shape[0], 1))

    model.decode = decode  # type: ignore[method-assign]
    processor = SamMed3DProcessor(SamMed3DProcessorConfig(image_size=image_size, normalization="none"))
    return model, processor


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def segment(path: Path, model, processor, large_object=None):
    predictor = Predictor(model, processor, large_object=large_object)
    predictor.set_image(path)
    return predictor.predict(point_coords=[CENTRE.tolist()], point_labels=[1])


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> tuple[Path, np.ndarray]:
    values = inside_ellipsoid(LARGE)
    return write(tmp_path_factory.mktemp("large") / "large.nii.gz", values), values > 0


def test_one_crop_cuts_a_large_object_at_its_edge(large):
    path, truth = large
    result = segment(path, *stand_in())
    mask = result.masks[0].numpy()
    assert result.strategy == "single_crop" and len(result.crops) == 1
    assert mask.sum() < 0.7 * truth.sum()  # a 32^3 crop holds a part of it
    assert dice(mask, truth) < 0.8
    start = result.crops[0]  # no resampling or reorientation: the crop is voxels start .. start + 31 of the file
    outside = np.ones(SHAPE, dtype=bool)
    outside[tuple(slice(max(0, s), s + 32) for s in start)] = False
    assert not mask[outside].any()


def test_following_the_mask_recovers_the_object_across_crops(large):
    path, truth = large
    result = segment(path, *stand_in(), large_object=LargeObjects("follow_mask", max_crops=64))
    mask = result.masks[0].numpy()
    assert result.strategy == "follow_mask" and result.complete and len(result.crops) == 27  # 3 positions per axis
    assert mask.shape == SHAPE
    # The same stand-in on one crop that holds the whole volume: what a model without crops would give.
    reference = segment(path, *stand_in(image_size=80)).masks[0].numpy()
    assert dice(reference, truth) > 0.97
    assert dice(mask, truth) > 0.97
    assert (mask != reference).sum() < 0.02 * truth.sum()  # the low-res cells fall differently per crop


def test_gaussian_blending_leaves_no_seam_where_crops_are_unsure_at_their_edges(large):
    path, truth = large
    reference = segment(path, *stand_in(image_size=80, edge_penalty=0.3)).masks[0].numpy()  # one crop: no seam
    blended = segment(path, *stand_in(edge_penalty=0.3), large_object=LargeObjects("follow_mask", max_crops=64))
    assert len(blended.crops) == 27
    mask = blended.masks[0].numpy()
    assert dice(mask, truth) > dice(reference, truth) - 0.02
    # A plain mean of the overlapping logits (nearly flat weights) keeps the edges' doubt: a seam at every border.
    flat = LargeObjects("follow_mask", max_crops=64, sigma_scale=10.0)
    plain = segment(path, *stand_in(edge_penalty=0.3), large_object=flat).masks[0].numpy()
    assert dice(plain, truth) < dice(mask, truth) - 0.05


def test_an_object_inside_one_crop_gives_the_single_crop_result_exactly(tmp_path):
    path = write(tmp_path / "small.nii.gz", inside_ellipsoid((8.0, 6.0, 5.0)))
    a = segment(path, *stand_in())
    b = segment(path, *stand_in(), large_object="follow_mask")
    assert b.strategy == "follow_mask" and len(b.crops) == 1 and b.complete
    assert torch.equal(a.masks, b.masks) and a.masks.any()


def test_the_size_limit_stops_and_says_so(large):
    path, _ = large
    result = segment(path, *stand_in(), large_object=LargeObjects("follow_mask", max_crops=2))
    assert len(result.crops) == 2 and not result.complete


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="large-object strategy"):
        LargeObjects("zoom")


def test_a_session_follows_the_mask_too_and_reuses_every_crops_embedding(large):
    path, truth = large
    model, processor = stand_in()
    encodings = {"calls": 0}
    encode = model.encode_image

    def counted(images):
        encodings["calls"] += 1
        return encode(images)

    model.encode_image = counted  # type: ignore[method-assign]
    session = Session(model, path, processor, large_object=LargeObjects("follow_mask", max_crops=64))
    first = session.add_click(CENTRE.tolist())
    assert first.strategy == "follow_mask" and len(first.crops) == 27 and dice(first.mask.numpy(), truth) > 0.97
    calls = encodings["calls"]
    second = session.add_click((CENTRE + [2, 1, 0]).tolist())  # inside the first crop: no crop is encoded again
    assert encodings["calls"] == calls and len(second.crops) == 27
    expected = segment(path, *stand_in(), large_object=LargeObjects("follow_mask", max_crops=64))
    assert torch.equal(first.mask, expected.masks[0])
