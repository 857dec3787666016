"""VisionBridgeProcessor: images, chat templates, image-token expansion."""

from .processing_visionbridge import DEFAULT_CHAT_TEMPLATE, VisionBridgeProcessor

__all__ = ["DEFAULT_CHAT_TEMPLATE", "VisionBridgeProcessor"]
