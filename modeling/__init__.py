"""VisionBridgeForConditionalGeneration, the connectors and the builders."""

from .from_components import from_components
from .modeling_visionbridge import VisionBridgeForConditionalGeneration

__all__ = ["VisionBridgeForConditionalGeneration", "from_components"]
