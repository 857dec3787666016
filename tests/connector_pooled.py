"""A connector defined outside visionbridge, for the registry test: the patch grid averaged down to a `grid` x `grid`
grid of tokens, then one linear layer. torch only, so that a saved folder carries it as remote code."""

import math

import torch
from torch import nn


class PooledConnector(nn.Module):
    settings = {"grid": 2}
    default_lr = None

    def __init__(self, vision_hidden_size: int, text_hidden_size: int, grid: int):
        super().__init__()
        self.grid = grid
        self.proj = nn.Linear(vision_hidden_size, text_hidden_size)

    @classmethod
    def from_config(cls, config) -> "PooledConnector":
        return cls(config.vision_config.hidden_size, config.text_config.hidden_size, config.connector_config.grid)

    @classmethod
    def complete_settings(cls, settings: dict, config) -> dict:
        if not isinstance(settings["grid"], int) or settings["grid"] < 1:
            raise ValueError(f"grid must be a whole number >= 1, got {settings['grid']!r}.")
        return settings

    @staticmethod
    def image_tokens(settings: dict, features: int) -> int:
        return settings["grid"] ** 2

    def init_weights(self, std: float) -> None:
        nn.init.zeros_(self.proj.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, patches, width = features.shape
        side = math.isqrt(patches)
        square = features.transpose(1, 2).reshape(batch, width, side, side)  # [N, D, side, side]
        pooled = nn.functional.adaptive_avg_pool2d(square, self.grid)  # [N, D, grid, grid]
        return self.proj(pooled.flatten(2).transpose(1, 2))  # [N, grid^2, D_text]
