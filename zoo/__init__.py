"""Model zoo for promptable medical image segmentation."""

from typing import Any

from zoo.registry import create_model, list_families, list_models

__version__ = "0.1.0"


def from_pretrained(path_or_repo_id: str, **kwargs: Any):
    """Load any zoo model from a Hub-format folder or Hub repo id; ``config.json``'s family picks the class."""
    from zoo.hub.pretrained import from_pretrained as _from_pretrained

    return _from_pretrained(path_or_repo_id, **kwargs)


__all__ = ["create_model", "from_pretrained", "list_families", "list_models", "__version__"]
