"""The error types every layer raises for bad input: each names what was wrong and where it came from.

They are ``ValueError`` subclasses, so callers that catch ``ValueError`` keep working; the command line prints
their message alone (no traceback) and exits non-zero.
"""

from __future__ import annotations

from os import PathLike


class DataError(ValueError):
    """Bad input data: unreadable or truncated files, mismatched grids, NaN/inf, wrong channels, bad labels.

    The message starts with the file path, e.g. ``"labelsTr/case_01.nii.gz: label values [7] are not in
    dataset.json"``; ``paths`` holds every file involved.
    """

    def __init__(self, paths: str | PathLike[str] | list[str | PathLike[str]], problem: str) -> None:
        self.paths = [str(p) for p in (paths if isinstance(paths, list) else [paths])]
        self.problem = problem
        super().__init__(f"{' vs '.join(self.paths)}: {problem}")


class CheckpointError(ValueError):
    """A checkpoint (file or state dict) cannot be used; the message names the source and the problem."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class PromptError(ValueError):
    """A prompt a model cannot take: outside the image, wrong shape, a kind the model does not support.

    ``source`` says where the prompt came from (a file and object, or ``"prompt"`` for Python arguments).
    """

    def __init__(self, problem: str, source: str | None = None) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}" if source else problem)
