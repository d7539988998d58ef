"""Image encodings computed once per model input: a click, a point set or a box on an image already encoded costs
only the prompt encoder and the mask decoder.

The cache is keyed on what an encoding derives from, the model-input tensor itself (shape, dtype and bytes), so the
same slice prepared twice (another target on that slice, another protocol, slice propagation) is encoded once, and a
different input can never get a stale encoding. It belongs to one model and is dropped with it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

from torch import Tensor, nn


class EncodingCache:
    """``model.encode_image`` of model inputs, each distinct input once (the ``capacity`` most recent are kept).

    Attributes:
        encoded: how many inputs were encoded (the image encoder's calls).
        reused: how many requests were answered from the cache.
    """

    def __init__(self, model: nn.Module, capacity: int = 256) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.model = model
        self.capacity = capacity
        self._store: OrderedDict[str, Any] = OrderedDict()
        self.encoded = 0
        self.reused = 0

    @property
    def device(self) -> Any:
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else "cpu"

    @staticmethod
    def key(model_input: Tensor) -> str:
        """What an encoding derives from: the input's shape, dtype and values."""
        values = model_input.detach().contiguous().cpu()
        digest = hashlib.sha256(f"{tuple(values.shape)}|{values.dtype}".encode())
        digest.update(values.numpy().tobytes())
        return digest.hexdigest()

    def encode(self, model_input: Tensor) -> Any:
        """The encoding of one ``C x *S`` model input (batch of one)."""
        return self.encode_batch(model_input[None])

    def encode_batch(self, batch: Tensor) -> Any:
        """``model.encode_image`` of a ``1 x C x *S`` batch, from the cache when this input was encoded before."""
        if batch.shape[0] != 1:
            raise ValueError(f"the encoding cache takes one image at a time, got a batch of {batch.shape[0]}")
        key = self.key(batch[0])
        if key in self._store:
            self._store.move_to_end(key)
            self.reused += 1
            return self._store[key]
        encoding = self.model.encode_image(batch.to(self.device))
        self.encoded += 1
        self._store[key] = encoding
        if len(self._store) > self.capacity:
            self._store.popitem(last=False)
        return encoding

    def clear(self) -> None:
        self._store.clear()


class CachedEncoderModel:
    """``model`` with ``encode_image`` answered by an :class:`EncodingCache`; everything else is the model's (for
    procedures that call the model themselves, such as :func:`zoo.inference.propagation.propagate_box`)."""

    def __init__(self, cache: EncodingCache) -> None:
        self._cache = cache

    def encode_image(self, batch: Tensor) -> Any:
        return self._cache.encode_batch(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache.model, name)


__all__ = ["CachedEncoderModel", "EncodingCache"]
