"""`from_blip2`: a transformers `Blip2ForConditionalGeneration` with a decoder-only LM as a VisionBridge model."""

from pathlib import Path

from transformers import AutoProcessor, Blip2ForConditionalGeneration

from ..compat import no_init_weights
from ..configuration.configuration_visionbridge import VisionBridgeConfig
from ..processing.processing_visionbridge import VisionBridgeProcessor
from .modeling_visionbridge import VisionBridgeForConditionalGeneration


def from_blip2(
    path_or_model: str | Path | Blip2ForConditionalGeneration, processor=None
) -> tuple[VisionBridgeForConditionalGeneration, VisionBridgeProcessor]:
    """Convert a BLIP-2 checkpoint (path, Hub id or loaded model) whose LM is decoder-only (OPT): the vision
    model, query tokens, Q-Former, language projection and LM are carried over unchanged; the image features are
    the vision model's own output, CLS included, as BLIP-2 reads them."""
    if isinstance(path_or_model, Blip2ForConditionalGeneration):
        blip2 = path_or_model
    else:
        blip2 = Blip2ForConditionalGeneration.from_pretrained(path_or_model)
    if not blip2.config.use_decoder_only_language_model:
        raise ValueError(
            f"This BLIP-2 checkpoint's language model is {blip2.config.text_config.model_type} (encoder-decoder); "
            "visionbridge supports only decoder-only (causal) language models such as OPT."
        )
    processor = processor or AutoProcessor.from_pretrained(blip2.config._name_or_path)
    config = VisionBridgeConfig(
        vision_config=blip2.vision_model.config,
        text_config=blip2.language_model.config,
        connector="qformer",
        num_query_tokens=blip2.config.num_query_tokens,
        qformer_config=blip2.qformer.config,
        vision_feature_layer=None,
        vision_feature_select="full",
        image_token_id=blip2.config.image_token_id,
        image_aspect_ratio="resize",
    )
    with no_init_weights():
        model = VisionBridgeForConditionalGeneration(
            config, vision_tower=blip2.vision_model, language_model=blip2.language_model
        )
    model.connector.query_tokens = blip2.query_tokens
    model.connector.qformer = blip2.qformer
    model.connector.language_projection = blip2.language_projection
    bridge_processor = VisionBridgeProcessor(processor.image_processor, processor.tokenizer, image_token="<image>")
    return model.eval(), bridge_processor.bind_config(config)
