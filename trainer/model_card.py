"""The README.md of a pushed model or adapter, rendered from the repository's model_card.md."""

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from peft import PeftModel
from torch import nn

from .lora import unwrap

TEMPLATE = Path(__file__).resolve().parent.parent / "model_card.md"


def render_model_card(
    model: nn.Module, repo_id: str, args=None, datasets: list[str] | None = None, license: str = "apache-2.0"
) -> ModelCard:
    """A model card with Hub metadata (library, pipeline tag, base models, tags, license, datasets) and a body
    with the connector, stage, learning rates, data and copy-paste usage; `args` are the training arguments."""
    config = unwrap(model).config
    is_adapter = isinstance(model, PeftModel)
    components = [config.vision_config._name_or_path, config.text_config._name_or_path]
    base_models = [name for name in components if name]
    card_data = ModelCardData(
        library_name="peft" if is_adapter else "transformers",
        pipeline_tag="image-text-to-text",
        base_model=base_models or None,
        tags=["visionbridge", "vision-language", config.connector] + (["lora"] if is_adapter else []),
        license=license,
        datasets=datasets,
    )
    lora = next(iter(model.peft_config.values())) if is_adapter else None
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_repo=config._name_or_path or "<base model repo>",
        is_adapter=is_adapter,
        vision_model=components[0] or "unknown",
        language_model=components[1] or "unknown",
        connector=config.connector,
        image_seq_length=config.image_seq_length,
        stage=args.stage if args else "n/a",
        connector_lr=(args.connector_lr or args.learning_rate) if args else "n/a",
        learning_rate=args.learning_rate if args else "n/a",
        lora=f"{lora.r} / {lora.lora_alpha} / {lora.lora_dropout}" if lora else "none",
        data=", ".join(datasets) if datasets else "not recorded",
    )
