"""LLaVA's projectors: `linear` and `mlp{N}x_gelu` map every vision feature to one LLM token."""

import torch
from torch import nn


class MLPConnector(nn.Sequential):
    """`depth` linear layers with GELU between them, as LLaVA's `mm_projector` (same parameter names: 0, 2, ...).

    forward: vision features [N, P, D_vision] -> LLM tokens [N, P, D_text]
    """

    def __init__(self, vision_hidden_size: int, text_hidden_size: int, depth: int):
        layers = [nn.Linear(vision_hidden_size, text_hidden_size)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(text_hidden_size, text_hidden_size)]
        super().__init__(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # The connector may train in fp32 beside a bf16 tower: compute in its own dtype.
        return super().forward(features.to(self[0].weight.dtype))
