"""Every example script runs end to end on the embedded default, with short settings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SHORT = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--use_cpu", "--logging_steps", "1"]


def _run(script: str, *args: str) -> str:
    run = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stdout


def test_blip2_lora_captioning(tmp_path):
    out = _run("blip2_lora_captioning.py", "--output_dir", str(tmp_path), "--shown", "2", *SHORT)
    assert out.index("before:") < out.index("after:") and out.count("reference 'A handwritten digit") == 4
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (16, 32, 0.05)


def test_llava_two_stage(tmp_path):
    _run("llava_two_stage.py", "--output_dir", str(tmp_path), *SHORT)
    assert (tmp_path / "align" / "model.safetensors").is_file()  # stage 1 trains no adapter
    assert (tmp_path / "instruct" / "adapter_model.safetensors").is_file()


def test_qwenvl_lora_and_peft_inference(tmp_path):
    out = _run("qwenvl_lora.py", "--output_dir", str(tmp_path), *SHORT)
    assert "Where is the digit" in out and (tmp_path / "grounded.png").is_file()
    records = json.loads((tmp_path / "pairs" / "pairs.json").read_text())
    assert "Picture 2: <img>" in records[0]["conversations"][0]["value"]
    assert "<box>" in records[0]["conversations"][3]["value"]

    image = next((tmp_path / "pairs" / "images").glob("digit-*.png"))
    _run(
        "peft_inference.py",
        *("--base", str(tmp_path / "base"), "--adapter", str(tmp_path), "--image", str(image)),
        *("--question", "Which digit is this?", "--max_new_tokens", "3"),
    )


SCRIPTS = sorted(path.name for path in EXAMPLES.glob("*.py") if 'if __name__ == "__main__":' in path.read_text())


def test_only_the_benchmark_helpers_are_not_scripts():
    # Turn-taking (lockstep.py) and what the sections measure with (measure.py).
    helpers = sorted(path.name for path in EXAMPLES.glob("*.py") if path.name not in SCRIPTS)
    assert helpers == ["lockstep.py", "measure.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_example_names_its_command_and_checkpoints(script):
    text = (EXAMPLES / script).read_text()
    assert f"python examples/{script}" in text or "run.sh" in text
