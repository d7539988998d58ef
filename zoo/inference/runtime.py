"""How a predictor runs its network: numeric precision, and optionally a compiled image encoder and prompt side.

Precision ``"fp32"`` is exact; ``"bf16"`` runs the image encoder under ``torch.autocast`` (bfloat16 matrix
products, float32 reductions) and hands on a float32 image encoding; ``"auto"`` picks bf16 only where the device
computes it natively (CUDA with bf16 support, or a CPU whose oneDNN has bf16 kernels: AVX-512 or AMX). On a CPU
without them bf16 is emulated and slower than fp32 (``benchmarks/encoder_speed.py`` measures both).

The prompt side (prompt encoder and mask decoder, about 1 GFLOP per click at most) runs in float32 at either
precision. It is bound by small operations, not by arithmetic, and under autocast it re-cast its float32 weights
to bfloat16 on every click: on a 2-core AMX CPU a bf16-autocast click took 9.9 / 5.3 / 6.9 ms (SAM-Med3D /
SAM-Med2D / SAM-UNet) against 8.2 / 3.6 / 5.4 ms in float32 on the same bf16 embedding.

``compile_encoder=True`` wraps the image side in ``torch.compile`` with inductor weight freezing; the first call
compiles (one to three minutes at full size on a 2-core CPU), later calls with the same input shape reuse the compiled
code. On a 2-core AVX-512/AMX CPU it changed the fp32 encoder by -4% (SAM-Med3D), +80% (SAM-Med2D) and -2%
(SAM-UNet), on a 2-core AVX2 CPU by -8%, +14% and -8%; so it is off by default.

``compile_decoder=True`` compiles the prompt side (the ``decode`` function a predictor passes) with ``torch.compile``,
without freezing. It pays on every click: 8.1 -> 6.1 ms (SAM-Med3D), 3.4 -> 2.1 ms (SAM-Med2D), 5.4 -> 3.1 ms
(SAM-UNet) on the 2-core AMX CPU, outputs within 2e-6. The first click compiles (13-17 s there) and the first
click with a different number of prompt points compiles once more (about 13 s), after which the point count is
dynamic; worth it for long sessions and evaluation loops, not for a few clicks, so it is off by default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

PRECISIONS = ("fp32", "bf16", "auto")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has native bfloat16 matrix kernels (rather than emulating them)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"``: ``precision`` itself, or for ``"auto"`` what ``device`` runs natively."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


class ModelRuntime:
    """Runs a promptable model's image side (at ``precision``) and prompt side (float32), either maybe compiled."""

    def __init__(
        self, model: nn.Module, precision: str = "fp32", compile_encoder: bool = False, compile_decoder: bool = False
    ) -> None:
        self.model = model
        self.requested_precision = precision
        resolve_precision(precision, torch.device("cpu"))  # validate now, resolve per device at call time
        self.compile_encoder = compile_encoder
        self.compile_decoder = compile_decoder
        self._compiled: Callable[[Tensor], Any] | None = None
        self._compiled_decoders: dict[Callable[..., Any], Callable[..., Any]] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def precision(self) -> str:
        """The precision in effect on the model's current device."""
        return resolve_precision(self.requested_precision, self.device)

    def autocast(self) -> AbstractContextManager:
        """``torch.autocast`` to bfloat16 on the model's device, or nothing for fp32."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def encode_image(self, images: Tensor) -> Any:
        """The model's ``encode_image`` at this precision (compiled on first use if requested)."""
        encode = self.model.encode_image
        if self.compile_encoder:
            if self._compiled is None:
                self._compiled = torch.compile(encode, options={"freezing": True})
            encode = self._compiled
        with self.autocast():
            encoding = encode(images)
        return _as_float32(encoding)

    def decode(self, decode: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a prompt-side function (prompt encoder + mask decoder): float32 at every precision, compiled on
        first use if requested."""
        if self.compile_decoder:
            if decode not in self._compiled_decoders:
                self._compiled_decoders[decode] = torch.compile(decode)
            decode = self._compiled_decoders[decode]
        return decode(*args, **kwargs)


def _as_float32(encoding: Any) -> Any:
    """``encoding`` (a tensor or a dataclass of tensors) with its floating-point tensors in float32."""
    if isinstance(encoding, Tensor):
        return encoding.float() if encoding.is_floating_point() else encoding
    if dataclasses.is_dataclass(encoding) and not isinstance(encoding, type):
        fields = {field.name: _as_float32(getattr(encoding, field.name)) for field in dataclasses.fields(encoding)}
        return dataclasses.replace(encoding, **fields)
    return encoding
