"""A language model that ships its own code (trust_remote_code): joined by from_components, trained with LoRA on
its own module names, saved, and loaded in a fresh interpreter without visionbridge and without its original
folder, offline."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from cpu_args import cpu_args
from peft import PeftModel
from PIL import Image
from remote_load_check import run_check
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

import visionbridge
from visionbridge.modeling.tiny_components import SPECIAL_TOKENS, train_tiny_tokenizer

REMOTE_LM = Path(__file__).with_name("remote_lm")
AUTO_MAP = {
    "AutoConfig": "configuration_tinygpt.TinyGPTConfig",
    "AutoModelForCausalLM": "modeling_tinygpt.TinyGPTForCausalLM",
}


def build_remote_lm(folder: Path) -> str:
    """A tiny GPT-like causal LM whose config and model classes exist only as code files in its folder."""
    folder.mkdir(parents=True)
    for name in ("configuration_tinygpt.py", "modeling_tinygpt.py"):
        shutil.copy(REMOTE_LM / name, folder / name)
    tokenizer = train_tiny_tokenizer()
    ids = {f"{name}_id": tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[name]) for name in ("bos_token", "eos_token")}
    config = {"model_type": "tinygpt_remote", "vocab_size": len(tokenizer), "auto_map": AUTO_MAP, **ids}
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    AutoModelForCausalLM.from_config(config, trust_remote_code=True).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_remote_code_llm_trains_with_lora_saves_and_loads_without_its_repo(components, digit_samples, photos, tmp_path):
    vision_path, _ = components("clip", "llama")
    language_path = build_remote_lm(tmp_path / "remote-lm")
    torch.manual_seed(0)
    model, processor = visionbridge.from_components(vision_path, language_path, trust_remote_code=True)
    assert type(model.language_model).__module__.startswith("transformers_modules.")

    # The base folder reloads in this process too, its LLM built from the code files saved in it.
    base = tmp_path / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    text_config = json.loads((base / "config.json").read_text())["text_config"]
    assert text_config["auto_map"] == {key: f"llm_{ref}" for key, ref in AUTO_MAP.items()}
    assert {"llm_configuration_tinygpt.py", "llm_modeling_tinygpt.py"} <= {path.name for path in base.iterdir()}
    assert "from .llm_configuration_tinygpt import" in (base / "llm_modeling_tinygpt.py").read_text()

    args = cpu_args(
        tmp_path / "run",
        stage="instruct",
        lora_target_modules="c_attn|w1|w2",
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_steps=3,
    )
    trainer = visionbridge.VisionBridgeTrainer(
        model=model, args=args, train_dataset=digit_samples[:12], processing_class=processor
    )
    trainer.train()
    adapted = {name.rsplit(".", 1)[0] for name, _ in trainer.model.named_modules() if name.endswith(".lora_A")}
    assert {name.rsplit(".", 1)[-1] for name in adapted} == {"c_attn", "w1", "w2"}
    assert all(".language_model." in name for name in adapted)
    trainer.save_model(tmp_path / "adapter")

    reloaded = AutoModelForImageTextToText.from_pretrained(base, trust_remote_code=True)
    merged = PeftModel.from_pretrained(reloaded, tmp_path / "adapter").merge_and_unload().eval()
    folder = tmp_path / "merged"
    merged.save_pretrained(folder)
    processor.save_pretrained(folder)

    photo = tmp_path / "photo.jpg"
    photos[0].save(photo)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
    inputs = processor(
        images=Image.open(photo), text=processor.apply_chat_template(messages, add_generation_prompt=True)
    )
    with torch.no_grad():
        expected_logits = merged(**inputs).logits
        trained_logits = trainer.model.eval()(**inputs).logits
    assert torch.allclose(expected_logits, trained_logits, atol=1e-4)
    expected_tokens = merged.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)

    shutil.rmtree(language_path)  # the LLM's own repository is gone: the folder must carry its code
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HOME=str(tmp_path / "hf"))

    # With visionbridge installed but without trust_remote_code, the LLM's code in the folder does not run.
    untrusted = (
        f"import visionbridge, transformers; transformers.AutoModelForImageTextToText.from_pretrained({str(folder)!r})"
    )
    run = subprocess.run([sys.executable, "-c", untrusted], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "load it with trust_remote_code=True" in run.stderr, run.stderr[-3000:]
    # This transformers line, and the other one where CI names its interpreter.
    for python in [sys.executable, *filter(None, [os.environ.get("VISIONBRIDGE_OTHER_PYTHON")])]:
        report, tensors = run_check(python, folder, photo, tmp_path)
        assert torch.equal(tensors["input_ids"], inputs["input_ids"])
        for entry in report["loaders"]:
            assert entry["differing_tensors"] == []
            assert entry["tokens"] == expected_tokens[0, inputs["input_ids"].shape[1] :].tolist()
            assert torch.allclose(tensors[f"logits_{entry['name']}"], expected_logits, atol=1e-5)
