"""VisionBridgeProcessor: images, chat templates, image-token expansion, grounding boxes."""

from .grounding import Box, draw_boxes, format_box, parse_boxes
from .processing_visionbridge import DEFAULT_CHAT_TEMPLATE, VisionBridgeProcessor

__all__ = ["DEFAULT_CHAT_TEMPLATE", "Box", "VisionBridgeProcessor", "draw_boxes", "format_box", "parse_boxes"]
