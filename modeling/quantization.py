"""8-bit and 4-bit loading (bitsandbytes) quantizes the language model's body and nothing else by default.

transformers decides what stays unquantized from `llm_int8_skip_modules` alone when it is set, and otherwise from
the output head and tied weights it detects; on a composite model that leaves the vision tower and the connector to
be quantized. A bitsandbytes config that names no skip modules gets the list below instead.
"""

import copy

# Module names as transformers matches them (a prefix up to a dot, or the whole name, on both lines): the vision
# tower, the connector, the image start/end embeddings, and the language model's output head under the names
# causal LMs give it (lm_head: LLaMA, Qwen2, OPT, ...; embed_out: GPT-NeoX; output: InternLM2).
UNQUANTIZED_MODULES = [
    "vision_tower",
    "connector",
    "image_boundary",
    "language_model.lm_head",
    "language_model.embed_out",
    "language_model.output",
]


def with_unquantized_parts(quantization_config):
    """`quantization_config` (a `BitsAndBytesConfig` or its dict) with `llm_int8_skip_modules` set to
    UNQUANTIZED_MODULES where it names none; a copy, so the caller's object stays as it was. Other quantization
    methods, and a skip list the caller chose, pass unchanged."""
    if isinstance(quantization_config, dict):
        is_bnb = quantization_config.get("quant_method", "bitsandbytes") == "bitsandbytes" and any(
            quantization_config.get(key) for key in ("load_in_8bit", "load_in_4bit")
        )
        if is_bnb and quantization_config.get("llm_int8_skip_modules") is None:
            return {**quantization_config, "llm_int8_skip_modules": list(UNQUANTIZED_MODULES)}
        return quantization_config
    if getattr(quantization_config, "quant_method", None) != "bitsandbytes":
        return quantization_config
    if quantization_config.llm_int8_skip_modules is not None:
        return quantization_config
    quantization_config = copy.deepcopy(quantization_config)
    quantization_config.llm_int8_skip_modules = list(UNQUANTIZED_MODULES)
    return quantization_config
