"""LLaVA's `mm_use_im_start_end`: learned start and end embeddings around each image's placeholders.

The two vectors live in this small module instead of the LLM's embedding matrix: under LoRA that matrix is
frozen, and training two of its rows would mean saving the whole matrix with every adapter. Here they train at
the connector's learning rate and are saved beside it (a peft `modules_to_save` entry of their own).
"""

import torch
from torch import nn


class ImageBoundary(nn.Module):
    """Writes `embeddings[0]` at the image-start positions and `embeddings[1]` at the image-end positions.

    forward: inputs_embeds [B, T, D], start and end masks [B, T] -> inputs_embeds [B, T, D]
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.embeddings = nn.Parameter(torch.zeros(2, hidden_size))  # [2, D]: start, end

    def forward(self, inputs_embeds: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        start_embedding, end_embedding = self.embeddings.to(inputs_embeds.dtype)  # [D] each
        inputs_embeds = torch.where(start.unsqueeze(-1), start_embedding, inputs_embeds)
        return torch.where(end.unsqueeze(-1), end_embedding, inputs_embeds)
