"""Building a vision tower from its config, and the key layout its weights are saved under."""

from torch import nn
from transformers import AutoModel, Blip2VisionConfig, Blip2VisionModel, PretrainedConfig, PreTrainedModel


def vision_tower_from_config(config: PretrainedConfig) -> PreTrainedModel:
    """A randomly initialised encoder for `config`; BLIP-2's vision config is not in AutoModel's mapping."""
    if isinstance(config, Blip2VisionConfig):
        return Blip2VisionModel._from_config(config)
    return AutoModel.from_config(config)


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
