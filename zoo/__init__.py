"""Model zoo for promptable medical image segmentation."""

from typing import Any

__version__ = "0.1.0"

# Imported on first use, so that the torch-free parts (zoo.geometry's numpy modules, zoo.io, zoo.deploy's ONNX
# runtime) import without torch.
_REGISTRY_NAMES = ("create_model", "list_families", "list_models")


def __getattr__(name: str) -> Any:
    if name in _REGISTRY_NAMES:
        from zoo import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def from_pretrained(path_or_repo_id: str, **kwargs: Any):
    """Load any zoo model from a Hub-format folder or Hub repo id; ``config.json``'s family picks the class."""
    from zoo.hub.pretrained import from_pretrained as _from_pretrained

    return _from_pretrained(path_or_repo_id, **kwargs)


__all__ = ["create_model", "from_pretrained", "list_families", "list_models", "__version__"]
