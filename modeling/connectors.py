"""The connector registry: one name (see `CONNECTOR_NAMES` in the config) builds one module.

Every connector maps vision features [N, P, D_vision] to LLM tokens [N, config.image_seq_length, D_text].
"""

from torch import nn

from ..configuration.configuration_visionbridge import VisionBridgeConfig, mlp_depth
from .connector_mlp import MLPConnector


def build_connector(config: VisionBridgeConfig) -> nn.Module:
    vision_size, text_size = config.vision_config.hidden_size, config.text_config.hidden_size
    if config.connector == "linear":
        return MLPConnector(vision_size, text_size, depth=1)
    if (depth := mlp_depth(config.connector)) is not None:
        return MLPConnector(vision_size, text_size, depth=depth)
    raise ValueError(f"Connector {config.connector!r} has no implementation in this version of visionbridge.")
