"""Base class of every zoo model: a plain ``nn.Module`` with Hugging Face Hub save/load."""

from typing import Any, ClassVar

from huggingface_hub import PyTorchModelHubMixin
from torch import nn

LIBRARY_NAME = "promptable-medseg-zoo"


class PromptableSegmenter(
    nn.Module,
    PyTorchModelHubMixin,
    library_name=LIBRARY_NAME,
    tags=["medical-imaging", "image-segmentation", "promptable-segmentation", "segment-anything"],
    pipeline_tag="image-segmentation",
):
    """A promptable segmentation network built from one config dataclass.

    Subclasses define ``family`` and take ``config`` (a dataclass whose ``family`` field equals the class's)
    as the only constructor argument, so ``config.json`` written by ``save_pretrained`` records the family
    and ``zoo.from_pretrained`` can pick the class.
    """

    family: ClassVar[str]

    def __init__(self, config: Any) -> None:
        super().__init__()
        if getattr(config, "family", self.family) != self.family:
            raise ValueError(f"{type(self).__name__} needs a {self.family!r} config, got family {config.family!r}")
        self.config = config
