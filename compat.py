"""What differs between the two transformers lines visionbridge supports, 4.57.x and 5.x, in one place.

Every difference the package works around by version is named here, with what each line does; the other modules
read these names instead of testing versions themselves. (Where an object says what it takes, as a language model's
forward names its cache argument, the package asks the object instead.) torch, transformers and the standard
library only: the model, configuration and processor files import this one, so it travels with saved folders as
remote code.
"""

import torch
import transformers
from torch import nn
from transformers import Blip2VisionConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5

# 5.0 removed AutoModelForVision2Seq; AutoModelForImageTextToText (on both lines) replaces it.
AUTO_MODEL_CLASSES = [transformers.AutoModelForImageTextToText]
if not TRANSFORMERS_5:
    AUTO_MODEL_CLASSES.append(transformers.AutoModelForVision2Seq)

# Weight initialisation: 5.x's helpers skip tensors that were loaded from a checkpoint; 4.x initialises before
# loading, so plain torch initialisers do.
if TRANSFORMERS_5:
    from transformers.initialization import copy_, no_init_weights, zeros_
    from transformers.initialization import normal_ as _normal
else:
    from transformers.modeling_utils import no_init_weights

    _normal = nn.init.normal_
    zeros_ = nn.init.zeros_

    def copy_(tensor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return tensor.copy_(other)


def normal_(tensor: torch.Tensor, std: float) -> None:
    _normal(tensor, mean=0.0, std=std)


def fan_in_normal_(module: nn.Module) -> None:
    """Every linear layer in `module`: weights normal(0, 1 / sqrt(fan_in)), biases zero, so that each layer keeps
    the scale of its input (with the helpers above, tensors loaded from a checkpoint are left as they are)."""
    for linear in module.modules():
        if isinstance(linear, nn.Linear):
            normal_(linear.weight, std=linear.in_features**-0.5)
            if linear.bias is not None:
                zeros_(linear.bias)


def config_from_dict(model_type: str, values: dict) -> PretrainedConfig:
    """A sub-config of a model type transformers knows. 4.x does not register BLIP-2's vision config under its
    model type."""
    config_class = Blip2VisionConfig if model_type == Blip2VisionConfig.model_type else CONFIG_MAPPING[model_type]
    return config_class(**values)


def legacy_vision_prefix(vision_tower: nn.Module) -> str | None:
    """Key layout of vision weights: 5.x flattened some vision models (CLIPVisionModel: `vision_model.embeddings`
    became `embeddings`) and reads both layouts, while 4.x and the original checkpoints use the nested one. Returns
    the prefix ("vision_model") a 5.x tower drops, else None (4.x saves and reads the nested layout itself)."""
    if not TRANSFORMERS_5:
        return None
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    for transform in get_checkpoint_conversion_mapping(type(vision_tower).__name__) or []:
        prefix = getattr(transform, "prefix_to_remove", None)
        if prefix and not hasattr(vision_tower, prefix):
            return prefix
    return None


# Gradient checkpointing is reentrant by default on 4.x (`gradient_checkpointing_kwargs`) and not on 5.x (which
# renamed the argument `activation_checkpointing_kwargs`). Reentrant checkpointing drops the gradients of blocks
# whose inputs need no grad, as behind a frozen tower and frozen embeddings.
CHECKPOINTING_IS_REENTRANT_BY_DEFAULT = not TRANSFORMERS_5

# 5.x dropped TrainingArguments.warmup_ratio (a fractional `warmup_steps` replaces it) and overwrite_output_dir.
TRAINING_ARGUMENTS_HAVE_WARMUP_RATIO = not TRANSFORMERS_5
TRAINING_ARGUMENTS_HAVE_OVERWRITE_OUTPUT_DIR = not TRANSFORMERS_5


def groups_by_length(args) -> bool:
    """Whether training arguments ask for length-grouped batches: 4.x's `group_by_length=True`, 5.x's
    `train_sampling_strategy="group_by_length"`."""
    if TRANSFORMERS_5:
        return args.train_sampling_strategy == "group_by_length"
    return args.group_by_length


# 4.x rotates checkpoints in a Trainer method, 5.x in a function of trainer_utils.
TRAINER_ROTATES_IN_A_METHOD = not TRANSFORMERS_5

# 5.x's Trainer has FSDP2 gather the model's top-level weights around `generate` as around forward
# (torch's register_fsdp_forward_method); under 4.x, generate meets them sharded.
TRAINER_GATHERS_FSDP_WEIGHTS_FOR_GENERATE = TRANSFORMERS_5

# A processor names its attributes' classes on 4.x; 5.x infers them from __init__.
PROCESSORS_NAME_ATTRIBUTE_CLASSES = not TRANSFORMERS_5

# 5.x saves a generic fast tokenizer as "TokenizersBackend", a class 4.x lacks; both read this one.
GENERIC_TOKENIZER_CLASS = {"TokenizersBackend": "PreTrainedTokenizerFast"}

# 5.x folds the image processor into processor_config.json; 4.x reads preprocessor_config.json.
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"

# 4.x builds the block-diagonal mask of packed samples for eager/sdpa/flex attention only with torch >= 2.6 (and
# skips it silently below); 5.x needs torch >= 2.6 anyway.
PACKED_MASK_NEEDS_TORCH_2_6 = not TRANSFORMERS_5

__all__ = [
    "AUTO_MODEL_CLASSES",
    "CHECKPOINTING_IS_REENTRANT_BY_DEFAULT",
    "GENERIC_TOKENIZER_CLASS",
    "IMAGE_PROCESSOR_FILE",
    "PACKED_MASK_NEEDS_TORCH_2_6",
    "PROCESSORS_NAME_ATTRIBUTE_CLASSES",
    "TRAINER_GATHERS_FSDP_WEIGHTS_FOR_GENERATE",
    "TRAINER_ROTATES_IN_A_METHOD",
    "TRAINING_ARGUMENTS_HAVE_OVERWRITE_OUTPUT_DIR",
    "TRAINING_ARGUMENTS_HAVE_WARMUP_RATIO",
    "TRANSFORMERS_5",
    "config_from_dict",
    "copy_",
    "fan_in_normal_",
    "groups_by_length",
    "legacy_vision_prefix",
    "no_init_weights",
    "normal_",
    "zeros_",
]
