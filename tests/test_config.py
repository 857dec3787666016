import pytest
from transformers import AutoConfig, CLIPVisionConfig, LlamaConfig, OPTConfig, SiglipVisionConfig

from visionbridge import CONNECTOR_NAMES, VisionBridgeConfig

CLIP = CLIPVisionConfig(image_size=224, patch_size=14, hidden_size=64, num_attention_heads=4)
SIGLIP = SiglipVisionConfig(image_size=224, patch_size=14, hidden_size=64, num_attention_heads=4)


@pytest.mark.parametrize(
    ("vision", "connector", "select", "expected"),
    [
        (CLIP, "mlp2x_gelu", "patch", 256),  # 16x16 patches, CLS dropped
        (CLIP, "linear", "full", 257),  # CLS kept
        (SIGLIP, "mlp2x_gelu", "patch", 256),  # SigLIP has no CLS to drop
        (SIGLIP, "mlp3x_gelu", "full", 256),
        (CLIP, "qformer", "patch", 32),
        (CLIP, "resampler", "patch", 256),
    ],
)
def test_image_seq_length_is_derived_from_encoder_and_connector(vision, connector, select, expected):
    config = VisionBridgeConfig(vision, LlamaConfig(), connector=connector, vision_feature_select=select)
    assert config.image_seq_length == expected


def _without_path(config: dict) -> dict:
    return {key: value for key, value in config.items() if key != "_name_or_path"}


def test_round_trip_through_save_load_and_dict(tmp_path):
    config = VisionBridgeConfig(
        SIGLIP,
        OPTConfig(hidden_size=48, num_hidden_layers=3),
        connector="mlp3x_gelu",
        vision_feature_layer=-3,
        vision_feature_select="full",
        image_token_id=50272,
        image_aspect_ratio="resize",
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, VisionBridgeConfig)
    assert _without_path(loaded.to_dict()) == _without_path(config.to_dict())
    assert VisionBridgeConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    assert loaded.text_config.model_type == "opt" and loaded.text_config.num_hidden_layers == 3
    assert loaded.vision_config.model_type == "siglip_vision_model"
    assert (loaded.connector, loaded.vision_feature_layer, loaded.image_seq_length) == ("mlp3x_gelu", -3, 256)
    assert loaded.get_text_config() is loaded.text_config


def test_unknown_connector_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown connector 'mlp_relu'") as error:
        VisionBridgeConfig(CLIP, LlamaConfig(), connector="mlp_relu")
    for name in CONNECTOR_NAMES:
        assert name in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"connector": "linear", "num_query_tokens": 8}, r"linear connector has no setting num_query_tokens .*none"),
        ({"connector": "resampler", "qformer_config": {}}, r"resampler connector has no setting qformer_config"),
        ({"connector_config": {"scale": 2}, "connector": "pixel_shuffle"}, r"no setting scale .*scale_factor"),
        ({"vision_feature_select": "cls"}, "vision_feature_select"),
        ({"image_aspect_ratio": "crop"}, "image_aspect_ratio"),
    ],
)
def test_inconsistent_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VisionBridgeConfig(CLIP, LlamaConfig(), **kwargs)
