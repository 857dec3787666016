"""Saving a VisionBridge processor folder that both transformers lines load, with the flat remote code, written
whole or not at all.

This is package code only: the processor's `save_pretrained` calls it where visionbridge is installed; a folder's
remote code never runs it.
"""

import json
from pathlib import Path

from transformers import ProcessorMixin

from ..compat import GENERIC_TOKENIZER_CLASS, IMAGE_PROCESSOR_FILE
from ..modeling.atomic_save import staged_folder
from ..modeling.hub_upload import pop_hub_kwargs, push_folder
from ..modeling.remote_code import AUTO_MAP, write_remote_code


def save_processor(processor, save_directory, *args, push_to_hub: bool = False, **kwargs) -> list[str]:
    """`processor.save_pretrained`: its files and remote code into `save_directory` through a staging folder
    swapped in once complete (see atomic_save.py); with push_to_hub, the complete folder is uploaded in one
    commit."""
    hub_kwargs = pop_hub_kwargs(kwargs)
    with staged_folder(save_directory) as directory:
        written = ProcessorMixin.save_pretrained(processor, directory, *args, **kwargs)
        if not (directory / IMAGE_PROCESSOR_FILE).exists():
            processor.image_processor.save_pretrained(directory)
        binding = {
            "image_seq_length": processor.image_seq_length,
            "image_aspect_ratio": processor.image_aspect_ratio,
            "image_start_token": processor.image_start_token,
            "image_end_token": processor.image_end_token,
        }
        _rewrite_json(
            directory / "processor_config.json", lambda data: {**_processor_config(processor, data), **binding}
        )
        _rewrite_json(directory / "tokenizer_config.json", _tokenizer_config)
        write_remote_code([type(processor)], directory)
    if push_to_hub:
        push_folder(save_directory, **hub_kwargs)
    return [str(Path(save_directory, Path(path).name)) for path in written]


def _rewrite_json(path: Path, edit) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(edit(data), indent=2, sort_keys=True) + "\n")


def _processor_config(processor, data: dict) -> dict:
    data = {key: value for key, value in data.items() if key not in processor.attributes}
    data["processor_class"] = type(processor).__name__
    data["auto_map"] = {"AutoProcessor": AUTO_MAP["AutoProcessor"]}
    return data


def _tokenizer_config(data: dict) -> dict:
    if data.get("tokenizer_class") in GENERIC_TOKENIZER_CLASS:
        data["tokenizer_class"] = GENERIC_TOKENIZER_CLASS[data["tokenizer_class"]]
    return data
