"""Built-in tiny components: a random-weight vision encoder and causal LM with a tokenizer trained on the spot.

Each is written to disk as a normal transformers checkpoint, so it goes through `from_components` exactly as a
real checkpoint from the Hub does. Used by the demo and the tests; nothing is downloaded.
"""

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    CLIPVisionConfig,
    LlamaConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)

# Connector settings at the tiny components' scale (`from_components(..., connector=name, connector_config=...)`):
# a 2-layer Q-Former of width 32 with 8 queries, cross-attending to the image in both layers (with BLIP-2's one
# layer in two, the digits task stayed near 0.89 after both stages), a 3x3 resampler grid with 4 heads.
TINY_CONNECTOR_SETTINGS = {
    "qformer": {
        "num_query_tokens": 8,
        "qformer_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "cross_attention_frequency": 1,
        },
    },
    "resampler": {"num_query_tokens": 9, "num_heads": 4},
}
SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
_CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: What is in this picture? ASSISTANT: A temple by a lake under a blue sky.",
    "USER: Describe the image. ASSISTANT: A red flower with green leaves in the sun.",
    "What digit is this? It is the digit 0 1 2 3 4 5 6 7 8 9 zero one two three four five six seven eight nine.",
    "system user assistant <|im_start|> <|im_end|> a photo of the number",
]


def _image_processor_class(name: str) -> type:
    """The Pillow implementation of an image processor: transformers 5 names it `<name>Pil` (the plain name needs
    torchvision, and falls back with a warning without it); in 4.x the plain name is the Pillow one. Both save
    under the plain name."""
    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def _vision_parts(kind: str, image_size: int):
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    if kind == "clip":
        config = CLIPVisionConfig(image_size=image_size, patch_size=8, **sizes)
        processor = _image_processor_class("CLIPImageProcessor")(
            size={"shortest_edge": image_size}, crop_size=image_size
        )
    elif kind == "siglip":
        config = SiglipVisionConfig(image_size=image_size, patch_size=8, **sizes)
        processor = _image_processor_class("SiglipImageProcessor")(size={"height": image_size, "width": image_size})
    else:
        raise ValueError(f"Unknown tiny vision encoder {kind!r}; choose 'clip' or 'siglip'.")
    return config, processor


def tiny_vision_config(kind: str = "clip", image_size: int = 32):
    """The config of the built-in tiny vision encoder `kind` (`clip` | `siglip`)."""
    return _vision_parts(kind, image_size)[0]


def _language_config(kind: str, vocab_size: int, ids: dict):
    sizes = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    if kind == "llama":
        return LlamaConfig(intermediate_size=128, num_key_value_heads=2, max_position_embeddings=512, **sizes, **ids)
    if kind == "qwen2":
        return Qwen2Config(intermediate_size=128, num_key_value_heads=2, max_position_embeddings=512, **sizes, **ids)
    if kind == "opt":
        return OPTConfig(ffn_dim=128, word_embed_proj_dim=64, max_position_embeddings=512, **sizes, **ids)
    raise ValueError(f"Unknown tiny language model {kind!r}; choose 'llama', 'qwen2' or 'opt'.")


def train_tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few sentences, with <unk>, <s>, </s> and <pad>."""
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def build_tiny_components(
    directory: str | Path, vision: str = "clip", language: str = "llama", image_size: int = 32, seed: int = 0
) -> tuple[str, str]:
    """Write a tiny vision encoder (`clip` | `siglip`) and causal LM (`llama` | `qwen2` | `opt`) with its
    tokenizer under `directory`; returns (vision_path, language_path) for `from_components`."""
    torch.manual_seed(seed)
    directory = Path(directory)
    vision_path, language_path = directory / f"tiny-{vision}", directory / f"tiny-{language}"

    vision_config, image_processor = _vision_parts(vision, image_size)
    AutoModel.from_config(vision_config).save_pretrained(vision_path)
    image_processor.save_pretrained(vision_path)

    tokenizer = train_tiny_tokenizer()
    ids = {
        f"{name}_id": tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[name])
        for name in ("bos_token", "eos_token", "pad_token")
    }
    llm = AutoModelForCausalLM.from_config(_language_config(language, len(tokenizer), ids))
    # At the usual std 0.02, a random head frozen under LoRA bounds the logits to about +-1: too flat to ever
    # state an answer with confidence. A wider head leaves the adapters a language they can learn to speak.
    torch.nn.init.normal_(llm.get_output_embeddings().weight, std=0.1)
    llm.save_pretrained(language_path)
    tokenizer.save_pretrained(language_path)
    return str(vision_path), str(language_path)
