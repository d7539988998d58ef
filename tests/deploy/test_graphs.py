"""The exported graphs of every family: valid ONNX, the processor config beside them, and ONNX Runtime's outputs equal
to PyTorch's (the model's ``encode_image`` and the processor's ``decode`` policy) within 1e-4 for every prompt
combination, dynamic batch and dynamic number of points."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.processors import processor_for
from zoo.prompts.types import BoxPrompts, PointPrompts, Prompts

from .support import FAMILIES

ATOL = 1e-4


def tensors_of(encoding) -> list[torch.Tensor]:
    """An encoding as the encoder graph's outputs: the embedding, or SAM-UNet's embedding and multi-scale feature."""
    if isinstance(encoding, torch.Tensor):
        return [encoding]
    return [encoding.image_embeddings, encoding.multi_scale_feature]


def session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", FAMILIES)
def test_the_graphs_pass_the_onnx_checker_and_carry_the_family(name, exported) -> None:
    import onnx

    model, folder = exported(name)
    for graph in ("image_encoder", "prompt_decoder"):
        proto = onnx.load(str(folder / f"{graph}.onnx"))
        onnx.checker.check_model(proto)
        metadata = {entry.key: entry.value for entry in proto.metadata_props}
        assert metadata["zoo.family"] == model.family
        assert metadata["zoo.graph"] == graph


@pytest.mark.parametrize("name", FAMILIES)
def test_the_processor_config_is_written_beside_the_graphs(name, exported) -> None:
    model, folder = exported(name)
    written = json.loads((folder / "processor_config.json").read_text(encoding="utf-8"))
    assert written == processor_for(model).to_dict()


@pytest.mark.parametrize("name", FAMILIES)
def test_the_encoder_equals_pytorch_for_a_batch_of_two(name, exported) -> None:
    model, folder = exported(name)
    shape = (2, int(getattr(model.config, "in_chans", 3)), *model.input_size)
    images = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    outputs = session(folder / "image_encoder.onnx").run(None, {"model_input": images.numpy()})
    with torch.no_grad():
        encoding = model.encode_image(images)
    expected = tensors_of(encoding)
    assert len(outputs) == len(expected)  # SAM-UNet: image embeddings and the multi-scale feature
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=ATOL)


def prompt_sets(dims: int, size: int, low_res: tuple[int, ...]) -> list[dict]:
    """Every combination of N = 0, 1 or 4 points, a box or none (2D), a mask prompt or none, on the model grid (index
    order), with 1 and 3 prompt sets in turn; ``N = 0`` means no points."""
    gen = torch.Generator().manual_seed(2)
    cases = []
    for count in (0, 1, 4):
        for box in ((False, True) if dims == 2 else (False,)):
            for mask in (False, True):
                if count == 0 and not box and not mask:
                    continue
                batch = 3 if len(cases) % 2 else 1
                lo = torch.rand(batch, dims, generator=gen) * size / 2
                cases.append(dict(
                    coords=torch.rand(batch, count, dims, generator=gen) * (size - 1),
                    labels=torch.randint(0, 2, (batch, count), generator=gen),
                    box=(lo, lo + torch.rand(batch, dims, generator=gen) * size / 2) if box else None,
                    mask=torch.randn(batch, 1, *low_res, generator=gen) * 3 if mask else None,
                ))
    return cases


@pytest.mark.parametrize("name", FAMILIES)
def test_the_decoder_equals_the_processors_decode_for_every_prompt_combination(name, exported) -> None:
    model, folder = exported(name)
    processor = processor_for(model)
    dims, size, low_res = model.spatial_dims, model.config.image_size, tuple(model.mask_input_size)
    decoder = session(folder / "prompt_decoder.onnx")
    names = [output.name for output in decoder.get_outputs()]
    with torch.no_grad():
        encoding = model.encode_image(torch.randn(1, int(getattr(model.config, "in_chans", 3)), *model.input_size))
    image_side = tensors_of(encoding)
    checked = 0
    for case in prompt_sets(dims, size, low_res):
        coords, labels, box, mask = case["coords"], case["labels"], case["box"], case["mask"]
        batch = coords.shape[0]
        feeds = {name_: tensor.numpy() for name_, tensor in zip([i.name for i in decoder.get_inputs()], image_side)}
        feeds["point_coords"] = (coords.flip(-1) if dims == 2 else coords).numpy()  # the network's (x, y) in 2D
        feeds["point_labels"] = labels.numpy()
        if dims == 2:
            feeds["boxes"] = (
                np.zeros((batch, 0, 4), np.float32) if box is None
                else torch.stack([box[0][:, 1], box[0][:, 0], box[1][:, 1], box[1][:, 0]], 1)[:, None].numpy()
            )
        feeds["mask_input"] = (torch.zeros(batch, 1, *low_res) if mask is None else mask).numpy()
        feeds["has_mask_input"] = np.array([0.0 if mask is None else 1.0], np.float32)
        got = dict(zip(names, decoder.run(None, feeds)))

        grid = tuple(model.input_size)
        prompts = Prompts(
            None if coords.shape[1] == 0 else PointPrompts(coords, labels, grid),
            None if box is None else BoxPrompts(box[0], box[1], torch.ones(batch, dtype=torch.bool), grid),
            None if mask is None else processor.feedback(mask),
        )
        with torch.no_grad():
            decoded = processor.decode(model, encoding, prompts)
            upsampled = processor.upsample(decoded.low_res_logits)
        np.testing.assert_allclose(got["low_res_logits"], decoded.low_res_logits.numpy(), rtol=0, atol=ATOL)
        if decoded.iou_predictions is None:
            assert "iou_predictions" not in got
        else:
            np.testing.assert_allclose(got["iou_predictions"], decoded.iou_predictions.numpy(), rtol=0, atol=ATOL)
        if dims == 2:
            np.testing.assert_allclose(got["logits"], upsampled.numpy(), rtol=0, atol=ATOL)
        else:
            agree = (got["mask"] == processor.binarize(upsampled).numpy()).mean()
            assert agree >= 0.999
        checked += 1
    assert checked == (11 if dims == 2 else 5)


def test_an_existing_export_is_replaced_only_when_asked(exported, tmp_path) -> None:
    from zoo.deploy.onnx_export import export_onnx

    model, folder = exported("litemedsam")
    for file in folder.iterdir():
        (tmp_path / file.name).write_bytes(b"an older export")
    with pytest.raises(FileExistsError, match="image_encoder.onnx: already exists"):
        export_onnx(model, tmp_path)
    assert (tmp_path / "prompt_decoder.onnx").read_bytes() == b"an older export"
    export_onnx(model, tmp_path, overwrite=True)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["image_encoder.onnx", "processor_config.json", "prompt_decoder.onnx"]
    assert (tmp_path / "prompt_decoder.onnx").read_bytes() == (folder / "prompt_decoder.onnx").read_bytes()
