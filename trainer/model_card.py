"""The README.md of a pushed model or adapter, rendered from the repository's model_card.md."""

import re
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from peft import PeftModel
from torch import nn

from .lora import unwrap

TEMPLATE = Path(__file__).resolve().parent.parent / "model_card.md"


def hub_id(name: str | None) -> str | None:
    """`name` if it reads as a Hub repo id ("org/name" or "name") rather than a folder on this machine."""
    if not name or Path(name).exists() or not re.fullmatch(r"([\w.-]+/)?[\w.-]+", name):
        return None
    return name


def _part_rate(frozen: bool, lora: bool, rate: float) -> str:
    return "frozen" if frozen and not lora else f"{rate} ({'LoRA' if lora else 'full'})"


def render_model_card(
    model: nn.Module,
    repo_id: str,
    args=None,
    datasets: list[str] | None = None,
    license: str | None = None,
    tags: list[str] | None = None,
    base_repo: str | None = None,
) -> ModelCard:
    """A model card with Hub metadata (library, pipeline tag, base models, tags, license, datasets) and a body
    with the connector, stage, learning rates, data and copy-paste usage; `args` are the training arguments.
    `base_repo` is the Hub repo of the model an adapter applies to (default: the model's own origin)."""
    config = unwrap(model).config
    is_adapter = isinstance(model, PeftModel)
    components = [config.vision_config._name_or_path, config.text_config._name_or_path]
    # Folders on the training machine mean nothing on the Hub: only repo ids are named as base models.
    base_models = [name for name in map(hub_id, components) if name]
    card_data = ModelCardData(
        library_name="peft" if is_adapter else "transformers",
        pipeline_tag="image-text-to-text",
        base_model=base_models or None,
        tags=["visionbridge", "vision-language", config.connector] + (["lora"] if is_adapter else []) + (tags or []),
        license=license,
        datasets=datasets,
    )
    lora = next(iter(model.peft_config.values())) if is_adapter else None
    if args is None:
        rates = {"stage": "n/a", "connector_lr": "n/a", "llm_lr": "n/a", "vision_lr": "n/a"}
    else:
        rates = {
            "stage": args.stage,
            "connector_lr": args.connector_lr or args.learning_rate,
            "llm_lr": _part_rate(args.freeze_language_model, args.stage == "instruct", args.learning_rate),
            "vision_lr": _part_rate(args.freeze_vision_tower, args.lora_vision, args.vision_lr or args.learning_rate),
        }
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_repo=base_repo or hub_id(config._name_or_path),
        is_adapter=is_adapter,
        vision_model=components[0] or "unknown",
        language_model=components[1] or "unknown",
        connector=config.connector,
        image_seq_length=config.image_seq_length,
        lora=f"{lora.r} / {lora.lora_alpha} / {lora.lora_dropout}" if lora else "none",
        data=", ".join(datasets) if datasets else "not recorded",
        **rates,
    )
