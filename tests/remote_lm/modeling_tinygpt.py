"""A tiny GPT-like causal LM with Qwen-style module names (attn.c_attn, mlp.w1, mlp.w2), as remote code."""

import torch
from torch import nn
from torch.nn import functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_tinygpt import TinyGPTConfig


class TinyGPTBlock(nn.Module):
    def __init__(self, config: TinyGPTConfig, index: int):
        super().__init__()
        self.index, self.heads = index, config.n_head
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.attn.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Module()
        self.mlp.w1 = nn.Linear(config.n_embd, 2 * config.n_embd, bias=False)
        self.mlp.w2 = nn.Linear(config.n_embd, 2 * config.n_embd, bias=False)
        self.mlp.c_proj = nn.Linear(2 * config.n_embd, config.n_embd, bias=False)

    def forward(self, hidden, mask, cache):
        batch, length, width = hidden.shape
        query, key, value = self.attn.c_attn(self.ln_1(hidden)).split(width, dim=-1)
        query, key, value = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (query, key, value))
        if cache is not None:
            key, value = cache.update(key, value, self.index)
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        hidden = hidden + self.attn.c_proj(attended.transpose(1, 2).reshape(batch, length, width))
        normed = self.ln_2(hidden)
        return hidden + self.mlp.c_proj(self.mlp.w1(normed) * F.silu(self.mlp.w2(normed)))


class TinyGPTModel(PreTrainedModel):
    """The body: embeddings, blocks and the final norm (InternLM2 keeps its own the same way, apart from its head)."""

    config_class = TinyGPTConfig

    def __init__(self, config: TinyGPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(TinyGPTBlock(config, index) for index in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)

    def forward(
        self, inputs_embeds, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None, **kwargs
    ):
        batch, length, _ = inputs_embeds.shape
        if use_cache and not isinstance(past_key_values, Cache):
            past_key_values = DynamicCache()
        past = past_key_values.get_seq_length() if isinstance(past_key_values, Cache) else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + length, device=inputs_embeds.device).expand(batch, -1)
        hidden = inputs_embeds + self.wpe(position_ids)
        total = past + length
        mask = torch.ones(length, total, dtype=torch.bool, device=hidden.device).tril(past)[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask[:, None, None, :total].bool()
        # A padding query still attends to itself, so that no row of the softmax is empty.
        positions = torch.arange(total, device=hidden.device)
        mask = mask | (positions[None, :] == positions[past:, None])[None, None]
        for block in self.h:
            hidden = block(hidden, mask, past_key_values)
        return BaseModelOutputWithPast(last_hidden_state=self.ln_f(hidden), past_key_values=past_key_values)


class TinyGPTForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = TinyGPTConfig
    base_model_prefix = "transformer"
    _supports_cache_class = True

    def __init__(self, config: TinyGPTConfig):
        super().__init__(config)
        self.transformer = TinyGPTModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.1)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.transformer.wte

    def set_input_embeddings(self, value):
        self.transformer.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        **kwargs,
    ):
        if inputs_embeds is None:
            inputs_embeds = self.transformer.wte(input_ids)
        outputs = self.transformer(inputs_embeds, attention_mask, position_ids, past_key_values, use_cache)
        logits = self.lm_head(outputs.last_hidden_state)
        loss = None
        if labels is not None:  # its own loss: the mean over labelled tokens, computed here
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values)
