"""VisionBridgeConfig and the connector settings."""

from .configuration_visionbridge import ConnectorConfig, VisionBridgeConfig

__all__ = ["ConnectorConfig", "VisionBridgeConfig"]
