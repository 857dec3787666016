"""stage="qformer_pretrain": BLIP-2's first stage trains the Q-Former and its queries alone, and saves nothing else."""

import pytest
import torch
from cpu_args import cpu_args
from digit_chats import captioned
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from visionbridge.cli import main
from visionbridge.trainer import VisionBridgeTrainer
from visionbridge.trainer.qformer_pretrain import QFormerPretraining


def _stage_args(tmp_path, **settings):
    defaults = dict(stage="qformer_pretrain", per_device_train_batch_size=8, learning_rate=1e-3, max_steps=6)
    return cpu_args(tmp_path / "stage1", **(defaults | settings))


def test_the_stage_trains_only_the_qformer_and_saves_no_stage_module(make_model, digit_samples, tmp_path):
    model, processor = make_model(connector="qformer")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.save_pretrained(tmp_path / "untrained")
    trainer = VisionBridgeTrainer(
        model=model,
        args=_stage_args(tmp_path),
        train_dataset=captioned(digit_samples),
        processing_class=processor,
    )
    heads = [parameter.detach().clone() for parameter in trainer.qformer_pretraining.own_parameters()]
    trainer.train()
    changed = {name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])}
    assert changed and all(name.startswith(("connector.qformer.", "connector.query_tokens")) for name in changed)
    assert "connector.query_tokens" in changed
    trained_heads = trainer.qformer_pretraining.own_parameters()
    assert all(not torch.equal(a, b) for a, b in zip(trained_heads, heads, strict=True))

    trainer.save_model()
    saved = load_file(tmp_path / "stage1" / "model.safetensors")
    assert set(saved) == set(load_file(tmp_path / "untrained" / "model.safetensors"))  # nothing of the stage's
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "stage1").eval()
    inputs = processor(images=digit_samples[0]["images"], text="<image> What digit is this?")
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model.eval()(**inputs).logits)


def test_the_stage_lowers_its_contrastive_loss(make_model, digit_samples, tmp_path):
    model, processor = make_model(connector="qformer")
    args = _stage_args(tmp_path, max_steps=60, per_device_train_batch_size=16, logging_steps=10)
    trainer = VisionBridgeTrainer(
        model=model, args=args, train_dataset=captioned(digit_samples), processing_class=processor
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.8 * losses[0], losses


def test_samples_with_the_same_text_are_all_positives(make_model):
    model, _ = make_model(connector="qformer")
    stage = QFormerPretraining(model)
    input_ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 9, 8]])
    labels = torch.tensor([[-100, -100, 7, 8], [-100, -100, 7, 8], [-100, -100, 9, 8]])
    ids, mask = stage.texts(input_ids, labels)
    assert ids.tolist() == [[stage.cls_token_id, 7, 8]] * 2 + [[stage.cls_token_id, 9, 8]]
    assert mask.all()


def test_the_stage_refuses_other_connectors_and_samples_without_an_image(make_model, digit_samples, tmp_path):
    model, processor = make_model(connector="resampler")
    with pytest.raises(ValueError, match="connector is 'resampler', not 'qformer'"):
        VisionBridgeTrainer(
            model=model, args=_stage_args(tmp_path), train_dataset=digit_samples, processing_class=processor
        )
    model, processor = make_model(connector="qformer")
    mixed = captioned(digit_samples[:7]) + [
        {"messages": [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "No image."}]}
    ]
    trainer = VisionBridgeTrainer(
        model=model, args=_stage_args(tmp_path), train_dataset=mixed, processing_class=processor
    )
    with pytest.raises(ValueError, match=r"exactly one image; this batch's samples have \[.*0.*\] images"):
        trainer.train()


def test_the_stage_keeps_lora_and_the_llm_out(tmp_path):
    with pytest.raises(ValueError, match="trains only the Q-Former"):
        _stage_args(tmp_path, lora_vision=True)
    with pytest.raises(ValueError, match="trains only the Q-Former"):
        _stage_args(tmp_path, freeze_language_model=False)
    with pytest.raises(ValueError, match="trains only the Q-Former"):
        _stage_args(tmp_path, freeze_vision_tower=False)
    with pytest.raises(ValueError, match="trains only the Q-Former"):
        _stage_args(tmp_path, packing=True)
    with pytest.raises(ValueError, match="leave eval_strategy at 'no'"):
        _stage_args(tmp_path, eval_strategy="steps", eval_steps=2)


def test_the_stage_refuses_a_peft_model(make_model, digit_samples, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, processor = make_model(connector="qformer")
    # As an instruct stage leaves it: LoRA on the LLM, the connector saved whole.
    wrapped = get_peft_model(model, LoraConfig(target_modules=["q_proj"], modules_to_save=["connector"]))
    with pytest.raises(ValueError, match="keeps frozen|not a peft model"):
        VisionBridgeTrainer(
            model=wrapped, args=_stage_args(tmp_path), train_dataset=digit_samples, processing_class=processor
        )


def test_accumulated_steps_take_the_mean_of_their_batches_losses(make_model, digit_samples, tmp_path):
    """The Trainer leaves dividing by the accumulation steps to the loss when it passes num_items_in_batch."""
    model, processor = make_model(connector="qformer")
    trainer = VisionBridgeTrainer(
        model=model,
        args=_stage_args(tmp_path, gradient_accumulation_steps=4),
        train_dataset=captioned(digit_samples),
        processing_class=processor,
    )
    batch = trainer.data_collator(captioned(digit_samples)[:4])
    trainer.current_gradient_accumulation_steps = 4  # as the training loop sets it
    torch.manual_seed(0)
    alone = trainer.compute_loss(trainer.model, dict(batch))
    torch.manual_seed(0)
    accumulated = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=torch.tensor(40))
    torch.testing.assert_close(accumulated, alone / 4)


def test_the_command_runs_the_stage_then_the_llm_stage_from_its_folder(tmp_path, capsys):
    short = ["--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "--save_strategy", "no"]
    with pytest.raises(SystemExit):
        main(["train", "--stage", "qformer_pretrain", "--output_dir", str(tmp_path / "wrong"), *short])
    assert "pass --connector qformer, not mlp2x_gelu" in capsys.readouterr().err
    first, second = tmp_path / "stage1", tmp_path / "stage2"
    main(
        ["train", "--connector", "qformer", "--stage", "qformer_pretrain", "--digits_kinds", "caption"]
        + ["--output_dir", str(first), "--max_steps", "2", *short]
    )
    assert "next: visionbridge train --model" in capsys.readouterr().out
    assert (first / "model.safetensors").is_file() and not (first / "eval_report.json").exists()
    main(
        ["train", "--model", str(first), "--output_dir", str(second), "--max_steps", "2", "--eval_max_new_tokens", "2"]
        + short
    )
    assert (second / "adapter_model.safetensors").is_file() and (second / "eval_report.json").is_file()


def test_the_stage_does_not_resume_from_a_checkpoint(make_model, digit_samples, tmp_path):
    model, processor = make_model(connector="qformer")
    trainer = VisionBridgeTrainer(
        model=model,
        args=_stage_args(tmp_path),
        train_dataset=captioned(digit_samples),
        processing_class=processor,
    )
    with pytest.raises(ValueError, match="does not resume from a checkpoint"):
        trainer.train(resume_from_checkpoint=True)
