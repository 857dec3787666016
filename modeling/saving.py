"""Saving a VisionBridge model folder: weights under the key layout both transformers lines read, the config,
and the flat remote code that loads them with only transformers and torch, written whole or not at all.

This is package code only: the model's `save_pretrained` calls it where visionbridge is installed; a folder's
remote code never runs it.
"""

from pathlib import Path

from transformers import PreTrainedModel

from ..compat import legacy_vision_prefix
from .atomic_save import staged_folder
from .connectors import is_built_in
from .hub_upload import pop_hub_kwargs, push_folder
from .remote_code import AUTO_MAP, connector_sources, language_model_sources, write_remote_code

# Files of an earlier model or adapter save that a new one into the same folder replaces, or removes where it does
# not write them (a model saved over an adapter, or the reverse, or fewer shards than before): a folder never holds
# one save's weights beside another's, which from_pretrained would load together.
MODEL_FILES = (
    "config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "adapter_config.json",
    "adapter_model*.safetensors",
    "adapter_model.bin",
)


def save_model(model, save_directory, *args, state_dict: dict | None = None, push_to_hub: bool = False, **kwargs):
    """`model.save_pretrained`: weights, config and remote code into `save_directory` through a staging folder;
    with push_to_hub, the complete folder is uploaded in one commit (hub arguments as in transformers)."""
    hub_kwargs = pop_hub_kwargs(kwargs)
    config = model.config
    config.auto_map = dict(AUTO_MAP)
    config.architectures = [type(model).__name__]
    language_model_code, language_model_auto_map = language_model_sources(model.language_model)
    if language_model_auto_map:  # the LLM's own code travels in the folder, and its config points at it there
        config.text_config.auto_map = language_model_auto_map
    connector_code, shipped = connector_sources(config.connector_class, is_built_in(config.connector))
    config.connector_config.shipped_class = shipped
    with staged_folder(save_directory, stale=MODEL_FILES) as staging:
        state_dict = canonical_state_dict(model, state_dict)
        PreTrainedModel.save_pretrained(model, staging, *args, state_dict=state_dict, **kwargs)
        write_remote_code([type(model), type(config)], staging)
        for name, text in {**language_model_code, **connector_code}.items():
            if Path(staging, name).exists() and Path(staging, name).read_text() != text:
                raise ValueError(f"The code saved with the model holds two different files named {name}.")
            Path(staging, name).write_text(text)
    if push_to_hub:
        push_folder(save_directory, **hub_kwargs)


def canonical_state_dict(model, state_dict: dict | None = None) -> dict:
    """The model's state dict under the key layout every transformers line loads (see compat.legacy_vision_prefix;
    original checkpoints use it too)."""
    state_dict = model.state_dict() if state_dict is None else state_dict
    prefix = legacy_vision_prefix(model.vision_tower)
    if prefix is None:
        return state_dict
    flat, nested = "vision_tower.", f"vision_tower.{prefix}."
    return {
        nested + key[len(flat) :] if key.startswith(flat) and not key.startswith(nested) else key: value
        for key, value in state_dict.items()
    }
