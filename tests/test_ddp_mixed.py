"""Batches without images still reach the vision tower and connector in training (a zero-weighted blank image), so
DDP ranks with and without images reduce the same tensors; the first-step gradient check still sees through it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cpu_args import cpu_args
from safetensors.torch import load_file

from visionbridge.trainer import VisionBridgeTrainer
from visionbridge.trainer.collator import VisionBridgeCollator

SCRIPT = Path(__file__).with_name("ddp_mixed_train.py")


def _text_only(digit_samples, count: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": "Say a digit."}, sample["messages"][1]], "images": []}
        for sample in digit_samples[:count]
    ]


def test_text_only_training_batch_gives_the_image_path_zero_gradients(make_model, digit_samples):
    model, processor = make_model(mm_use_im_start_end=True)
    batch = VisionBridgeCollator(processor)(_text_only(digit_samples, 2))
    tower_calls = []
    # A pre-hook: the tower stops after the layer it reads, so forward hooks on the tower itself never run.
    model.vision_tower.register_forward_pre_hook(lambda *args: tower_calls.append(1))
    with torch.no_grad():
        expected = model(**batch).logits  # eval: no blank image
    assert tower_calls == []

    model.train()
    with torch.no_grad():
        model(**batch)  # no gradient, nothing to balance: no blank image (generate in training mode is like this)
    assert tower_calls == []
    output = model(**batch)
    output.loss.backward()
    assert len(tower_calls) == 1
    assert torch.equal(output.logits, expected)  # the blank image adds an exact zero
    image_path = [*model.connector.parameters(), model.image_boundary.embeddings, *model.vision_tower.parameters()]
    used = [parameter for parameter in image_path if parameter.grad is not None]
    assert len(used) > len(list(model.connector.parameters())) + 1  # the tower's used layers too
    assert all(not parameter.grad.any() for parameter in used)
    assert model.language_model.lm_head.weight.grad.any()

    for parameter in image_path:
        parameter.requires_grad_(False)
    model(**batch).loss.backward()
    assert len(tower_calls) == 1  # nothing there trains: no blank image


def _trainer(model, processor, samples, tmp_path) -> VisionBridgeTrainer:
    args = cpu_args(tmp_path / "out", stage="instruct", per_device_train_batch_size=2, max_steps=3)
    trainer = VisionBridgeTrainer(model=model, args=args, train_dataset=samples, processing_class=processor)
    trainer._get_train_sampler = lambda *args, **kwargs: torch.utils.data.SequentialSampler(samples)
    return trainer


def test_gradient_check_still_flags_a_connector_cut_off_from_the_loss(make_model, digit_samples, tmp_path):
    # Text-only steps first, whose blank image gives the connector exact-zero gradients (test_trainer.py checks that
    # they do not fail the check); a connector whose output never reaches the loss is caught at the first image step.
    samples = _text_only(digit_samples, 4) + digit_samples[:2]
    model, processor = make_model()
    model.connector.register_forward_hook(lambda module, inputs, output: output * 0)
    trainer = _trainer(model, processor, samples, tmp_path)
    with pytest.raises(RuntimeError, match=r"At step 3 .*all-zero gradient: \[.*connector"):
        trainer.train()


def test_mixed_batches_under_two_process_ddp_match_one_process(tmp_path):
    runs = {
        "ddp": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(SCRIPT), str(tmp_path)],
        "single": [sys.executable, str(SCRIPT), str(tmp_path)],
    }
    processes = {
        mode: subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for mode, command in runs.items()
    }
    for mode, process in processes.items():
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, f"{mode}: {stderr[-4000:]}"
    reports = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("ddp-0", "ddp-1", "single-0")}
    # The situation under test happened: rank 1 never saw an image, rank 0 always did.
    assert reports["ddp-0"]["world_size"] == 2 and reports["single-0"]["world_size"] == 1
    assert reports["ddp-1"]["images_per_batch"] == [0, 0] and reports["ddp-0"]["images_per_batch"] == [1, 1]
    assert reports["single-0"]["images_per_batch"] == [1, 0, 1, 0]
    assert all(report["accepts_loss_kwargs"] for report in reports.values())  # token-mean over the whole step

    initial, single, ddp = (load_file(tmp_path / f"{name}.safetensors") for name in ("single-initial", "single", "ddp"))
    assert ddp.keys() == single.keys() and any("image_boundary" in name for name in ddp)
    for name, weight in single.items():
        single_update, ddp_update = weight - initial[name], ddp[name] - initial[name]
        assert single_update.abs().max() > (1e-3 if "modules_to_save" in name else 0), f"{name} did not train"
        assert torch.allclose(ddp_update, single_update, rtol=1e-4, atol=1e-7), (
            f"{name}: updates differ by up to {(ddp_update - single_update).abs().max()}"
        )
    assert reports["ddp-0"]["losses"] == pytest.approx(reports["single-0"]["losses"], rel=1e-5)


def test_processes_in_lockstep_run_the_blank_image_in_every_forward_but_decoding(
    make_model, digit_samples, monkeypatch
):
    # Under ZeRO-3 and FSDP (here: as the model would find them) every process must run the same modules: a batch
    # without images runs the blank image in evaluation and at generate's first forward, never at a decoding step.
    model, processor = make_model(mm_use_im_start_end=True)
    batch = VisionBridgeCollator(processor)(_text_only(digit_samples, 2))
    with torch.no_grad():
        expected = model(**batch).logits
    tower_calls = []
    model.vision_tower.register_forward_pre_hook(lambda *args: tower_calls.append(1))
    monkeypatch.setattr(type(model), "_ranks_run_in_lockstep", lambda self: True)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, expected)  # the blank image adds an exact zero
    assert len(tower_calls) == 1
    prompt = processor(text=["Say a digit."], return_tensors="pt")
    output = model.generate(**prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert output.shape[1] == prompt["input_ids"].shape[1] + 4 and len(tower_calls) == 2  # the first forward only
