"""`from_llava`: a transformers `LlavaForConditionalGeneration` (the llava-hf format) as a VisionBridge model."""

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoProcessor, LlavaForConditionalGeneration, PreTrainedModel

from ..configuration.configuration_visionbridge import VisionBridgeConfig
from ..processing.processing_visionbridge import VisionBridgeProcessor
from .init_utils import no_init_weights
from .modeling_visionbridge import VisionBridgeForConditionalGeneration

_SELECT = {"default": "patch", "full": "full"}


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
    model.connector.load_state_dict(
        {
            "0.weight": projector.linear_1.weight,
            "0.bias": projector.linear_1.bias,
            "2.weight": projector.linear_2.weight,
            "2.bias": projector.linear_2.bias,
        }
    )
    bridge_processor = VisionBridgeProcessor(
        processor.image_processor,
        processor.tokenizer,
        chat_template=processor.chat_template,
        image_token=processor.image_token,
    )
    return model.eval(), bridge_processor.bind_config(config)
