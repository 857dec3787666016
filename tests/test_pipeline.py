"""transformers' image-text-to-text pipeline runs a VisionBridge model on chat messages with images: from a
saved folder with trust_remote_code (here, and in a fresh interpreter without visionbridge) or from the objects."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import pipeline

CHECK = Path(__file__).with_name("pipeline_check.py")
SETTINGS = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)


def test_pipeline_answers_a_chat_with_an_image(make_model, photos, tmp_path):
    model, processor = make_model()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    photo = tmp_path / "photo.png"
    photos[0].save(photo)
    content = [{"type": "image", "image": photos[0]}, {"type": "text", "text": "What is in the picture?"}]
    messages = [{"role": "user", "content": content}]

    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    with torch.no_grad():
        output = model.generate(**inputs, **SETTINGS, pad_token_id=processor.tokenizer.pad_token_id)
    expected = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert expected.strip()

    answers = {}
    for name, pipe in [
        ("objects", pipeline("image-text-to-text", model=model, processor=processor)),
        ("folder", pipeline("image-text-to-text", model=str(folder), trust_remote_code=True)),
    ]:
        result = pipe(text=messages, **SETTINGS)
        assert result[0]["generated_text"][0] == messages[0]
        answers[name] = result[0]["generated_text"][-1]["content"]

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HOME=str(tmp_path / "hf"))
    run = subprocess.run(
        [sys.executable, str(CHECK), str(folder), str(photo)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    answers["fresh interpreter"] = json.loads(run.stdout.strip().splitlines()[-1])
    assert answers == dict.fromkeys(answers, expected)
