"""Config of a tiny GPT-like causal LM that transformers does not know: it loads only as remote code."""

from transformers import PretrainedConfig


class TinyGPTConfig(PretrainedConfig):
    model_type = "tinygpt_remote"
    attribute_map = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head"}

    def __init__(self, vocab_size=400, n_embd=64, n_layer=2, n_head=4, n_positions=512, **kwargs):
        self.vocab_size = vocab_size
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_positions = n_positions
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
