"""`from_llava` and `to_llava`: between a transformers `LlavaForConditionalGeneration` (the llava-hf format) and a
VisionBridge model with LLaVA's layout (mlp2x_gelu connector, one hidden layer read)."""

from pathlib import Path

import torch
from PIL import Image
from transformers import (
    AutoModelForCausalLM,
    AutoProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
)

from ..compat import no_init_weights
from ..configuration.configuration_visionbridge import VisionBridgeConfig
from ..processing.processing_visionbridge import VisionBridgeProcessor
from .modeling_visionbridge import VisionBridgeForConditionalGeneration

_SELECT = {"default": "patch", "full": "full"}
_CONNECTOR_KEYS = {"linear_1": "0", "linear_2": "2"}


def _causal_lm(base_model: PreTrainedModel, lm_head: torch.nn.Module, text_config) -> PreTrainedModel:
    """Wrap Llava's headless language model and its head in the LM's own *ForCausalLM class, sharing tensors."""
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(text_config)
    setattr(llm, llm.base_model_prefix, base_model)
    llm.set_output_embeddings(lm_head)
    left_on_meta = [name for name, tensor in [*llm.named_parameters(), *llm.named_buffers()] if tensor.is_meta]
    if left_on_meta:
        raise ValueError(f"{type(llm).__name__} holds more than a base model and a head: {left_on_meta}")
    return llm


def _connector_state(projector: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Llava's projector weights under our mlp2x_gelu connector's names (LLaVA's own mm_projector names)."""
    state = projector.state_dict()
    return {_CONNECTOR_KEYS[key.split(".")[0]] + "." + key.split(".")[1]: value for key, value in state.items()}


def _feature_select(config) -> str:
    """Our `vision_feature_select` for a Llava config, after checking that its projector converts."""
    if not isinstance(config.vision_feature_layer, int):
        raise ValueError(f"Only a single vision_feature_layer converts, got {config.vision_feature_layer}.")
    if config.projector_hidden_act != "gelu" or not config.multimodal_projector_bias:
        raise ValueError(
            "Only LLaVA's mlp2x_gelu projector (GELU, with biases) converts, got "
            f"act={config.projector_hidden_act!r}, bias={config.multimodal_projector_bias}."
        )
    return _SELECT[config.vision_feature_select_strategy]


def from_llava(
    path_or_model: str | Path | LlavaForConditionalGeneration, processor=None
) -> tuple[VisionBridgeForConditionalGeneration, VisionBridgeProcessor]:
    """Convert a llava-hf checkpoint (path, Hub id or loaded model). Every weight is carried over, the feature
    layer and select strategy are kept; tokenizer, image processor and chat template come from its processor
    (loaded from the same place unless given)."""
    if isinstance(path_or_model, LlavaForConditionalGeneration):
        llava = path_or_model
    else:
        llava = LlavaForConditionalGeneration.from_pretrained(path_or_model)
    processor = processor or AutoProcessor.from_pretrained(llava.config._name_or_path)
    select = _feature_select(llava.config)
    vision_tower = llava.model.vision_tower
    llm = _causal_lm(llava.model.language_model, llava.lm_head, llava.config.text_config)

    config = VisionBridgeConfig(
        vision_config=vision_tower.config,
        text_config=llm.config,
        connector="mlp2x_gelu",
        vision_feature_layer=llava.config.vision_feature_layer,
        vision_feature_select=select,
        image_token_id=llava.config.image_token_id,
    )
    if select == "patch" and not config.num_prefix_tokens:
        raise ValueError(f"Llava drops a CLS token that {vision_tower.config.model_type} does not have.")
    with no_init_weights():
        model = VisionBridgeForConditionalGeneration(config, vision_tower=vision_tower, language_model=llm)
    projector = llava.model.multi_modal_projector
    model.connector.load_state_dict(_connector_state(projector))
    bridge_processor = VisionBridgeProcessor(
        processor.image_processor,
        processor.tokenizer,
        chat_template=processor.chat_template,
        image_token=processor.image_token,
    )
    return model.eval(), bridge_processor.bind_config(config)


def to_llava(model: VisionBridgeForConditionalGeneration) -> LlavaForConditionalGeneration:
    """The same model as a transformers `LlavaForConditionalGeneration`, every weight copied: for models that
    LLaVA can express (mlp2x_gelu connector, one hidden layer read, the CLS token dropped or kept)."""
    config = model.config
    if config.connector != "mlp2x_gelu" or config.vision_feature_layer is None:
        raise ValueError(
            "Only an mlp2x_gelu connector reading one hidden layer converts to Llava, got "
            f"connector={config.connector!r}, vision_feature_layer={config.vision_feature_layer}."
        )
    strategy = {select: name for name, select in _SELECT.items()}[config.vision_feature_select]
    if strategy == "default" and config.num_prefix_tokens != 1:
        raise ValueError(
            f"Llava drops exactly one CLS token; {config.vision_config.model_type} has {config.num_prefix_tokens}."
        )
    llava_config = LlavaConfig(
        vision_config=config.vision_config.to_dict(),
        text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_id,
        image_seq_length=config.image_seq_length,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    with no_init_weights():
        llava = LlavaForConditionalGeneration(llava_config)
    llm = model.language_model
    llava.model.vision_tower.load_state_dict(model.vision_tower.state_dict())
    llava.model.language_model.load_state_dict(getattr(llm, llm.base_model_prefix).state_dict())
    llava.lm_head.load_state_dict(llm.get_output_embeddings().state_dict())
    names = {number: name for name, number in _CONNECTOR_KEYS.items()}
    llava.model.multi_modal_projector.load_state_dict(
        {
            f"{names[key.split('.')[0]]}.{key.split('.')[1]}": value
            for key, value in model.connector.state_dict().items()
        }
    )
    return llava.to(model.dtype).eval()


def llava_processor(processor: VisionBridgeProcessor, config: VisionBridgeConfig) -> LlavaProcessor:
    """The processor of `to_llava(model)`: the same image processor, tokenizer and chat template as a LlavaProcessor,
    which expands each image token to as many tokens as `config.image_seq_length`. It resizes and crops images as
    the image processor says; VisionBridge pads them to a square first (image_aspect_ratio="pad")."""
    strategy = {select: name for name, select in _SELECT.items()}[config.vision_feature_select]
    llava = LlavaProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        chat_template=processor.chat_template,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=strategy,
        image_token=processor.image_token,
        num_additional_image_tokens=config.num_prefix_tokens,
    )
    side = processor.image_processor(Image.new("RGB", (64, 64)), return_tensors="pt")["pixel_values"].shape[-1]
    expected = (side // config.vision_config.patch_size) ** 2 + config.num_prefix_tokens - (strategy == "default")
    if expected != config.image_seq_length:
        raise ValueError(
            f"LlavaProcessor would expand each image to {expected} tokens on {side} px images, but the model reads "
            f"{config.image_seq_length} image features."
        )
    return llava
