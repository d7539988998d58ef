"""ONNX export of any zoo model: an image-encoder graph (once per image) and a prompt-decoder graph (per click), with
the processor config beside them.

``export_onnx(model, out_dir)`` writes::

    image_encoder.onnx      model_input B x C x *S float32 (the processor's model input)
                            -> image_embeddings B x E x *grid (SAM-UNet also multi_scale_feature)
    prompt_decoder.onnx     the encoder's outputs (batch 1 or B) and one prompt set per row:
                              point_coords   B x N x D float32, model-input pixels: (x, y) in 2D, (i, j, k) in 3D;
                                             N = 0 means no points
                              point_labels   B x N int64: 1 foreground, 0 background, -1 padding
                              boxes          B x K x 4 float32 (2D only): (x0, y0, x1, y1) in model-input pixels;
                                             K = 1 a box, K = 0 no box (an empty tensor)
                              mask_input     B x 1 x *low_res float32: a previous low_res_logits, fed to the prompt
                                             encoder as the family's processor feeds it (SAM-Med2D: sigmoid)
                              has_mask_input [1] float32: 1 uses mask_input, 0 ignores it (pass zeros)
                            -> low_res_logits B x 1 x *low_res: the mask the processor's decode policy keeps
                               (SAM, SAM-Med2D: best of three by predicted IoU; the others the single mask)
                               iou_predictions B x 1 (not SAM-UNet, which has no IoU head)
                               2D: logits B x 1 x S x S, the processor's upsampling to the model input
                               3D: mask B x 1 x S^3 bool, the processor's upsampling and threshold of the crop
    processor_config.json   the processor (preprocessing, decode policy), as beside the weights

An absent box is an empty ``boxes`` tensor (not a flag) because it changes the token count: SAM pads the points
with one "not a point" token only when there is no box. An absent mask is a flag because the dense embedding
has the same shape either way (the mask branch is computed and discarded). Everything the graphs compute is the
PyTorch model's and processor's own code, traced under
:func:`~zoo.models.components.compute_path.reference_computation` (upstream's literal computation, no fast path).
The way from the model input back to the user's grid and the preprocessing run outside the graphs, in numpy
(:mod:`zoo.geometry`), as the torch processors run them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import Tensor, nn

from zoo.deploy.graphs import (
    BOXES,
    DECODER_FILE,
    ENCODER_FILE,
    HAS_MASK_INPUT,
    IOU_PREDICTIONS,
    LOW_RES_LOGITS,
    MASK_INPUT,
    METADATA_PREFIX,
    MODEL_GRID_LOGITS,
    MODEL_GRID_MASK,
    MODEL_INPUT,
    OPSET,
    POINT_COORDS,
    POINT_LABELS,
    PROCESSOR_CONFIG_FILE,
)
from zoo.io.atomic import write_atomically
from zoo.models.components import attention
from zoo.models.components.compute_path import reference_computation
from zoo.processors import Processor, processor_for
from zoo.prompts.types import Prompts


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    encoder: Path
    decoder: Path
    processor_config: Path

    @property
    def files(self) -> list[Path]:
        return [self.encoder, self.decoder, self.processor_config]


class ImageEncoderGraph(nn.Module):
    """``model.encode_image`` with its encoding as a tuple of tensors (a dataclass's fields in order)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, model_input: Tensor) -> Tensor | tuple[Tensor, ...]:
        encoding = self.model.encode_image(model_input)
        if dataclasses.is_dataclass(encoding):
            return tuple(getattr(encoding, f.name) for f in dataclasses.fields(encoding))
        return encoding


class PromptDecoderGraph(nn.Module):
    """Prompt encoder, mask decoder and the processor's decode policy, with absent prompts as empty tensors/flags
    (see the module docstring)."""

    def __init__(self, model: nn.Module, processor: Processor, encoding_type: type | None) -> None:
        super().__init__()
        self.model = model
        self.processor = processor
        self.encoding_type = encoding_type
        self.spatial_dims = int(model.spatial_dims)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        if self.spatial_dims == 2:
            *encoding, coords, labels, boxes, mask_input, has_mask_input = inputs
        else:
            *encoding, coords, labels, mask_input, has_mask_input = inputs
            boxes = None
        batch = coords.shape[0]
        tensors = [e.expand(batch, *e.shape[1:]) for e in encoding]  # one image for every prompt set
        encoded = self.encoding_type(*tensors) if self.encoding_type is not None else tensors[0]
        sparse = self._sparse(coords, labels, boxes)
        dense = self._dense(mask_input, has_mask_input, batch)

        def decode(encoding_: Any, **kwargs: Any) -> Any:
            return self.model.decode_embeddings(encoding_, sparse, dense, kwargs["multimask_output"])

        decoded = self.processor.decode(self.model, encoded, Prompts(), decoder=decode)
        outputs = [decoded.low_res_logits]
        if decoded.iou_predictions is not None:
            outputs.append(decoded.iou_predictions)
        upsampled = self.processor.upsample(decoded.low_res_logits)
        outputs.append(upsampled if self.spatial_dims == 2 else self.processor.binarize(upsampled))
        return tuple(outputs)

    def _sparse(self, coords: Tensor, labels: Tensor, boxes: Tensor | None) -> Tensor:
        """``PromptEncoder.forward``'s tokens: the points, then one padding point when there are points and no box,
        then the box corners. The shape arithmetic is traced, so it holds for every ``N`` and ``K``."""
        encoder = self.model.prompt_encoder
        count = coords.shape[1]
        tokens = encoder._embed_points(coords, labels, pad=True)  # N points + the padding point
        has_points = torch.clamp(torch.as_tensor(count), max=1)
        if boxes is None:
            return tokens[:, : count + has_points]
        tokens = tokens[:, : count + has_points * (1 - boxes.shape[1])]
        corners = encoder._embed_boxes(boxes.reshape(-1, 4)).reshape(coords.shape[0], -1, tokens.shape[2])
        return torch.cat([tokens, corners], dim=1)

    def _dense(self, mask_input: Tensor, has_mask_input: Tensor, batch: Any) -> Tensor:
        encoder = self.model.prompt_encoder
        fed = self.processor.feedback(mask_input).logits
        grid = (1, -1) + (1,) * self.spatial_dims
        no_mask = encoder.no_mask_embed.weight.reshape(grid).expand(batch, -1, *encoder.image_embedding_size)
        use_mask = has_mask_input.reshape((1,) * (2 + self.spatial_dims)) > 0.5
        return torch.where(use_mask, encoder.mask_downscaling(fed), no_mask)


def export_onnx(
    model: nn.Module,
    out_dir: str | Path,
    processor: Processor | None = None,
    opset: int = OPSET,
    overwrite: bool = False,
) -> OnnxExport:
    """Write ``image_encoder.onnx``, ``prompt_decoder.onnx`` and ``processor_config.json`` for ``model`` into
    ``out_dir`` (the processor defaults to the one that travels with the model). Each file is written to a temporary
    name and moved into place; existing files are replaced only with ``overwrite``."""
    import onnx

    processor = processor if processor is not None else processor_for(model)
    processor.check_model(model)
    policy = processor.policy
    if policy.first_mask == "zeros" and policy.mask_feedback != "logits":
        raise ValueError(
            f"{type(processor).__name__}: a first mask of zero logits with {policy.mask_feedback!r} feedback cannot be "
            "fed through the decoder graph's mask_input (which applies the feedback)"
        )
    folder = Path(out_dir)
    targets = [folder / ENCODER_FILE, folder / DECODER_FILE, folder / PROCESSOR_CONFIG_FILE]
    existing = [str(path) for path in targets if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]}: already exists (overwrite=True / --overwrite replaces it)")
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {
        "family": str(model.family),
        "processor_type": processor.processor_type,
        "weights_origin": str(getattr(model, "weights_origin", None) or ""),
        # what the runtime's prompt check names and allows (the processor's own, as the Predictor's check does)
        "model_name": processor.model_name,
        "prompt_kinds": ",".join(sorted(processor.prompt_kinds)),
    }
    was_training = model.training
    model.eval()
    try:
        dummy = torch.zeros(1, int(model.config.in_chans), *processor.input_shape)
        with torch.no_grad():
            sample = model.encode_image(dummy)
        encoder_bytes, names, encoding_type = _export_encoder(model, dummy, sample, opset)
        decoder_bytes = _export_decoder(model, processor, sample, names, encoding_type, opset)
    finally:
        model.train(was_training)
    for graph, data in (("image_encoder", encoder_bytes), ("prompt_decoder", decoder_bytes)):
        proto = _finish(onnx, data, {**metadata, "graph": graph})
        target = folder / (ENCODER_FILE if graph == "image_encoder" else DECODER_FILE)
        write_atomically(target, proto.SerializeToString())
    config_text = json.dumps(processor.to_dict(), indent=2, sort_keys=True) + "\n"
    write_atomically(folder / PROCESSOR_CONFIG_FILE, config_text.encode("utf-8"))
    return OnnxExport(*targets)


