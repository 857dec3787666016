"""VisionBridgeConfig and the connector settings."""

from .configuration_visionbridge import CONNECTOR_NAMES, VisionBridgeConfig

__all__ = ["CONNECTOR_NAMES", "VisionBridgeConfig"]
