"""visionbridge: a pretrained vision encoder joined to a pretrained causal LM through a selectable connector.

Importing the package registers its classes with the transformers Auto classes, so `trust_remote_code` is only
needed where visionbridge is not installed. The `visionbridge` command is the exception: it parses its arguments
(and answers --help) before torch and transformers load, and registers the classes when a command runs.
"""

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .configuration import VisionBridgeConfig
    from .modeling import (
        VisionBridgeForConditionalGeneration,
        from_blip2,
        from_components,
        from_llava,
        load_mm_projector,
    )
    from .modeling.connectors import CONNECTOR_NAMES, register_connector
    from .processing import VisionBridgeProcessor, draw_boxes, parse_boxes
    from .trainer import VisionBridgeTrainer, VisionBridgeTrainingArguments, load_training_data

__version__ = "0.1.0"

# Each public name and the subpackage it comes from, imported on first use.
_SOURCES = {
    "CONNECTOR_NAMES": "modeling.connectors",
    "register_connector": "modeling.connectors",
    "VisionBridgeConfig": "configuration",
    "VisionBridgeForConditionalGeneration": "modeling",
    "from_blip2": "modeling",
    "from_components": "modeling",
    "from_llava": "modeling",
    "load_mm_projector": "modeling",
    "VisionBridgeProcessor": "processing",
    "draw_boxes": "processing",
    "parse_boxes": "processing",
    "VisionBridgeTrainer": "trainer",
    "VisionBridgeTrainingArguments": "trainer",
    "load_training_data": "trainer",
}


def register_auto_classes() -> None:
    """Register VisionBridgeConfig, the model and the processor with transformers' Auto classes."""
    from transformers import AutoConfig, AutoProcessor

    from .compat import AUTO_MODEL_CLASSES
    from .configuration import VisionBridgeConfig
    from .modeling import VisionBridgeForConditionalGeneration
    from .processing import VisionBridgeProcessor

    AutoConfig.register(VisionBridgeConfig.model_type, VisionBridgeConfig, exist_ok=True)
    for auto_class in AUTO_MODEL_CLASSES:
        auto_class.register(VisionBridgeConfig, VisionBridgeForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(VisionBridgeConfig, VisionBridgeProcessor, exist_ok=True)


def _started_as_the_command() -> bool:
    """Whether this process is the `visionbridge` command: its console script or `python -m visionbridge`."""
    if sys.argv and Path(sys.argv[0]).stem == "visionbridge":
        return True
    argv = sys.orig_argv
    return "-m" in argv[:-1] and argv[argv.index("-m") + 1] == "visionbridge"


def __getattr__(name: str):
    if name in _SOURCES:
        module = importlib.import_module(f".{_SOURCES[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))


if not _started_as_the_command():
    register_auto_classes()

__all__ = [
    "CONNECTOR_NAMES",
    "VisionBridgeConfig",
    "VisionBridgeForConditionalGeneration",
    "VisionBridgeProcessor",
    "VisionBridgeTrainer",
    "VisionBridgeTrainingArguments",
    "draw_boxes",
    "from_blip2",
    "from_components",
    "from_llava",
    "load_mm_projector",
    "load_training_data",
    "parse_boxes",
    "register_auto_classes",
    "register_connector",
]
