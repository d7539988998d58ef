"""Interactive sessions (zoo.inference.session) on tiny random models: the processor's click loop with the cached
embedding, undo/reset, SAM-Med3D's crop moves, world coordinates, and saving to JSON + safetensors and reopening
without encoding again."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tiny_models import tiny_model, write_volume
from zoo.errors import DataError, PromptError
from zoo.inference.predictor import Predictor
from zoo.inference.session import Session
from zoo.processors import ClickState, processor_for
from zoo.prompts.validate import boxes_from_user, points_from_user
from zoo.prompts.types import Prompts

from .conftest import CallCounter

pytestmark = pytest.mark.filterwarnings("ignore::zoo.inference.predictor.RandomWeightsWarning")

IMAGE = np.random.default_rng(1).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def litemedsam():
    return tiny_model("litemedsam")


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    return write_volume(tmp_path_factory.mktemp("session") / "ct.nii.gz", shape=(60, 50, 40))


def by_hand(model, image, actions) -> torch.Tensor:
    """The processor's click loop written out: what a session must compute."""
    processor = processor_for(model)
    frame = processor.prepare(image)
    encoding = model.encode_image(frame.model_input[None])
    state = ClickState()
    for kind, value, label in actions:
        if kind == "box":
            prompts = Prompts(boxes=boxes_from_user(value, frame.original_shape))
        else:
            prompts = Prompts(points=points_from_user([value], [label], frame.original_shape, "xy"))
        on_model = processor.to_model_space(prompts, frame)
        state, _ = processor.click(model, encoding, state, on_model.points, on_model.boxes)
    return processor.to_original(state.low_res_logits, frame).mask.reshape(frame.original_shape)


def test_a_2d_session_is_the_processors_click_loop_on_one_embedding(litemedsam):
    counter = CallCounter(litemedsam.image_encoder)
    session = Session(litemedsam, IMAGE)
    assert not session.result().mask.any() and session.result().prompts == 0
    first = session.add_box([20, 15, 80, 70])
    session.add_click([50, 40])
    third = session.add_click([30, 60], positive=False)
    session.undo()
    back = session.undo()
    session.reset()
    assert session.result().prompts == 0 and not session.result().mask.any()
    with pytest.raises(PromptError, match="nothing to undo"):
        session.undo()
    assert counter.calls == 1  # one embedding for the whole session
    counter.handle.remove()
    assert torch.equal(back.mask, first.mask) and back.prompts == 1
    actions = [("box", [20, 15, 80, 70], 1), ("click", [50, 40], 1), ("click", [30, 60], 0)]
    with torch.inference_mode():
        expected = by_hand(litemedsam, IMAGE, actions)
    assert torch.equal(third.mask, expected) and third.prompts == 3 and third.seconds > 0
    assert third.logits is not None and third.logits.shape == (90, 120)


def test_a_click_outside_the_image_is_refused_and_leaves_the_session_as_it_was(litemedsam):
    session = Session(litemedsam, IMAGE)
    session.add_box([20, 15, 80, 70])
    with pytest.raises(PromptError, match="outside"):
        session.add_click([500, 40])
    assert session.result().prompts == 1


def test_a_3d_session_reuses_the_crop_embedding_and_replays_clicks_where_the_crop_moves(volume):
    model = tiny_model("sam_med3d_turbo")
    counter = CallCounter(model.image_encoder)
    session = Session(model, volume)
    session.add_click([30, 25, 20])
    session.add_click([33, 26, 21])
    inside = session.add_click([28, 22, 19], positive=False)
    assert counter.calls == 1  # the 32^3 crop holds every click: one encoding
    reference = Predictor(model)  # used the same way: its crop is the first click's, the clicks replayed in it
    reference.set_image(volume)
    reference.predict(point_coords=[[30, 25, 20]], point_labels=[1])
    expected = reference.predict(point_coords=[[30, 25, 20], [33, 26, 21], [28, 22, 19]], point_labels=[1, 1, 0])
    assert torch.equal(inside.mask, expected.masks[0])
    assert inside.strategy == "single_crop" and len(inside.crops) == 1
    calls = counter.calls
    moved = session.add_click([50, 40, 30])  # outside the crop: a crop around all four clicks
    assert counter.calls == calls + 1
    expected = reference.predict(point_coords=[[30, 25, 20], [33, 26, 21], [28, 22, 19], [50, 40, 30]],
                                 point_labels=[1, 1, 0, 1])
    assert torch.equal(moved.mask, expected.masks[0])
    calls = counter.calls
    undone = session.undo()  # back to the first crop: its embedding is cached
    assert torch.equal(undone.mask, inside.mask) and counter.calls == calls
    counter.handle.remove()


