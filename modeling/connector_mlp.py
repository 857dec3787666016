"""LLaVA's projectors: `linear` and `mlp{N}x_gelu` map every vision feature to one LLM token."""

import re

from torch import nn

_NAME = re.compile(r"^(?:linear|mlp(\d+)x_gelu)$")


class MLPConnector(nn.Sequential):
    """`depth` linear layers with GELU between them, as LLaVA's `mm_projector` (same parameter names: 0, 2, ...);
    `linear` is depth 1, `mlp{N}x_gelu` depth N.

    forward: vision features [N, P, D_vision] -> LLM tokens [N, P, D_text]
    """

    settings: dict = {}  # the depth is in the connector's name
    default_lr = None  # without a connector_lr, the connector trains at learning_rate

    def __init__(self, vision_hidden_size: int, text_hidden_size: int, depth: int):
        layers = [nn.Linear(vision_hidden_size, text_hidden_size)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(text_hidden_size, text_hidden_size)]
        super().__init__(*layers)

    @staticmethod
    def depth(name: str) -> int | None:
        """Linear layers of the connector called `name` (`linear`: 1, `mlp{N}x_gelu`: N), None for other names."""
        match = _NAME.match(name)
        return None if match is None else int(match.group(1) or 1)

    @classmethod
    def from_config(cls, config) -> "MLPConnector":
        depth = cls.depth(config.connector)
        return cls(config.vision_config.hidden_size, config.text_config.hidden_size, depth)

    @classmethod
    def complete_settings(cls, settings: dict, config) -> dict:
        if cls.depth(config.connector) in (None, 0):
            raise ValueError(f"{config.connector!r} names no MLP: use 'linear' or 'mlp{{N}}x_gelu' with N >= 1.")
        return settings

    @staticmethod
    def image_tokens(settings: dict, features: int) -> int:
        return features  # one per vision feature

    def init_weights(self, std: float) -> None:
        """Nothing beyond the model's initialisation of linear layers (normal weights of `std`, zero biases)."""
