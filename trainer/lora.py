"""Which parts of a VisionBridge model train, and LoRA adapters confined to the parts that should carry them."""

import re

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from ..modeling.modeling_visionbridge import VisionBridgeForConditionalGeneration
from ..modeling.vision_features import encoder_blocks
from .arguments import VisionBridgeTrainingArguments

PARTS = ("connector", "language_model", "vision_tower")
# Modules that train, and are saved, as part of the connector: the image start/end embeddings.
CONNECTOR_EXTRAS = ("image_boundary",)
# What trains in stage="qformer_pretrain": the Q-Former's queries and layers.
QFORMER_PRETRAIN_TRAINS = ("connector.query_tokens", "connector.qformer.")


def unwrap(model: nn.Module) -> VisionBridgeForConditionalGeneration:
    """The VisionBridge model inside a PeftModel (or the model itself)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def part_of(parameter_name: str) -> str:
    """connector | language_model | vision_tower for a parameter name, with or without peft's prefixes."""
    for part in (*PARTS, *CONNECTOR_EXTRAS):
        if re.search(rf"(^|\.){part}\.", parameter_name):
            return "connector" if part in CONNECTOR_EXTRAS else part
    raise ValueError(f"Parameter {parameter_name} belongs to no part of a VisionBridge model ({', '.join(PARTS)}).")


def _linear_leaf_names(module: nn.Module, skip: nn.Module | None) -> list[str]:
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, child in module.named_modules()
            if isinstance(child, nn.Linear) and child is not skip
        }
    )


def unused_vision_modules(model: VisionBridgeForConditionalGeneration) -> list[str]:
    """Modules of the vision tower whose output never reaches the features: with a hidden layer read
    (LLaVA's -2), the encoder blocks after it, the final norm and the pooling head. They stay frozen."""
    layer, found = model.config.vision_feature_layer, encoder_blocks(model.vision_tower)
    if layer is None or found is None:
        return []
    name, blocks = found
    used = layer % (len(blocks) + 1)  # hidden_states[i] is the output after i blocks (index 0: the embeddings)
    unused = [f"{name}.{index}" for index in range(used, len(blocks))]
    unused += [
        name for name, _ in model.vision_tower.named_modules() if name.rsplit(".", 1)[-1] in ("post_layernorm", "head")
    ]
    return [f"vision_tower.{name}" for name in unused]


def lora_config(model: VisionBridgeForConditionalGeneration, args: VisionBridgeTrainingArguments) -> LoraConfig:
    """LoRA on the LLM's linear layers (all but the head, unless `lora_target_modules` names them) and, with
    `lora_vision`, on the vision tower's; the connector trains fully and is saved with the adapter."""
    parts = (["language_model"] if args.stage == "instruct" else []) + (["vision_tower"] if args.lora_vision else [])
    if args.lora_target_modules:
        names = [name.strip() for name in re.split(r"[,|]", args.lora_target_modules) if name.strip()]
    else:
        names = []
        if "language_model" in parts:
            names += _linear_leaf_names(model.language_model, model.language_model.get_output_embeddings())
        if "vision_tower" in parts:
            names += _linear_leaf_names(model.vision_tower, None)
    # A regex over full module names: suffix patterns such as q_proj must not reach other parts.
    target = rf"^({'|'.join(parts)})\..*\.({'|'.join(sorted(set(map(re.escape, names))))})$"
    unused = unused_vision_modules(model)
    return LoraConfig(
        exclude_modules=rf"^({'|'.join(map(re.escape, unused))})(\..*)?$" if unused else None,
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=target,
        modules_to_save=["connector", *(name for name in CONNECTOR_EXTRAS if getattr(model, name, None) is not None)],
        task_type="CAUSAL_LM",
    )


def prepare_model(model: nn.Module, args: VisionBridgeTrainingArguments) -> nn.Module:
    """Add LoRA where the arguments ask for it (once), then set which weights train: LoRA always, the
    connector always (peft trains its copy in `modules_to_save`), LLM and tower unless frozen. An adapter loaded
    with `is_trainable=False` comes back frozen, and trains again."""
    if args.uses_lora and not isinstance(model, PeftModel):
        model = get_peft_model(unwrap(model), lora_config(unwrap(model), args))
    trains = {"language_model": not args.freeze_language_model, "vision_tower": not args.freeze_vision_tower}
    unused = tuple(f"{name}." for name in unused_vision_modules(unwrap(model)))
    for name, parameter in model.named_parameters():
        part = part_of(name)
        if part == "vision_tower" and _under(name, unused):
            parameter.requires_grad_(False)
        elif args.stage == "qformer_pretrain":  # BLIP-2's first stage reaches neither the LLM nor its projection
            parameter.requires_grad_(_under(name, QFORMER_PRETRAIN_TRAINS))
        elif "lora_" in name or ".modules_to_save." in name:
            parameter.requires_grad_(True)
        elif part in trains:
            parameter.requires_grad_(trains[part])
        elif not isinstance(model, PeftModel):
            parameter.requires_grad_(True)
    check_adapters(model, args)
    return model


def _under(parameter_name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether a (possibly peft-prefixed) parameter name lies under one of the module prefixes."""
    return any(f".{prefix}" in f".{parameter_name}" for prefix in prefixes)


def check_adapters(model: nn.Module, args: VisionBridgeTrainingArguments) -> None:
    """Adapters may sit only where the arguments put them: never in the connector, in the tower only with
    lora_vision, in the LLM only in the instruct stage."""
    allowed = ({"language_model"} if args.stage == "instruct" else set()) | (
        {"vision_tower"} if args.lora_vision else set()
    )
    misplaced = sorted(
        {name for name, _ in model.named_parameters() if "lora_" in name and part_of(name) not in allowed}
    )
    if misplaced:
        raise ValueError(
            f"LoRA adapters sit in parts that this stage ({args.stage}, lora_vision={args.lora_vision}) keeps "
            f"frozen: {misplaced[:5]}{' ...' if len(misplaced) > 5 else ''}"
        )
