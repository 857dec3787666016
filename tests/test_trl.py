"""TRL 1.16 and VisionBridge, as the README describes it: SFTTrainer and DPOTrainer prepare image chats with the
VisionBridge processor, and their first training step fails where their fused LM head asks the model for a
backbone that returns `last_hidden_state`."""

import copy

import pytest
import transformers
from datasets import Dataset
from packaging.version import Version
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

# transformers 5 exposes a VLM's backbone as `base_model`; TRL reads `model` before 5.
NO_BACKBONE = (
    "no attribute 'last_hidden_state'"
    if Version(transformers.__version__) >= Version("5")
    else "'VisionBridgeForConditionalGeneration' object has no attribute 'model'"
)
PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What digit is this?"}]}]


def _answer(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def _settings(tmp_path) -> dict:
    return dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True)


def test_sft_trainer_reads_visionbridge_image_chats_but_cannot_train(make_model, digit_samples, tmp_path):
    model, processor = make_model()
    rows = [
        {"images": sample["images"], "prompt": PROMPT, "completion": _answer(sample["messages"][1]["content"])}
        for sample in digit_samples[:8]
    ]
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**_settings(tmp_path)),
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["pixel_values"].shape[0] == 4  # one image per sample, through VisionBridgeProcessor
    assert (batch["input_ids"] == processor.image_token_id).sum() == 4 * processor.image_seq_length
    with pytest.raises(AttributeError, match=NO_BACKBONE):
        trainer.train()


def test_dpo_trainer_reads_visionbridge_preference_pairs_but_cannot_train(make_model, digit_samples, tmp_path):
    model, processor = make_model()
    rows = [
        {
            "images": sample["images"],
            "prompt": PROMPT,
            "chosen": _answer(sample["messages"][1]["content"]),
            "rejected": _answer("It is 0."),
        }
        for sample in digit_samples[:8]
    ]
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=DPOConfig(**_settings(tmp_path)),
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
    )
    assert "pixel_values" in next(iter(trainer.get_train_dataloader()))
    with pytest.raises(AttributeError, match=NO_BACKBONE):
        trainer.train()
