"""visionbridge: a pretrained vision encoder joined to a pretrained causal LM through a selectable connector.

Importing the package registers its classes with the transformers Auto classes, so `trust_remote_code` is only
needed where visionbridge is not installed.
"""

from typing import TYPE_CHECKING

from transformers import AutoConfig, AutoProcessor

from .compat import AUTO_MODEL_CLASSES
from .configuration import VisionBridgeConfig
from .modeling import VisionBridgeForConditionalGeneration, from_blip2, from_components, from_llava, load_mm_projector
from .modeling.connectors import CONNECTOR_NAMES, register_connector
from .processing import VisionBridgeProcessor, draw_boxes, parse_boxes

if TYPE_CHECKING:
    from .trainer import VisionBridgeTrainer, VisionBridgeTrainingArguments, load_training_data

AutoConfig.register(VisionBridgeConfig.model_type, VisionBridgeConfig, exist_ok=True)
for auto_class in AUTO_MODEL_CLASSES:
    auto_class.register(VisionBridgeConfig, VisionBridgeForConditionalGeneration, exist_ok=True)
AutoProcessor.register(VisionBridgeConfig, VisionBridgeProcessor, exist_ok=True)

__version__ = "0.1.0"
# The training stack (Trainer, datasets, peft) loads on first use, so that inference imports only the model.
_TRAINING_NAMES = ("VisionBridgeTrainer", "VisionBridgeTrainingArguments", "load_training_data")


def __getattr__(name: str):
    if name in _TRAINING_NAMES:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_TRAINING_NAMES))


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
    "register_connector",
]