def _export_encoder(model: nn.Module, dummy: Tensor, sample: Any, opset: int) -> tuple[bytes, list[str], type | None]:
    if dataclasses.is_dataclass(sample):
        names, encoding_type = [f.name for f in dataclasses.fields(sample)], type(sample)
    else:
        names, encoding_type = ["image_embeddings"], None
    axes = {MODEL_INPUT: {0: "batch"}, **{name: {0: "batch"} for name in names}}
    data = _trace(ImageEncoderGraph(model).eval(), (dummy,), [MODEL_INPUT], names, axes, opset)
    return data, names, encoding_type


def _export_decoder(
    model: nn.Module, processor: Processor, sample: Any, names: Sequence[str], encoding_type: type | None, opset: int
) -> bytes:
    dims = int(model.spatial_dims)
    tensors = [getattr(sample, name) for name in names] if encoding_type is not None else [sample]
    size = float(processor.config.image_size)
    prompts: dict[str, Tensor] = {
        POINT_COORDS: torch.full((1, 2, dims), size / 2),
        POINT_LABELS: torch.tensor([[1, 0]], dtype=torch.int64),
    }
    if dims == 2:
        prompts[BOXES] = torch.zeros(1, 0, 4)
    prompts[MASK_INPUT] = torch.zeros(1, 1, *model.mask_input_size)
    prompts[HAS_MASK_INPUT] = torch.zeros(1)
    graph = PromptDecoderGraph(model, processor, encoding_type).eval()
    with torch.no_grad():
        outputs = graph(*tensors, *prompts.values())
    output_names = [LOW_RES_LOGITS] + ([IOU_PREDICTIONS] if len(outputs) == 3 else []) + [
        MODEL_GRID_LOGITS if dims == 2 else MODEL_GRID_MASK
    ]
    axes: dict[str, dict[int, str]] = {name: {0: "image_batch"} for name in names}
    axes.update({POINT_COORDS: {0: "batch", 1: "points"}, POINT_LABELS: {0: "batch", 1: "points"}})
    if dims == 2:
        axes[BOXES] = {0: "batch", 1: "boxes"}
    axes[MASK_INPUT] = {0: "batch"}
    axes.update({name: {0: "batch"} for name in output_names})
    return _trace(graph, (*tensors, *prompts.values()), [*names, *prompts], output_names, axes, opset)


