"""Predictor runtime options: precision (fp32 / bf16 autocast / auto), a compiled image encoder and decoder."""

from __future__ import annotations

import pytest
import torch

from tiny_models import write_volume
from zoo.inference import runtime as runtime_module
from zoo.inference.predictor import Predictor
from zoo.inference.runtime import EmulatedPrecisionWarning, ModelRuntime, resolve_precision
from zoo.models.sam_unet import SamUNetImageEncoding


def test_unknown_precision_is_refused_when_the_predictor_is_made(tiny_2d_model):
    with pytest.raises(ValueError, match="precision must be one of"):
        Predictor(tiny_2d_model, precision="fp16")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_uses_bf16_only_where_it_is_native(monkeypatch, native, expected):
    monkeypatch.setattr(runtime_module, "native_bf16", lambda device: native)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


@pytest.mark.parametrize("native", [True, False])
def test_bf16_asked_for_where_it_is_emulated_warns_once(monkeypatch, tiny_2d_model, recwarn, native):
    """It runs (the user asked for it), but the user learns that it is slower than fp32 here, once per device."""
    monkeypatch.setattr(runtime_module, "native_bf16", lambda device: native)
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    runtime = ModelRuntime(tiny_2d_model, precision="bf16")
    with torch.inference_mode():
        for _ in range(2):
            runtime.encode_image(images)
        ModelRuntime(tiny_2d_model, precision="auto").encode_image(images)
        ModelRuntime(tiny_2d_model).encode_image(images)
    warned = [w for w in recwarn if issubclass(w.category, EmulatedPrecisionWarning)]
    assert len(warned) == (0 if native else 1)
    if warned:
        assert "precision='bf16'" in str(warned[0].message) and "'auto' picks fp32" in str(warned[0].message)
        assert warned[0].filename == __file__, "points at the caller"


def test_bf16_runs_the_encoder_in_bf16_and_the_prompt_side_in_float32(tiny_3d_model, tmp_path):
    volume = write_volume(tmp_path / "ct.nii.gz")
    encoder_dtypes, decoder_dtypes = [], []
    hooks = [
        tiny_3d_model.image_encoder.blocks[0].mlp.lin1.register_forward_hook(
            lambda module, args, output: encoder_dtypes.append(output.dtype)
        ),
        tiny_3d_model.mask_decoder.transformer.layers[0].mlp.lin1.register_forward_hook(
            lambda module, args, output: decoder_dtypes.append(output.dtype)
        ),
    ]
    exact, low = Predictor(tiny_3d_model), Predictor(tiny_3d_model, precision="bf16")
    exact.set_image(volume)
    low.set_image(volume)
    first_exact = exact.predict([[24, 20, 18]], [1])  # SAM-Med3D embeds its crop on the first prediction
    first_low = low.predict([[24, 20, 18]], [1])
    for hook in hooks:
        hook.remove()
    assert encoder_dtypes == [torch.float32, torch.bfloat16]
    assert low.features.dtype == torch.float32
    assert decoder_dtypes == [torch.float32, torch.float32]
    assert first_low.low_res_logits.dtype == torch.float32
    # bf16 keeps 8 mantissa bits: close to fp32, not equal.
    scale = first_exact.low_res_logits.abs().max()
    error = (first_low.low_res_logits - first_exact.low_res_logits).abs().max()
    assert 0 < error <= 0.05 * scale


def test_compiled_encoder_gives_the_eager_embedding(tiny_2d_model):
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        eager = ModelRuntime(tiny_2d_model).encode_image(images)
        compiled_runtime = ModelRuntime(tiny_2d_model, compile_encoder=True)
        compiled = compiled_runtime.encode_image(images)
        again = compiled_runtime.encode_image(images)
    assert compiled_runtime._compiled is not None
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)
    torch.testing.assert_close(again, compiled, rtol=0, atol=0)


def test_bf16_encodings_are_handed_on_in_float32():
    class BFloat16Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def encode_image(self, images):
            return SamUNetImageEncoding(images.bfloat16(), images[:, :1].bfloat16())

    runtime = ModelRuntime(BFloat16Encoder(), precision="bf16")
    encoding = runtime.encode_image(torch.randn(1, 2, 4, 4))
    assert isinstance(encoding, SamUNetImageEncoding)
    assert encoding.image_embeddings.dtype == encoding.multi_scale_feature.dtype == torch.float32


def test_compiled_decoder_gives_the_eager_masks_for_any_point_count(tiny_2d_model):
    image = (torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    eager, compiled = Predictor(tiny_2d_model), Predictor(tiny_2d_model, compile_decoder=True)
    for predictor in (eager, compiled):
        predictor.set_image(image)
    prompts = (([[20, 10]], [1]), ([[20, 10], [30, 25]], [1, 0]), ([[5, 5], [20, 10], [30, 25]], [1, 1, 0]))
    for coords, labels in prompts:
        expected = eager.predict(point_coords=coords, point_labels=labels)
        result = compiled.predict(point_coords=coords, point_labels=labels)
        torch.testing.assert_close(result.low_res_logits, expected.low_res_logits, rtol=0, atol=1e-5)
    assert len(compiled.runtime._compiled_decoders) == 1
