"""VisionBridgeForConditionalGeneration, the connectors, the builders and checkpoint conversion."""

from .convert_blip2 import from_blip2
from .convert_llava import from_llava, to_llava
from .from_components import from_components
from .mm_projector import load_mm_projector
from .modeling_visionbridge import VisionBridgeForConditionalGeneration

__all__ = [
    "VisionBridgeForConditionalGeneration",
    "from_blip2",
    "from_components",
    "from_llava",
    "load_mm_projector",
    "to_llava",
]
