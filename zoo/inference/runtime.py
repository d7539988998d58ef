"""How a predictor runs its network: numeric precision, and optionally a compiled image encoder and prompt side.

Precision ``"fp32"`` is exact; ``"bf16"`` runs the image encoder under ``torch.autocast`` (bfloat16 matrix
products, float32 reductions) and hands on a float32 image encoding; ``"auto"`` picks bf16 only where the device
computes it natively (CUDA with bf16 support, or a CPU whose oneDNN has bf16 kernels: AVX-512 or AMX). On a CPU
without them bf16 is emulated and much slower than fp32 (``benchmarks/encoder_speed.py``); ``"bf16"`` asked for
there runs anyway, with an :class:`EmulatedPrecisionWarning` on its first encoding.

The prompt side (prompt encoder and mask decoder, about 1 GFLOP per click at most) runs in float32 at either
precision. It is bound by small operations, not by arithmetic, and under autocast it would re-cast its float32
weights to bfloat16 on every click, which made clicks slower on every CPU measured.

``compile_encoder=True`` wraps the image side in ``torch.compile`` with inductor weight freezing; the first call
compiles (minutes at full size on a few CPU cores), later calls with the same input shape reuse the compiled code.
Frozen weights are constants of the compiled code, so the runtime remembers the state of every parameter and
buffer (object, version, storage, dtype, device) when it compiles and compiles again when any of them has changed
(an optimizer step, ``load_state_dict``, a replaced parameter, a move). Its gain depends on the model and the CPU
(from slower to much faster), so it is off by default.

``compile_decoder=True`` compiles the prompt side (the ``decode`` function a predictor passes) with ``torch.compile``,
without freezing. It pays on every click, outputs within float tolerance of eager. The first click compiles (seconds
to tens of seconds on a few cores) and the first click with a different number of prompt points compiles once
more, after which the point count is dynamic; worth it for long sessions and evaluation loops, not for a few
clicks, so it is off by default.

``benchmarks/encoder_speed.py`` measures each precision and path on the machine at hand.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from zoo.models.components.onednn_linear import onednn_reports_native_bf16
from zoo.models.components.weight_cache import TensorStates, version_counters_work

PRECISIONS = ("fp32", "bf16", "auto")


class EmulatedPrecisionWarning(UserWarning):
    """``precision="bf16"`` on a device without native bfloat16 kernels: emulated, slower than fp32."""


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has native bfloat16 matrix kernels (rather than emulating them)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return onednn_bf16_native()
    return False


@functools.cache
def onednn_bf16_native() -> bool:
    """Whether oneDNN reports native bf16 kernels on this CPU, through a private torch op, checked once: the op
    must exist and answer a bool, and a tiny bf16 autocast product must then agree with float32 to bf16 precision.
    Anything else counts as not native, so ``"auto"`` keeps the exact fp32."""
    if not onednn_reports_native_bf16():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        a, b = torch.randn(8, 16, generator=generator), torch.randn(16, 4, generator=generator)
        with torch.inference_mode(False), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            product = a @ b
        return product.dtype == torch.bfloat16 and torch.allclose(product.float(), a @ b, rtol=0.05, atol=0.1)
    except Exception:  # noqa: BLE001 - a missing or changed private op: not native
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
        self._compiled_states: TensorStates | None = None  # the weights frozen into self._compiled
        self._compiled_decoders: dict[Callable[..., Any], Callable[..., Any]] = {}
        self._warned_emulated: set[torch.device] = set()  # devices whose emulated bf16 was warned about

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def precision(self) -> str:
        """The precision in effect on the model's current device."""
        return resolve_precision(self.requested_precision, self.device)

    def autocast(self) -> AbstractContextManager:
        """``torch.autocast`` to bfloat16 on the model's device, or nothing for fp32. The first bf16 one on a
        device without native bfloat16 kernels warns (:class:`EmulatedPrecisionWarning`)."""
        if self.precision != "bf16":
            return nullcontext()
        device = self.device
        if device not in self._warned_emulated and not native_bf16(device):
            self._warned_emulated.add(device)
            warnings.warn(
                f"precision='bf16' on this {device.type.upper()}: it has no native bfloat16 kernels, so bfloat16 is "
                "emulated, much slower than fp32 and less exact; "
                "precision='auto' picks fp32 here",
                EmulatedPrecisionWarning,
                stacklevel=3,
            )
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def encode_image(self, images: Tensor) -> Any:
        """The model's ``encode_image`` at this precision (compiled on first use if requested)."""
        encode = self.compiled_encoder() if self.compile_encoder else self.model.encode_image
        with self.autocast():
            encoding = encode(images)
        return _as_float32(encoding)

    def compiled_encoder(self) -> Callable[[Tensor], Any]:
        """``torch.compile`` of the model's ``encode_image`` with its weights frozen, compiled again (after
        ``torch.compiler.reset()``, which drops every compiled function of the process) whenever a parameter or
        buffer is not the one, in the state, that was frozen. Where this torch's version counters cannot be relied
        on (``weight_cache.version_counters_work``) the weights are not frozen: the compiled code reads them."""
        if not version_counters_work():
            if self._compiled is None:
                self._compiled = torch.compile(self.model.encode_image)
            return self._compiled
        weights = [*self.model.parameters(), *self.model.buffers()]
        if self._compiled is None or self._compiled_states is None or not self._compiled_states.match(weights):
            if self._compiled is not None:
                # Dynamo would reuse the code compiled with the old weights (its guards do not read versions).
                torch.compiler.reset()
            self._compiled = torch.compile(self.model.encode_image, options={"freezing": True})
            self._compiled_states = TensorStates(weights)
        return self._compiled

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
