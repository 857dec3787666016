"""Training: VisionBridgeTrainer, its arguments, data formats, collator and callbacks.

Names load on first use, so that `visionbridge.trainer.options` is read without loading the Trainer.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .arguments import VisionBridgeTrainingArguments
    from .callbacks import SampleAnswersCallback
    from .collator import VisionBridgeCollator
    from .data import load_training_data
    from .trainer import VisionBridgeTrainer

_SOURCES = {
    "SampleAnswersCallback": "callbacks",
    "VisionBridgeCollator": "collator",
    "VisionBridgeTrainer": "trainer",
    "VisionBridgeTrainingArguments": "arguments",
    "load_training_data": "data",
}


def __getattr__(name: str):
    if name in _SOURCES:
        return getattr(importlib.import_module(f".{_SOURCES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))


__all__ = [
    "SampleAnswersCallback",
    "VisionBridgeCollator",
    "VisionBridgeTrainer",
    "VisionBridgeTrainingArguments",
    "load_training_data",
]
