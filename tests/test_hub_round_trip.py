"""Push to and load from a loopback Hub: adapters and models by repo id, revisions, the offline cache, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from cpu_args import cpu_args
from huggingface_hub import ModelCard, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import load_file, save_file

from visionbridge.trainer import VisionBridgeTrainer

CHECK = Path(__file__).with_name("hub_load_check.py")


def _train(model, processor, samples, tmp_path, steps, repo_id):
    args = cpu_args(
        tmp_path / f"run-{steps}",
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        connector_lr=3e-3,
        max_steps=steps,
        push_to_hub=True,
        hub_model_id=repo_id,
    )
    trainer = VisionBridgeTrainer(model=model, args=args, train_dataset=samples[:16], processing_class=processor)
    trainer.train()
    trainer.push_to_hub(dataset_tags="sklearn/digits", finetuned_from="org/base")
    return trainer


def _fresh_load(hub, tmp_path, inputs_file, name, revision=None, offline=False, home=None):
    # An empty cache of its own (unless `home` is shared on purpose): HF_HOME only, no inherited cache paths.
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_HUB_CACHE")}
    env.update(HF_HOME=str(home or tmp_path / f"hf-{name}"), HF_MODULES_CACHE=str(tmp_path / f"modules-{name}"))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    out = tmp_path / name
    command = [sys.executable, str(CHECK), "org/base", "org/adapter", str(inputs_file), str(out)]
    run = subprocess.run(
        command + ([revision] if revision else []), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    tensors = load_file(f"{out}.safetensors")
    if "logits_vision2seq" in tensors:
        assert torch.equal(tensors["logits_vision2seq"], tensors["logits"])
    assert ("logits_vision2seq" in tensors) == transformers.__version__.startswith("4.")
    return tensors["logits"], json.loads(Path(f"{out}.json").read_text())


def test_train_push_and_load_by_repo_id_in_a_fresh_process(loopback_hub, make_model, digit_samples, tmp_path):
    model, processor = make_model()
    model.push_to_hub("org/base")
    processor.push_to_hub("org/base")
    assert {"modeling_visionbridge.py", "processing_visionbridge.py", "model.safetensors", "config.json"} <= set(
        loopback_hub.files("org/base")
    )

    trainer = _train(model, processor, digit_samples, tmp_path, steps=4, repo_id="org/adapter")
    batch = trainer.data_collator(digit_samples[16:20])
    batch.pop("labels")
    inputs_file = tmp_path / "inputs.safetensors"
    save_file({key: value.contiguous() for key, value in batch.items()}, inputs_file)
    trainer.model.eval()
    with torch.no_grad():
        first_logits = trainer.model(**batch).logits
    first_commit = loopback_hub.commits("org/adapter")[-1]
    assert "adapter_model.safetensors" in loopback_hub.files("org/adapter")

    logits, report = _fresh_load(loopback_hub, tmp_path, inputs_file, "first", home=tmp_path / "hf-shared")
    assert report["class"].startswith("transformers_modules.") and report["processor"] == "VisionBridgeProcessor"
    assert torch.allclose(logits, first_logits, atol=1e-5)

    # The card pushed with the adapter parses, with the Hub metadata.
    card = ModelCard.load(hf_hub_download("org/adapter", "README.md"))
    assert card.data.pipeline_tag == "image-text-to-text" and card.data.library_name == "peft"
    assert card.data.datasets == ["sklearn/digits"] and 'from_pretrained("org/base"' in card.text

    # A second push is a new revision; the first still loads by its sha.
    trainer.args.max_steps = 8
    trainer.train()
    trainer.push_to_hub()
    assert len(loopback_hub.commits("org/adapter")) > 2 and loopback_hub.commits("org/adapter")[-1] != first_commit
    trainer.model.eval()
    with torch.no_grad():
        second_logits = trainer.model(**batch).logits
    assert not torch.allclose(second_logits, first_logits, atol=1e-4)
    latest, _ = _fresh_load(loopback_hub, tmp_path, inputs_file, "latest")
    assert torch.allclose(latest, second_logits, atol=1e-5)
    pinned, _ = _fresh_load(loopback_hub, tmp_path, inputs_file, "pinned", revision=first_commit)
    assert torch.allclose(pinned, first_logits, atol=1e-5)

    # Offline, from the cache the first load filled.
    offline, _ = _fresh_load(loopback_hub, tmp_path, inputs_file, "offline", offline=True, home=tmp_path / "hf-shared")
    assert torch.allclose(offline, first_logits, atol=1e-5)


def test_push_without_a_token_fails_clearly_and_uploads_nothing(loopback_hub, make_model, tmp_path, monkeypatch):
    model, processor = make_model()
    model.push_to_hub("org/guarded")
    commits = loopback_hub.commits("org/guarded")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    with pytest.raises(HfHubHTTPError) as error:
        model.save_pretrained(tmp_path / "again", push_to_hub=True, repo_id="org/guarded", token=False)
    assert error.value.response.status_code == 401
    assert loopback_hub.commits("org/guarded") == commits


def test_loading_a_missing_repo_is_a_clear_error(loopback_hub):
    from transformers import AutoModelForImageTextToText

    with pytest.raises(OSError, match="org/does-not-exist"):
        AutoModelForImageTextToText.from_pretrained("org/does-not-exist", trust_remote_code=True)


def test_push_to_a_new_branch_creates_it(loopback_hub, make_model):
    model, processor = make_model()
    model.push_to_hub("org/branched")
    processor.push_to_hub("org/branched", revision="v2")  # the branch does not exist yet
    assert "tokenizer.json" in loopback_hub.files("org/branched", revision="v2")
    assert "tokenizer.json" not in loopback_hub.files("org/branched")
