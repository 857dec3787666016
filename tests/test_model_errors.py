"""Bad models, configs, adapters, tokenizers and checkpoints fail with an error that says what was wrong."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cpu_args import cpu_args
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, CLIPVisionConfig, LlamaConfig

from visionbridge import (
    CONNECTOR_NAMES,
    VisionBridgeConfig,
    VisionBridgeForConditionalGeneration,
    VisionBridgeProcessor,
    load_mm_projector,
)
from visionbridge.modeling.tiny_components import train_tiny_tokenizer
from visionbridge.trainer.lora import prepare_model

REMOTE_CHECK = Path(__file__).with_name("remote_error_check.py")
CLIP = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_attention_heads=4, num_hidden_layers=2)
LLAMA = LlamaConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128)


def test_an_unknown_connector_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown connector 'mlp2x_relu'") as error:
        VisionBridgeConfig(CLIP, LLAMA, connector="mlp2x_relu")
    assert all(name in str(error.value) for name in CONNECTOR_NAMES)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"connector": "qformer", "qformer_config": {"hidden_size": 32, "encoder_hidden_size": 48}},
            r"qformer_config.encoder_hidden_size=48 must equal the vision encoder's hidden_size=32",
        ),
        (
            {"connector": "resampler", "resampler_hidden_size": 60, "resampler_num_heads": 8},
            r"resampler's hidden_size=60 is not divisible by num_heads=8",
        ),
        ({"connector": "resampler", "num_query_tokens": 10}, "must be a square number >= 1, got 10"),
        ({"connector": "resampler", "num_query_tokens": 0}, "must be a square number >= 1, got 0"),
        ({"connector": "qformer", "num_query_tokens": 0}, "num_query_tokens must be a whole number >= 1, got 0"),
        ({"connector": "qformer", "num_query_tokens": -3}, "num_query_tokens must be a whole number >= 1, got -3"),
        ({"connector": "qformer", "num_query_tokens": 2.5}, "num_query_tokens must be a whole number >= 1, got 2.5"),
        (
            {"connector": "pixel_shuffle", "connector_config": {"scale_factor": 3}},
            r"scale_factor=3 does not divide .*4x4",
        ),
        ({"connector": "pixel_shuffle", "vision_feature_select": "full"}, r"pixel_shuffle folds a square grid"),
        (
            {"connector": "mlp2x_gelu", "image_seq_length": 20},
            r"image_seq_length=20 does not fit the mlp2x_gelu connector .* 16 tokens per image at 32 px, and 1, 4, 9",
        ),
        (
            {"connector": "linear", "vision_feature_select": "full", "image_seq_length": 16},
            r"image_seq_length=16 .* 17 tokens per image at 32 px, and 2, 5, 10",
        ),
        (
            {"connector": "qformer", "num_query_tokens": 8, "image_seq_length": 16},
            r"image_seq_length=16 does not fit the qformer connector .* 8 tokens per image at 32 px, and 8 at",
        ),
        ({"vision_feature_layer": 3}, r"vision_feature_layer=3 is out of range: .*2 layers.* -3 to 2"),
        ({"vision_feature_layer": -4}, r"vision_feature_layer=-4 is out of range"),
    ],
)
def test_connector_settings_that_contradict_the_encoder_or_llm_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VisionBridgeConfig(CLIP, LLAMA, **kwargs)


@pytest.mark.parametrize("layer", [-3, -2, -1, 0, 2, None])
def test_every_hidden_layer_of_the_encoder_is_accepted(layer):
    assert VisionBridgeConfig(CLIP, LLAMA, vision_feature_layer=layer).vision_feature_layer == layer


def test_an_explicit_image_seq_length_is_checked_against_the_processors_resolution(components):
    import visionbridge

    with pytest.raises(
        ValueError, match=r"image_seq_length=9 does not match the image processor's 32 px images, which give 16"
    ):
        visionbridge.from_components(*components(), image_seq_length=9)


def _adapter(model, folder) -> None:
    args = cpu_args(folder)
    peft_model = prepare_model(model, args)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    peft_model.save_pretrained(folder)


def _other_base(model, **text_changes) -> VisionBridgeForConditionalGeneration:
    text = {**model.config.text_config.to_dict(), **text_changes}
    config = VisionBridgeConfig(model.config.vision_config.to_dict(), text, image_token_id=model.config.image_token_id)
    return VisionBridgeForConditionalGeneration(config)


def test_an_adapter_on_a_base_with_another_llm_width_names_the_width(make_model, tmp_path):
    model, _ = make_model()
    _adapter(model, tmp_path / "adapter")
    other = _other_base(make_model()[0], hidden_size=48)
    with pytest.raises(ValueError, match="made for another base model") as error:
        PeftModel.from_pretrained(other, tmp_path / "adapter")
    message = str(error.value)
    assert "the LLM's (llama) hidden_size: 48 here, 64 in the weights" in message
    assert "size mismatch" not in message and len(message) < 1500


def test_an_adapter_on_a_base_with_another_llm_family_is_refused(make_model, tmp_path):
    model, _ = make_model(language="opt")
    _adapter(model, tmp_path / "adapter")
    with pytest.raises(ValueError, match="adapter tensors name modules this model does not have") as error:
        PeftModel.from_pretrained(make_model()[0], tmp_path / "adapter")
    assert "(llama)" in str(error.value) and "decoder.layers" in str(error.value)


def test_an_adapter_on_its_own_base_still_loads(make_model, tmp_path):
    model, _ = make_model()
    _adapter(model, tmp_path / "adapter")
    restored = PeftModel.from_pretrained(make_model()[0], tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    lora_b = next(key for key in saved if "lora_B" in key)
    loaded = dict(restored.named_parameters())[lora_b.replace(".weight", ".default.weight")]
    assert torch.equal(loaded, saved[lora_b])


def test_remote_code_refuses_a_foreign_adapter_and_a_folder_without_connector(make_model, tmp_path):
    model, _ = make_model()
    _adapter(model, tmp_path / "adapter")
    _other_base(model, hidden_size=48).save_pretrained(tmp_path / "other")
    _without_connector(model, tmp_path / "broken")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    folders = [tmp_path / "other", tmp_path / "adapter", tmp_path / "broken", tmp_path / "report.json"]
    run = subprocess.run(
        [sys.executable, str(REMOTE_CHECK), *map(str, folders)], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["module"].startswith("transformers_modules.")
    assert "the LLM's (llama) hidden_size: 48 here, 64 in the weights" in report["adapter_error"]
    assert "holds no weights for 4 connector tensors" in report["connector_error"]


def test_a_tokenizer_without_the_image_token_is_named(make_model):
    _, processor = make_model()
    tokenizer = train_tiny_tokenizer()
    with pytest.raises(ValueError, match=r"has no image token '<image>': add it with tokenizer.add_tokens"):
        VisionBridgeProcessor(processor.image_processor, tokenizer)


def _without_connector(model, folder) -> None:
    model.save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    kept = {key: value for key, value in weights.items() if not key.startswith("connector.")}
    save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})


def test_a_checkpoint_without_connector_weights_is_refused(make_model, tmp_path):
    _without_connector(make_model()[0], tmp_path)
    with pytest.raises(ValueError, match=r"holds no weights for 4 connector tensors \(connector.0.bias"):
        AutoModelForImageTextToText.from_pretrained(tmp_path)


def test_a_config_naming_another_connector_than_the_weights_is_refused(make_model, tmp_path):
    make_model(connector="mlp2x_gelu")[0].save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "connector": "linear"}))
    with pytest.raises(ValueError, match=r"holds 2 connector tensors that its config's connector does not have "):
        AutoModelForImageTextToText.from_pretrained(tmp_path)


def test_a_complete_checkpoint_still_reports_its_loading_info(make_model, tmp_path):
    model, _ = make_model()
    model.save_pretrained(tmp_path)
    loaded, info = VisionBridgeForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] in ([], set())
    assert torch.equal(loaded.connector[2].weight, model.connector[2].weight)


def _llava_projector(vision: int = 32, text: int = 64) -> dict:
    """What LLaVA's pretraining stage saves as mm_projector.bin for mlp2x_gelu."""
    shapes = {"0.weight": (text, vision), "0.bias": (text,), "2.weight": (text, text), "2.bias": (text,)}
    return {f"model.mm_projector.{name}": torch.randn(shape) for name, shape in shapes.items()}


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_a_llava_mm_projector_loads_into_the_connector(make_model, tmp_path, suffix):
    model, _ = make_model()
    projector = _llava_projector()
    path = tmp_path / f"mm_projector{suffix}"
    if suffix == ".bin":
        torch.save(projector, path)
    else:
        save_file(projector, path)
    load_mm_projector(model, path)
    for name, tensor in model.connector.state_dict().items():
        assert torch.equal(tensor, projector[f"model.mm_projector.{name}"])


class _Payload:
    """Unpickling this runs code: it creates the file named by `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_an_mm_projector_with_a_pickled_object_is_refused_unrun(make_model, tmp_path):
    model, _ = make_model()
    marker = tmp_path / "code-ran"
    torch.save({**_llava_projector(), "model.mm_projector.extra": _Payload(marker)}, tmp_path / "mm_projector.bin")
    with pytest.raises(ValueError, match="pickled objects other than tensors, which are not loaded"):
        load_mm_projector(model, tmp_path / "mm_projector.bin")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("connector", "projector", "message"),
    [
        ("linear", _llava_projector(), r"2 linear layers, but the model's connector has 1: .*connector='mlp2x_gelu'"),
        ("mlp2x_gelu", _llava_projector(text=128), r"0.weight: file \[128, 32\], model \[64, 32\]"),
        ("qformer", _llava_projector(), "not 'qformer'"),
    ],
)
def test_an_mm_projector_that_does_not_fit_is_refused(make_model, tmp_path, connector, projector, message):
    model, _ = make_model(connector=connector)
    torch.save(projector, tmp_path / "mm_projector.bin")
    with pytest.raises(ValueError, match=message):
        load_mm_projector(model, tmp_path / "mm_projector.bin")
