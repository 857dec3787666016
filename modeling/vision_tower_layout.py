"""Which prefix a vision tower's weights had before transformers 5 flattened the model class."""

from torch import nn


def legacy_vision_prefix(vision_tower: nn.Module) -> str | None:
    """`"vision_model"` for a transformers-5 CLIP/SigLIP vision model that 4.x nests under it, else None."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    except ImportError:  # transformers 4.x saves and reads the nested layout itself
        return None
    transforms = get_checkpoint_conversion_mapping(type(vision_tower).__name__) or []
    for transform in transforms:
        prefix = getattr(transform, "prefix_to_remove", None)
        if prefix and not hasattr(vision_tower, prefix):
            return prefix
    return None
