"""The one error type for unusable checkpoint input."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint (file or state dict) cannot be used; the message names the source and the problem."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")
