"""BLIP-2's connector: learned queries read the image through transformers' Q-Former, then a linear projection."""

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from ..compat import fan_in_normal_, normal_


class QFormerConnector(nn.Module):
    """`num_query_tokens` learned queries attend to each other and, every `cross_attention_frequency` layers, to
    the vision features (transformers' `Blip2QFormerModel`); `language_projection` maps them to the LLM width.
    Parameter names follow `Blip2ForConditionalGeneration` (query_tokens, qformer, language_projection).

    Settings: `num_query_tokens` (BLIP-2: 32) and `qformer_config` (a `Blip2QFormerConfig` or its dict: hidden
    size, layers, heads, `cross_attention_frequency`; BLIP-2's 768-wide, 12-layer Q-Former by default), whose
    `encoder_hidden_size` is the vision encoder's width.

    forward: vision features [N, P, D_vision] -> LLM tokens [N, num_query_tokens, D_text]
    """

    settings = {"num_query_tokens": 32, "qformer_config": None}
    # Its learning rate from fresh weights (see connectors.py): the Q-Former learned the digits task at 1e-3 beside
    # LoRA at 1e-3, and stalled at 3e-3 (README, Connectors).
    default_lr = 1e-3

    def __init__(self, qformer_config: Blip2QFormerConfig, num_query_tokens: int, text_hidden_size: int):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, qformer_config.hidden_size))
        self.qformer = Blip2QFormerModel(qformer_config)
        self.language_projection = nn.Linear(qformer_config.hidden_size, text_hidden_size)

    @classmethod
    def from_config(cls, config) -> "QFormerConnector":
        settings = config.connector_config
        return cls(settings.qformer_config, settings.num_query_tokens, config.text_config.hidden_size)

    @classmethod
    def complete_settings(cls, settings: dict, config) -> dict:
        count = settings["num_query_tokens"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"The qformer connector's num_query_tokens must be a whole number >= 1, got {count!r}.")
        qformer = settings["qformer_config"]
        width = config.vision_config.hidden_size
        if isinstance(qformer, dict):
            qformer = {key: value for key, value in qformer.items() if key != "model_type"}
            qformer = Blip2QFormerConfig(**{"encoder_hidden_size": width, **qformer})
        elif qformer is None:
            qformer = Blip2QFormerConfig(encoder_hidden_size=width)
        if qformer.encoder_hidden_size != width:
            raise ValueError(
                f"qformer_config.encoder_hidden_size={qformer.encoder_hidden_size} must equal the vision encoder's "
                f"hidden_size={width}."
            )
        return {**settings, "qformer_config": qformer}

    @staticmethod
    def image_tokens(settings: dict, features: int) -> int:
        return settings["num_query_tokens"]

    def init_weights(self, std: float) -> None:
        """Linear layers at fan-in scale: at the model's `std` (0.02) the residual stream of a narrow Q-Former
        drowns the cross-attention, and its output varies between images by 0.2% of its size (at fan-in scale:
        about 25%), which leaves the LLM nothing to learn from but the answer prior. The queries are a bare
        parameter, at `std`: the Q-Former normalises them first."""
        fan_in_normal_(self)
        normal_(self.query_tokens, std=std)

    def query_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """vision features [N, P, D_vision] -> the queries after the Q-Former [N, Q, H_qformer]."""
        queries = self.query_tokens.expand(features.shape[0], -1, -1)  # [N, Q, H_qformer]
        return self.qformer(query_embeds=queries, encoder_hidden_states=features).last_hidden_state

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.language_projection(self.query_outputs(features))  # [N, Q, D_text]
