"""Faults: a killed run resumes to the same result, and an interrupted save never leaves a folder that loads."""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from cpu_args import cpu_args
from fault_train import main as train_digits
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, Trainer
from transformers.trainer_utils import get_last_checkpoint

from visionbridge.modeling import saving as model_saving
from visionbridge.processing import saving as processor_saving
from visionbridge.trainer import VisionBridgeTrainer, VisionBridgeTrainingArguments

SCRIPT = Path(__file__).with_name("fault_train.py")


def _train(components, out: Path, mode: str = "") -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(SCRIPT), *components, str(out), mode]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]


def test_a_run_killed_mid_training_resumes_to_the_same_loss_and_weights(components, tmp_path):
    paths = components()
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    victim = _train(paths, interrupted, "hang")
    try:
        train_digits(*paths, str(uninterrupted))  # the reference run, meanwhile and in this process
        deadline = time.monotonic() + 240
        while not (interrupted / "run" / "checkpoint-3").is_dir():
            assert victim.poll() is None, victim.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        victim.send_signal(signal.SIGKILL)  # the process waits in on_save: killed mid-run, one checkpoint saved
        victim.communicate(timeout=60)
    finally:
        victim.kill()
    assert victim.returncode == -signal.SIGKILL
    assert not (interrupted / "final").exists()
    assert get_last_checkpoint(interrupted / "run") == str(interrupted / "run" / "checkpoint-3")

    _finish(_train(paths, interrupted, "resume"))
    expected = json.loads((uninterrupted / "losses.json").read_text())
    resumed = json.loads((interrupted / "losses.json").read_text())
    assert len(resumed) == len(expected) == 6
    assert resumed == pytest.approx(expected, abs=1e-6)
    expected_tensors = load_file(uninterrupted / "final" / "adapter_model.safetensors")
    resumed_tensors = load_file(interrupted / "final" / "adapter_model.safetensors")
    assert resumed_tensors.keys() == expected_tensors.keys()
    for key, tensor in expected_tensors.items():
        assert torch.allclose(resumed_tensors[key], tensor, atol=1e-6), key


def _fail(*args, **kwargs):
    raise OSError("disk full")


def test_an_interrupted_model_save_leaves_no_folder(make_model, tmp_path, monkeypatch):
    model, _ = make_model()
    monkeypatch.setattr(model_saving, "write_remote_code", _fail)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_save_over_a_model_keeps_the_one_before(make_model, tmp_path, monkeypatch):
    model, processor = make_model()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    with torch.no_grad():
        model.connector[0].weight.add_(1.0)
    monkeypatch.setattr(model_saving, "write_remote_code", _fail)
    monkeypatch.setattr(processor_saving, "write_remote_code", _fail)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(folder)
    with pytest.raises(OSError, match="disk full"):
        processor.save_pretrained(folder)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["model"]
    AutoModelForImageTextToText.from_pretrained(folder)
    AutoProcessor.from_pretrained(folder)


def test_a_second_save_into_a_folder_replaces_the_weights(make_model, tmp_path):
    model, processor = make_model()
    folder = tmp_path / "model"
    processor.save_pretrained(folder)
    model.save_pretrained(folder, max_shard_size="100KB")
    assert (folder / "model.safetensors.index.json").is_file()
    model.save_pretrained(folder)
    assert sorted(path.name for path in folder.glob("model*.safetensors*")) == ["model.safetensors"]
    assert (folder / "processor_config.json").is_file()
    loaded = AutoModelForImageTextToText.from_pretrained(folder)
    assert torch.equal(loaded.connector[0].weight, model.connector[0].weight)


def _checkpointing_args(tmp_path: Path, max_steps: int) -> VisionBridgeTrainingArguments:
    """Batches of 4, a checkpoint every 2 steps under tmp_path/run."""
    return cpu_args(
        tmp_path / "run", per_device_train_batch_size=4, max_steps=max_steps, save_strategy="steps", save_steps=2
    )


