"""A saved folder is a complete Hub repo: it loads in a fresh interpreter where visionbridge is not importable,
on this transformers line and on the other one (VISIONBRIDGE_OTHER_PYTHON names that interpreter; CI sets it)."""

import ast
import importlib.metadata
import json
import re
import sys

import pytest
import torch
import transformers
from fresh_interpreter import interpreter, saved_with_photo
from remote_load_check import run_check

from visionbridge.modeling.remote_code import flat_sources


@pytest.mark.parametrize("which", ["this line", "other line"])
@pytest.mark.parametrize(
    ("vision", "language", "connector"),
    [
        ("clip", "llama", "mlp2x_gelu"),
        ("siglip", "opt", "linear"),
        ("clip", "opt", "qformer"),
        ("siglip", "qwen2", "resampler"),
        ("clip", "qwen2", "pixel_shuffle"),
    ],
)
def test_fresh_interpreter_without_visionbridge_loads_the_same_model(
    make_model, photos, tmp_path, which, vision, language, connector
):
    python = interpreter(which)
    model, processor = make_model(vision, language, connector)
    folder, photo, inputs, expected_logits = saved_with_photo(model, processor, photos[0], tmp_path)
    expected_tokens = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    expected_tokens = expected_tokens[0, inputs["input_ids"].shape[1] :].tolist()

    # Online mode: the check blocks every socket itself, and records any attempt a library might swallow.
    report, tensors = run_check(python, folder, photo, tmp_path, offline=False)
    same_line = report["transformers"] == transformers.__version__
    assert same_line == (which == "this line")

    assert report["network_attempts"] == []
    assert torch.equal(tensors["input_ids"], inputs["input_ids"])
    assert torch.allclose(tensors["pixel_values"], inputs["pixel_values"], atol=1e-5)
    loaders = {entry["name"] for entry in report["loaders"]}
    assert "AutoModelForImageTextToText" in loaders
    assert ("AutoModelForVision2Seq" in loaders) == report["transformers"].startswith("4.")
    for entry in report["loaders"]:
        assert entry["class"] == "VisionBridgeForConditionalGeneration"
        assert entry["differing_tensors"] == []
        assert entry["tokens"] == expected_tokens
        logits = tensors[f"logits_{entry['name']}"]
        assert torch.allclose(logits, expected_logits, atol=1e-5), (logits - expected_logits).abs().max()


# What loading, forward, generate and chat run: nothing of saving, pushing or the remote-code writer.
INFERENCE_FILES = {
    "configuration_visionbridge.py",
    "checkpoint_code.py",
    "compat.py",
    "modeling_visionbridge.py",
    "chat.py",
    "image_boundary.py",
    "labelled_loss.py",
    "load_checks.py",
    "quantization.py",
    "vision_features.py",
    "processing_visionbridge.py",
    "images.py",
}


@pytest.mark.parametrize(
    ("connector", "connector_file"),
    [
        ("mlp2x_gelu", "connector_mlp.py"),
        ("qformer", "connector_qformer.py"),
        ("pixel_shuffle", "connector_pixel_shuffle.py"),
    ],
)
def test_saved_folder_holds_flat_inference_code_and_the_auto_map(make_model, tmp_path, connector, connector_file):
    model, processor = make_model(connector=connector)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_visionbridge.VisionBridgeConfig",
        "AutoModelForImageTextToText": "modeling_visionbridge.VisionBridgeForConditionalGeneration",
        "AutoModelForVision2Seq": "modeling_visionbridge.VisionBridgeForConditionalGeneration",
        "AutoProcessor": "processing_visionbridge.VisionBridgeProcessor",
    }
    # The one connector the model uses travels, named so that the folder loads where visionbridge is not installed.
    assert {path.name for path in tmp_path.glob("*.py")} == INFERENCE_FILES | {connector_file}
    assert config["connector_config"]["shipped_class"].startswith(connector_file.removesuffix(".py") + ".")
    for path in tmp_path.glob("*.py"):
        text = path.read_text()
        assert "from .." not in text, path.name
        for name in ("staged_folder", "push_folder", "write_remote_code", "upload_folder", "flat_sources"):
            assert name not in text, f"{path.name} holds {name}"
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] != "TokenizersBackend"
    assert (tmp_path / "preprocessor_config.json").is_file()


def _allowed_top_level_modules() -> set[str]:
    """The standard library, torch, transformers, and what installing transformers always brings (numpy,
    huggingface_hub, safetensors, ...) plus Pillow, which transformers' image processors need."""
    required = {"pillow", "torch", "transformers"}
    for requirement in importlib.metadata.requires("transformers"):
        if "extra ==" not in requirement:
            required.add(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-"))
    provided_by = importlib.metadata.packages_distributions()
    third_party = {
        module
        for module, distributions in provided_by.items()
        if any(name.lower().replace("_", "-") in required for name in distributions)
    }
    return set(sys.stdlib_module_names) | third_party


def test_remote_code_imports_only_transformers_torch_and_the_standard_library(make_model, tmp_path):
    model, processor = make_model(connector="qformer")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    allowed, flat_files = _allowed_top_level_modules(), {path.stem for path in tmp_path.glob("*.py")}
    assert {"visionbridge", "peft", "sklearn", "accelerate"}.isdisjoint(allowed)
    imported = {}
    for path in sorted(tmp_path.glob("*.py")):
        tree = ast.parse(path.read_text())
        # visionbridge is imported only inside functions, where its absence falls back to transformers' own code.
        guarded = {
            id(node)
            for function in ast.walk(tree)
            if isinstance(function, ast.FunctionDef)
            for block in ast.walk(function)
            if isinstance(block, ast.Try) and any(getattr(h.type, "id", None) == "ImportError" for h in block.handlers)
            for node in block.body
        }
        for node in ast.walk(tree):
            if id(node) in guarded and isinstance(node, ast.ImportFrom) and node.module.startswith("visionbridge."):
                continue
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module in flat_files, (
                    f"{path.name}: from {'.' * node.level}{node.module}"
                )
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
                imported.update({name.split(".")[0]: path.name for name in names})
    assert {"torch", "transformers"} <= set(imported)
    assert {module: file for module, file in imported.items() if module not in allowed} == {}


def test_flattening_refuses_two_files_with_one_name(tmp_path, monkeypatch):
    import types

    for folder, text in [("a", "X = 1\n"), ("b", "Y = 2\n")]:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "util.py").write_text(text)
    top = tmp_path / "a" / "top.py"
    top.write_text("from .util import X\nfrom ..b.util import Y\n")
    monkeypatch.setitem(sys.modules, "fake_top", types.SimpleNamespace(__file__=str(top)))
    Top = type("Top", (), {"__module__": "fake_top"})
    with pytest.raises(ValueError, match="share the flat name util.py"):
        flat_sources([Top])
