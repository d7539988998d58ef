"""Which processor a model gets, how it is saved beside the weights and read back, what it refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest

import zoo
from tiny_models import TINY_UNET, tiny_model
from zoo.errors import DataError
from zoo.inference.predictor import Predictor
from zoo.processors import (
    PROCESSOR_CONFIG_NAME,
    PROCESSOR_TYPES,
    DecodePolicy,
    LiteMedSAMProcessor,
    SamMed2DProcessor,
    SamMed2DProcessorConfig,
    SamMed3DProcessor,
    SamMed3DProcessorConfig,
    SamProcessor,
    SamUNetProcessor,
    load_processor,
    processor_for,
    processor_from_dict,
    processor_from_spec,
)

#: One non-default config per processor type, so a round trip that dropped a field would show.
CHANGED = {
    "sam_med2d": dict(
        image_size=128, geometry="test_script", training_geometry="predictor", pixel_mean=(1.0, 2.0, 3.0)
    ),
    "sam": dict(image_size=512, pixel_std=(4.0, 5.0, 6.0), decode=DecodePolicy(multimask_output=False)),
    "sam_unet": dict(image_size=128, decode=DecodePolicy(binarize="sigmoid", mask_feedback="sigmoid")),
    "litemedsam": dict(image_size=128),
    "sam_med3d": dict(image_size=64, target_spacing_mm=(1.0, 1.5, 2.0), normalization="ct_window"),
}


@pytest.mark.parametrize("kind", sorted(PROCESSOR_TYPES))
def test_processor_config_json_round_trips(kind, tmp_path):
    cls = PROCESSOR_TYPES[kind]
    original = cls(cls.config_class(**CHANGED[kind]))
    path = original.save(tmp_path)
    assert path == tmp_path / PROCESSOR_CONFIG_NAME
    content = json.loads(path.read_text())
    assert content["processor_type"] == kind and content["image_size"] == CHANGED[kind]["image_size"]
    for restored in (processor_from_dict(content), load_processor(tmp_path)):
        assert type(restored) is cls and restored.config == original.config


def test_an_unknown_processor_type_or_field_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown processor_type 'sam_med4d'; known: litemedsam, sam, sam_med2d"):
        processor_from_dict({"processor_type": "sam_med4d"})
    with pytest.raises(ValueError, match="crop_size"):
        processor_from_dict({"processor_type": "sam_med3d", "crop_size": 64})
    with pytest.raises(ValueError, match="binarize must be one of"):
        processor_from_dict({"processor_type": "sam", "decode": {"binarize": "softmax"}})


def test_a_folder_without_processor_config_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no {PROCESSOR_CONFIG_NAME}"):
        load_processor(tmp_path)


def test_a_processor_from_a_type_name_takes_config_fields():
    processor = processor_from_spec("sam_med3d", image_size=64)
    assert isinstance(processor, SamMed3DProcessor) and processor.input_shape == (64, 64, 64)
    with pytest.raises(ValueError, match="unknown processor 'sam2'"):
        processor_from_spec("sam2")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sam_vit_b", SamProcessor),
        ("sam_unet_r34", SamUNetProcessor),
        ("sam_unet_r50", SamUNetProcessor),
        ("sam_med2d_b", SamMed2DProcessor),
        ("litemedsam", LiteMedSAMProcessor),
        ("sam_med3d_turbo", SamMed3DProcessor),
    ],
)
def test_each_model_gets_its_familys_processor_without_flags(name, expected):
    model = tiny_model(name) if name != "sam_unet_r50" else zoo.create_model(name, **TINY_UNET)
    processor = processor_for(model)
    assert type(processor) is expected
    assert processor.input_shape == model.input_size  # sized to the model's config
    model.processor_config = None  # no config attached: the family default
    assert type(processor_for(model)) is expected


def test_sam_is_longest_side_with_best_of_three_and_sam_unet_longest_side_with_one_mask():
    sam, unet = processor_for(tiny_model("sam_vit_b")), processor_for(zoo.create_model("sam_unet_r34", **TINY_UNET))
    assert (sam.policy.multimask_output, sam.policy.binarize) == (True, "logits")
    assert (unet.policy.multimask_output, unet.policy.binarize) == (False, "logits")
    image = np.zeros((32, 64, 3), dtype=np.uint8)  # both pad the bottom half
    for processor in (sam, unet):
        assert processor.prepare(image).meta["input_size"] == (32, 64)


def test_the_processor_config_travelling_with_the_model_wins_over_the_default():
    model = tiny_model("sam_med2d_b")
    model.processor_config = SamMed2DProcessor(SamMed2DProcessorConfig(image_size=64, geometry="test_script")).to_dict()
    assert processor_for(model).config.geometry == "test_script"


def test_the_processor_config_is_saved_beside_the_weights_and_read_back(tmp_path):
    model = tiny_model("sam_med2d_b")
    model.processor_config = SamMed2DProcessor(SamMed2DProcessorConfig(image_size=64, geometry="test_script")).to_dict()
    model.save_pretrained(tmp_path)
    assert load_processor(tmp_path).config.geometry == "test_script"
    assert processor_for(zoo.from_pretrained(str(tmp_path))).config.geometry == "test_script"


def test_a_processor_for_another_input_size_is_refused():
    model = tiny_model("sam_med2d_b")  # 64 x 64
    released = SamMed2DProcessor(SamMed2DProcessorConfig())  # 256 x 256
    message = r"the processor prepares \(256, 256\) inputs but SamMed2D takes \(64, 64\)"
    with pytest.raises(ValueError, match=message):
        released.check_model(model)
    with pytest.raises(ValueError, match=message):
        Predictor(model, processor=released)
    model.processor_config = released.to_dict()
    with pytest.raises(ValueError, match=message):
        processor_for(model)


def test_a_processor_of_another_dimensionality_is_refused():
    with pytest.raises(ValueError, match="SamMed3DProcessor prepares 3D inputs but SamMed2D is a 2D model"):
        SamMed3DProcessor(SamMed3DProcessorConfig(image_size=64)).check_model(tiny_model("sam_med2d_b"))


def test_a_processor_needs_its_own_config_class():
    with pytest.raises(TypeError, match="SamProcessor needs a SamProcessorConfig"):
        SamProcessor(SamMed2DProcessorConfig())


# ---------------------------------------------------------------------------------------------- 2D image inputs
TWO_D = sorted(kind for kind, cls in PROCESSOR_TYPES.items() if cls.spatial_dims == 2)


@pytest.mark.parametrize("kind", TWO_D)
@pytest.mark.parametrize(
    ("image", "message"),
    [
        (
            np.full((5, 6, 3), 300, dtype=np.uint16),
            "slice.png: expected 8-bit (uint8) pixels, got uint16; window or rescale it to 0..255 first",
        ),
        (
            np.full((5, 6, 3), 0.5, dtype=np.float32),
            "slice.png: expected 8-bit (uint8) pixels, got float32; floating-point pixels are ambiguous (0..1 or "
            "0..255?); convert explicitly, e.g. (image * 255).round().astype(np.uint8) for 0..1 values",
        ),
        (
            np.zeros((5, 6, 4), dtype=np.uint8),
            "slice.png: expected an H x W x 3 RGB or H x W grey image, got shape (5, 6, 4); drop the alpha channel "
            "first (image[..., :3])",
        ),
        (
            np.zeros((3, 5, 6), dtype=np.uint8),
            "slice.png: expected an H x W x 3 RGB or H x W grey image, got shape (3, 5, 6)",
        ),
    ],
    ids=["uint16", "float", "rgba", "channels_first"],
)
def test_2d_inputs_that_are_not_8_bit_rgb_are_refused_with_how_to_convert(kind, image, message):
    cls = PROCESSOR_TYPES[kind]
    with pytest.raises(DataError) as error:
        cls(cls.config_class(image_size=64)).prepare(image, source="slice.png")
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("kind", TWO_D)
def test_grey_images_are_repeated_to_three_channels(kind):
    cls = PROCESSOR_TYPES[kind]
    processor = cls(cls.config_class(image_size=64))
    grey = np.random.default_rng(0).integers(0, 256, size=(20, 30), dtype=np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    assert np.array_equal(processor.prepare(grey).model_input.numpy(), processor.prepare(rgb).model_input.numpy())