def test_world_clicks_are_the_same_clicks_as_voxels(volume):
    model = tiny_model("sam_med3d_turbo")
    affine = nib.load(volume).affine
    world = (affine @ np.array([30.0, 25.0, 20.0, 1.0]))[:3]
    a = Session(model, volume).add_click([30, 25, 20])
    b = Session(model, volume).add_click(world.tolist(), space="world")
    lps = world * np.array([-1.0, -1.0, 1.0])
    c = Session(model, volume).add_click(lps.tolist(), space="world_lps")
    assert torch.equal(a.mask, b.mask) and torch.equal(a.mask, c.mask)


def test_a_saved_session_reopens_without_encoding_and_goes_on_as_before(litemedsam, tmp_path):
    session = Session(litemedsam, IMAGE)
    session.add_box([20, 15, 80, 70])
    session.add_click([50, 40])
    saved = session.save(tmp_path / "s")
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files[0].startswith("embeddings-") and files[0].endswith(".safetensors")
    assert files[1:] == ["image_mask.png", "session.json"]
    content = json.loads(saved.read_text())
    assert [a["kind"] for a in content["actions"]] == ["box", "click"]
    counter = CallCounter(litemedsam.image_encoder)
    reopened = Session.open(tmp_path / "s", litemedsam, IMAGE)
    assert counter.calls == 0  # the embedding came from disk
    # in the encoder's layout (the file keeps no strides): the decoder reads it as tokens without a copy
    assert reopened.predictor.features.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(reopened.result().mask, session.result().mask)
    assert torch.equal(reopened.add_click([30, 60], positive=False).mask,
                       session.add_click([30, 60], positive=False).mask)
    assert counter.calls == 0
    counter.handle.remove()
    reopened.save(tmp_path / "s")  # replaces its own files; the old embeddings file is removed
    assert len(list((tmp_path / "s").glob("embeddings-*.safetensors"))) == 1


def test_a_3d_session_saves_each_crop_embedding_and_its_mask_with_the_volumes_geometry(volume, tmp_path):
    model = tiny_model("sam_med3d_turbo")
    session = Session(model, volume)
    session.add_click([30, 25, 20])
    session.save(tmp_path / "s")
    mask = nib.load(tmp_path / "s" / "ct_mask.nii.gz")
    assert mask.shape == (60, 50, 40) and np.allclose(mask.affine, nib.load(volume).affine)
    counter = CallCounter(model.image_encoder)
    reopened = Session.open(tmp_path / "s", model, volume)
    assert counter.calls == 0
    assert all(f.is_contiguous(memory_format=torch.channels_last_3d) for _, f in reopened.predictor.crop_cache.values())
    assert torch.equal(reopened.add_click([33, 26, 21]).mask, session.add_click([33, 26, 21]).mask)
    assert counter.calls == 0
    counter.handle.remove()


def test_reopening_with_another_model_or_image_is_refused(litemedsam, tmp_path):
    session = Session(litemedsam, IMAGE)
    session.add_box([20, 15, 80, 70])
    session.save(tmp_path / "s")
    with pytest.raises(DataError, match="other weights"):
        Session.open(tmp_path / "s", tiny_model("litemedsam", seed=1), IMAGE)
    with pytest.raises(DataError, match="another image"):
        Session.open(tmp_path / "s", litemedsam, IMAGE[::-1].copy())


def test_a_session_is_not_written_into_a_folder_of_other_files(litemedsam, tmp_path):
    (tmp_path / "mine.txt").write_text("a user's file")
    session = Session(litemedsam, IMAGE)
    session.add_box([20, 15, 80, 70])
    with pytest.raises(DataError, match="no session.json"):
        session.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