def test_an_interrupted_checkpoint_is_never_resumed_from(make_model, digit_samples, tmp_path, monkeypatch):
    model, processor = make_model()
    args = _checkpointing_args(tmp_path, max_steps=4)
    trainer = VisionBridgeTrainer(model=model, args=args, train_dataset=digit_samples[:16], processing_class=processor)
    save_rng_state = Trainer._save_rng_state

    def fail_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise OSError("disk full")
        save_rng_state(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", fail_at_step_4)
    with pytest.raises(OSError, match="disk full"):
        trainer.train()
    run = tmp_path / "run"
    assert sorted(path.name for path in run.iterdir() if not path.name.startswith(".")) == ["checkpoint-2"]
    assert get_last_checkpoint(run) == str(run / "checkpoint-2")
    checkpoint = run / "checkpoint-2"
    for name in ("adapter_model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json"):
        assert (checkpoint / name).is_file(), name
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2

    monkeypatch.setattr(Trainer, "_save_rng_state", save_rng_state)
    trainer.train(resume_from_checkpoint=True)
    assert sorted(path.name for path in run.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4


@pytest.mark.parametrize(("missing", "what"), [("optimizer.pt", "optimizer state"), ("scheduler.pt", "schedule")])
def test_resuming_from_a_checkpoint_without_its_optimizer_or_scheduler_is_refused(
    make_model, digit_samples, tmp_path, missing, what
):
    model, processor = make_model()
    args = _checkpointing_args(tmp_path, max_steps=2)
    trainer = VisionBridgeTrainer(model=model, args=args, train_dataset=digit_samples[:8], processing_class=processor)
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    (checkpoint / missing).unlink()
    trainer.args.max_steps = 4
    with pytest.raises(
        FileNotFoundError, match=rf"Cannot resume from {checkpoint}: it holds no {missing} \(the .*{what}"
    ):
        trainer.train(resume_from_checkpoint=True)


def _pickled(path: Path) -> bool:
    """torch.save output (a zip holding data.pkl, or a bare pickle) or any other pickle stream."""
    head = path.read_bytes()[:4]
    if head.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(".pkl") for name in archive.namelist())
    return head[:1] == b"\x80"


def test_saved_folders_hold_no_pickle_but_the_trainers_resume_state(make_model, digit_samples, tmp_path):
    model, processor = make_model()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    args = _checkpointing_args(tmp_path, max_steps=2)
    trainer = VisionBridgeTrainer(model=model, args=args, train_dataset=digit_samples[:8], processing_class=processor)
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))

    pickled = sorted(
        str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file() and _pickled(path)
    )
    # The HF Trainer's resume state: optimizer and scheduler state dicts, and the Python/NumPy/torch RNG states.
    assert pickled == [
        "run/checkpoint-2/optimizer.pt",
        "run/checkpoint-2/rng_state.pth",
        "run/checkpoint-2/scheduler.pt",
    ]
    for folder in ("model", "adapter", "run/checkpoint-2"):
        assert list((tmp_path / folder).glob("*.safetensors")), folder
    for name in ("optimizer.pt", "scheduler.pt"):
        torch.load(tmp_path / "run" / "checkpoint-2" / name, weights_only=True)


def test_an_interrupted_adapter_save_leaves_no_folder(make_model, digit_samples, tmp_path, monkeypatch):
    model, processor = make_model()
    args = cpu_args(tmp_path / "run")
    trainer = VisionBridgeTrainer(model=model, args=args, train_dataset=digit_samples[:4], processing_class=processor)
    trainer.save_model(str(tmp_path / "adapter"))
    before = {path.name: path.read_bytes() for path in (tmp_path / "adapter").iterdir()}
    monkeypatch.setattr(processor_saving, "write_remote_code", _fail)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_model(str(tmp_path / "other"))
    with pytest.raises(OSError, match="disk full"):
        trainer.save_model(str(tmp_path / "adapter"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["adapter", "run"]  # run: the output_dir
    assert {path.name: path.read_bytes() for path in (tmp_path / "adapter").iterdir()} == before
