"""`from_components`: a VisionBridge model and processor from a pretrained vision encoder and a pretrained causal LM."""

import torch
from PIL import Image
from tokenizers import AddedToken
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer

from ..compat import no_init_weights
from ..configuration.configuration_visionbridge import VisionBridgeConfig
from ..processing.processing_visionbridge import VisionBridgeProcessor
from .modeling_visionbridge import VisionBridgeForConditionalGeneration


def _grow_embeddings(llm, size: int) -> None:
    """Resize the LM's embeddings (and untied head) to `size` rows, the new ones at the mean of the old ones, as
    LLaVA starts the tokens it adds (transformers' mean_resizing samples around that mean, and warns each time)."""
    old = llm.get_input_embeddings().num_embeddings
    llm.resize_token_embeddings(size, mean_resizing=False)
    weights = [llm.get_input_embeddings().weight]
    head = llm.get_output_embeddings()
    if head is not None and head.weight is not weights[0]:
        weights.append(head.weight)
    with torch.no_grad():
        for weight in weights:
            weight[old:] = weight[:old].mean(dim=0)  # [size - old, D]


def from_components(
    vision_model: str,
    language_model: str,
    connector: str = "mlp2x_gelu",
    *,
    dtype=None,
    torch_dtype=None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    quantization_config=None,
    image_token: str = "<image>",
    image_start_token: str = "<im_start>",
    image_end_token: str = "<im_end>",
    **config_kwargs,
) -> tuple[VisionBridgeForConditionalGeneration, VisionBridgeProcessor]:
    """Join a vision encoder checkpoint (a CLIP/SigLIP vision or full dual-encoder checkpoint, hub id or path)
    and a causal LM checkpoint with a new `connector`. Both keep their pretrained weights; the tokenizer gains
    the image token and the LM's embeddings grow to match. `config_kwargs` go to `VisionBridgeConfig`; with
    `mm_use_im_start_end=True` the tokenizer also gains `image_start_token` and `image_end_token`. A
    `quantization_config` (bitsandbytes 8/4-bit) applies to the language model alone, whose head transformers keeps
    unquantized; the vision tower and the new connector stay in full precision."""
    load_kwargs = {"dtype": dtype if dtype is not None else torch_dtype}
    if attn_implementation is not None:
        load_kwargs["attn_implementation"] = attn_implementation
    vision_config = AutoConfig.from_pretrained(vision_model)
    # A full CLIP/SigLIP checkpoint holds a text tower too; only its vision half is used.
    vision_config = getattr(vision_config, "vision_config", vision_config)
    vision_tower = AutoModel.from_pretrained(vision_model, config=vision_config, **load_kwargs)
    llm = AutoModelForCausalLM.from_pretrained(
        language_model, trust_remote_code=trust_remote_code, quantization_config=quantization_config, **load_kwargs
    )

    tokenizer = AutoTokenizer.from_pretrained(language_model, trust_remote_code=trust_remote_code)
    boundary = [image_start_token, image_end_token] if config_kwargs.get("mm_use_im_start_end") else []
    for token in [image_token, *boundary]:
        if token not in tokenizer.get_vocab():
            tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
    if boundary:
        config_kwargs["image_start_token_id"], config_kwargs["image_end_token_id"] = map(
            tokenizer.convert_tokens_to_ids, boundary
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        _grow_embeddings(llm, len(tokenizer))

    image_processor = AutoImageProcessor.from_pretrained(vision_model)
    config = VisionBridgeConfig(
        vision_config=vision_tower.config,
        text_config=llm.config,
        connector=connector,
        image_token_id=tokenizer.convert_tokens_to_ids(image_token),
        **config_kwargs,
    )
    # Some checkpoints' processors feed another resolution than the encoder config states (DINOv2: 224 vs 518);
    # the placeholder count follows the pixels the model will actually see.
    side = image_processor(Image.new("RGB", (64, 64)), return_tensors="pt")["pixel_values"].shape[-1]
    if "image_seq_length" not in config_kwargs:
        config.image_seq_length = config.image_tokens_at(side)
    elif config.image_seq_length != config.image_tokens_at(side):
        raise ValueError(
            f"image_seq_length={config.image_seq_length} does not match the image processor's {side} px images, "
            f"which give {config.image_tokens_at(side)} image tokens with the {connector} connector; "
            "leave image_seq_length unset to derive it."
        )
    # Building the composite must not re-initialise the pretrained parts; only the new connector is initialised.
    with no_init_weights():
        model = VisionBridgeForConditionalGeneration(config, vision_tower=vision_tower, language_model=llm)
    model.connector.apply(model._init_weights)
    if model.image_boundary is not None:
        model.image_boundary.apply(model._init_weights)
    processor = VisionBridgeProcessor(
        image_processor, tokenizer, chat_template=tokenizer.chat_template, image_token=image_token
    )
    return model, processor.bind_config(config)
