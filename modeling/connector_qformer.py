"""BLIP-2's connector: learned queries read the image through transformers' Q-Former, then a linear projection."""

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel


class QFormerConnector(nn.Module):
    """`num_query_tokens` learned queries attend to each other and, every `cross_attention_frequency` layers, to
    the vision features (transformers' `Blip2QFormerModel`); `language_projection` maps them to the LLM width.
    Parameter names follow `Blip2ForConditionalGeneration` (query_tokens, qformer, language_projection).

    forward: vision features [N, P, D_vision] -> LLM tokens [N, num_query_tokens, D_text]
    """

    def __init__(self, qformer_config: Blip2QFormerConfig, num_query_tokens: int, text_hidden_size: int):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, qformer_config.hidden_size))
        self.qformer = Blip2QFormerModel(qformer_config)
        self.language_projection = nn.Linear(qformer_config.hidden_size, text_hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = features.to(self.query_tokens.dtype)  # may train in fp32 beside a bf16 tower
        queries = self.query_tokens.expand(features.shape[0], -1, -1)  # [N, Q, H_qformer]
        outputs = self.qformer(query_embeds=queries, encoder_hidden_states=features)  # every feature is attended
        return self.language_projection(outputs.last_hidden_state)  # [N, Q, D_text]
