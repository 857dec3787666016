"""Training: VisionBridgeTrainer, its arguments, data formats, collator and callbacks."""

from .arguments import VisionBridgeTrainingArguments
from .callbacks import SampleAnswersCallback
from .collator import VisionBridgeCollator
from .data import load_training_data
from .trainer import VisionBridgeTrainer

__all__ = [
    "SampleAnswersCallback",
    "VisionBridgeCollator",
    "VisionBridgeTrainer",
    "VisionBridgeTrainingArguments",
    "load_training_data",
]
