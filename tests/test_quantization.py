"""8-bit and 4-bit loading keeps the vision tower, the connector and the LM head unquantized by default.

bitsandbytes is not installed here and there is no GPU: these tests stop transformers' real bitsandbytes quantizer
at the point where it would replace the linear layers, and check the list of modules it would leave alone."""

import importlib.metadata

import pytest
import transformers
from torch import nn
from transformers import AutoModelForImageTextToText, BitsAndBytesConfig, PreTrainedModel
from transformers.quantizers.quantizer_bnb_4bit import Bnb4BitHfQuantizer
from transformers.quantizers.quantizer_bnb_8bit import Bnb8BitHfQuantizer

from visionbridge import VisionBridgeForConditionalGeneration, from_components
from visionbridge.modeling.quantization import UNQUANTIZED_MODULES, with_unquantized_parts


class _Stop(Exception):
    pass


@pytest.fixture
def bnb_config(monkeypatch):
    """BitsAndBytesConfig, buildable without bitsandbytes: transformers 4.57 reads bitsandbytes' installed version
    when a 4-bit config is built."""
    version = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: "0.45.0" if name == "bitsandbytes" else version(name)
    )
    return BitsAndBytesConfig


def _left_alone(name: str, patterns: list[str]) -> bool:
    """Whether the installed line's bitsandbytes layer replacement leaves the module `name` unquantized."""
    try:  # transformers 5
        from transformers.quantizers.quantizers_utils import should_convert_module
    except ImportError:  # transformers 4.57's rule in replace_with_bnb_linear
        leaf = name.rsplit(".", 1)[-1]
        return leaf in patterns or any(key + "." in name or key == name for key in patterns)
    return not should_convert_module(name, patterns)


def _planned(monkeypatch, bits: int, load) -> tuple[list[str], list[str]]:
    """(linear layers left unquantized, linear layers quantized) by the real quantizer when `load()` runs."""
    quantizer = Bnb4BitHfQuantizer if bits == 4 else Bnb8BitHfQuantizer
    seen = {}

    def capture(self, model, *args, **kwargs):
        seen["skip"] = self.get_modules_to_not_convert(model, self.quantization_config.llm_int8_skip_modules, None)
        seen["linears"] = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        raise _Stop

    monkeypatch.setattr(quantizer, "validate_environment", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(quantizer, "_process_model_before_weight_loading", capture)
    with pytest.raises(_Stop):
        load()
    kept = [name for name in seen["linears"] if _left_alone(name, seen["skip"])]
    return kept, [name for name in seen["linears"] if name not in kept]


@pytest.mark.parametrize("bits", [8, 4])
def test_quantizer_leaves_the_image_path_and_the_head_alone(make_model, tmp_path, monkeypatch, bnb_config, bits):
    model, _ = make_model(mm_use_im_start_end=True)
    model.save_pretrained(tmp_path)
    config = bnb_config(**{f"load_in_{bits}bit": True})
    kept, quantized = _planned(
        monkeypatch, bits, lambda: AutoModelForImageTextToText.from_pretrained(tmp_path, quantization_config=config)
    )
    assert config.llm_int8_skip_modules is None  # the caller's config is left as it was
    image_path = [name for name in kept if name.startswith(("vision_tower.", "connector."))]
    assert len(image_path) == sum(
        isinstance(module, nn.Linear) for part in (model.vision_tower, model.connector) for module in part.modules()
    )
    assert set(kept) - set(image_path) == {"language_model.lm_head"}
    assert quantized and all(name.startswith("language_model.model.layers.") for name in quantized)

    # transformers' own default, which this replaces, would quantize the vision tower and the connector.
    config = bnb_config(**{f"load_in_{bits}bit": True})
    kept, quantized = _planned(
        monkeypatch,
        bits,
        lambda: PreTrainedModel.from_pretrained.__func__(
            VisionBridgeForConditionalGeneration, tmp_path, quantization_config=config
        ),
    )
    assert any(name.startswith("vision_tower.") for name in quantized) and "connector.0" in quantized


def test_skip_list_is_filled_only_where_none_was_chosen(bnb_config):
    config = bnb_config(load_in_4bit=True)
    filled = with_unquantized_parts(config)
    assert filled is not config and filled.llm_int8_skip_modules == UNQUANTIZED_MODULES
    assert filled.load_in_4bit and config.llm_int8_skip_modules is None
    chosen = bnb_config(load_in_8bit=True, llm_int8_skip_modules=["lm_head"])
    assert with_unquantized_parts(chosen).llm_int8_skip_modules == ["lm_head"]
    assert with_unquantized_parts({"load_in_8bit": True})["llm_int8_skip_modules"] == UNQUANTIZED_MODULES
    other = {"quant_method": "gptq", "bits": 4}
    assert with_unquantized_parts(other) is other


def test_from_components_quantizes_the_language_model_only(components, monkeypatch, bnb_config):
    calls = {}
    for auto in (transformers.AutoModel, transformers.AutoModelForCausalLM):
        original = auto.from_pretrained.__func__

        def record(cls, path, *args, _original=original, _name=auto.__name__, **kwargs):
            calls[_name] = kwargs.pop("quantization_config", None)
            return _original(cls, path, *args, **kwargs)  # loaded unquantized: there is no bitsandbytes here

        monkeypatch.setattr(auto, "from_pretrained", classmethod(record))
    config = bnb_config(load_in_4bit=True)
    from_components(*components(), quantization_config=config)
    assert calls == {"AutoModel": None, "AutoModelForCausalLM": config}