def _trace(
    module: nn.Module,
    args: tuple[Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> bytes:
    buffer = io.BytesIO()
    with torch.no_grad(), reference_computation(), _static_grids(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values it records as constants
        torch.onnx.export(
            module,
            args,
            buffer,
            dynamo=False,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    return buffer.getvalue()


@contextmanager
def _static_grids() -> Iterator[None]:
    """The tracer hands sizes over as tensors; SAM-Med3D's relative-position bias compares its (static) token grids
    as Python values, so during tracing it gets them as ints."""
    original = attention._sam_med3d_rel_pos_bias

    def with_int_grids(q: Tensor, tables: list[Tensor], q_grid: Sequence[Any], k_grid: Sequence[Any]) -> Tensor:
        return original(q, tables, tuple(int(s) for s in q_grid), tuple(int(s) for s in k_grid))

    with mock.patch.object(attention, "_sam_med3d_rel_pos_bias", with_int_grids):
        yield


def _finish(onnx: Any, data: bytes, metadata: dict[str, str]) -> Any:
    """The traced graph with negative ``Transpose`` permutations made positive (the exporter writes
    ``permute(0, -1, ...)`` as is; ONNX Runtime refuses it), the zoo's metadata, checked by ``onnx.checker``."""
    proto = onnx.load_from_string(data)
    for node in proto.graph.node:
        if node.op_type == "Transpose":
            for attribute in node.attribute:
                if attribute.name == "perm":
                    perm = list(attribute.ints)
                    attribute.ints[:] = [p % len(perm) for p in perm]
    onnx.helper.set_model_props(proto, {f"{METADATA_PREFIX}{key}": value for key, value in metadata.items()})
    onnx.checker.check_model(proto)
    return proto
