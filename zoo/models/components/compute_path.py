"""Switch between the exact fast kernels (default) and upstream's literal computation.

Components with a fast path (windowed attention without padded tokens, channels-last mask upscaling, factored
few-token cross-attention, SAM-Med2D's adapter convolutions as matrix products, oneDNN linears on the CPU) compute
the same function as upstream with fewer operations or faster kernels. Inside :func:`reference_computation` they
run upstream's computation step for step instead: for tests that compare the two and for benchmarks.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_use_reference: ContextVar[bool] = ContextVar("use_reference_computation", default=False)


@contextmanager
def reference_computation() -> Iterator[None]:
    """Within this block, every component computes as upstream does (zero-padded windows, channels-first maps)."""
    token = _use_reference.set(True)
    try:
        yield
    finally:
        _use_reference.reset(token)


def reference_computation_enabled() -> bool:
    """Whether :func:`reference_computation` is active."""
    return _use_reference.get()
