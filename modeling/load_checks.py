"""Clear errors for weights that do not belong to the model they are loaded into.

Two ways in: `load_state_dict` (how peft loads an adapter, `PeftModel.from_pretrained(base, adapter)`, and how
the Trainer restores a checkpoint), checked by a pre-hook before any tensor is copied; and `from_pretrained`,
whose loading report is checked for connector weights the folder lacks or that the model has no place for. torch
and stdlib only: this file is copied into saved folders as remote code.
"""

import torch
from torch import nn

# Names that only peft's adapter tensors carry: such a tensor with no place in the model was made for another one.
_ADAPTER_MARKS = ("lora_", ".modules_to_save.")


def _model_sizes(config) -> dict[str, int]:
    """The sizes a foreign checkpoint most often disagrees on, by a name a reader recognises."""
    text, vision = config.text_config, config.vision_config
    sizes = {
        f"the LLM's ({text.model_type}) hidden_size": text.hidden_size,
        f"the LLM's ({text.model_type}) vocab_size": text.vocab_size,
        f"the vision encoder's ({vision.model_type}) hidden_size": vision.hidden_size,
    }
    for name in ("intermediate_size", "ffn_dim"):
        if isinstance(getattr(text, name, None), int):
            sizes[f"the LLM's ({text.model_type}) {name}"] = getattr(text, name)
    return sizes


def _explain(config, mismatched: list[tuple[str, torch.Size, torch.Size]]) -> str:
    """Which of the model's sizes the loaded tensors contradict ("the LLM's (llama) hidden_size: 64 here, 128 in
    the weights"), or the model's sizes when no shape tells."""
    pairs = {
        (mine, theirs)
        for _, model_shape, loaded_shape in mismatched
        if len(model_shape) == len(loaded_shape)
        for mine, theirs in zip(model_shape, loaded_shape, strict=True)
        if mine != theirs
    }
    sizes = _model_sizes(config)
    found = [
        f"{name}: {mine} here, {theirs} in the weights"
        for name, size in sizes.items()
        for mine, theirs in sorted(pairs)
        if size == mine
    ]
    if found:
        return "They disagree on " + "; ".join(found) + "."
    return "This model has " + ", ".join(f"{name} {size}" for name, size in sizes.items()) + "."


def check_loaded_state_dict(
    module: nn.Module, state_dict: dict, prefix: str, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
) -> None:
    """load_state_dict pre-hook of VisionBridgeForConditionalGeneration: refuse, with one message naming the
    sizes that differ, tensors whose shapes differ from the model's, and adapter tensors with no place in it."""
    own = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    mismatched, foreign = [], []
    for key, tensor in state_dict.items():
        if not key.startswith(prefix) or not isinstance(tensor, torch.Tensor):
            continue
        name = key[len(prefix) :]
        if name in own:
            if own[name].shape != tensor.shape:
                mismatched.append((name, own[name].shape, tensor.shape))
        elif any(mark in name for mark in _ADAPTER_MARKS):
            foreign.append(name)
    if not mismatched and not foreign:
        return
    problems = []
    if mismatched:
        examples = ", ".join(
            f"{name} (model {list(mine)}, weights {list(theirs)})" for name, mine, theirs in mismatched[:3]
        )
        problems.append(f"{len(mismatched)} tensors differ in shape, e.g. {examples}")
    if foreign:
        problems.append(f"{len(foreign)} adapter tensors name modules this model does not have, e.g. {foreign[0]}")
    raise ValueError(
        "These weights were made for another base model: "
        + "; ".join(problems)
        + f". {_explain(module.config, mismatched)} Load them onto the base model they were trained on "
        "(an adapter's adapter_config.json names it in base_model_name_or_path)."
    )


def check_connector_loaded(path, loading_info: dict) -> None:
    """After from_pretrained: the folder's connector weights must be exactly the connector's. Missing ones would
    leave a randomly initialised connector, and unexpected ones (a config naming another connector than the one
    the weights were saved from) would be dropped; transformers only warns about both."""
    missing = sorted(key for key in loading_info["missing_keys"] if key.startswith("connector."))
    if missing:
        raise ValueError(
            f"{path} holds no weights for {len(missing)} connector tensors ({_some(missing)}); loading it would use "
            "a randomly initialised connector. Save the model with save_pretrained, or load an original LLaVA "
            "projector with visionbridge's load_mm_projector."
        )
    unexpected = sorted(key for key in loading_info["unexpected_keys"] if key.startswith("connector."))
    if unexpected:
        raise ValueError(
            f"{path} holds {len(unexpected)} connector tensors that its config's connector does not have "
            f"({_some(unexpected)}): the weights were saved from another connector than the config names. Set "
            "`connector` in config.json to the one they were saved from."
        )


def _some(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
