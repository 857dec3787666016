"""LLaVA's `mm_use_im_start_end`: learned start/end embeddings around each image's placeholders, trained and saved
with the connector."""

import pytest
import torch
import transformers
from cpu_args import cpu_args
from fresh_interpreter import interpreter, saved_with_photo
from peft import PeftModel
from remote_load_check import run_check
from transformers import AutoModelForImageTextToText

from visionbridge import VisionBridgeProcessor
from visionbridge.trainer import VisionBridgeTrainer
from visionbridge.trainer.collator import VisionBridgeCollator
from visionbridge.trainer.lora import unwrap


def _wrapped_runs(ids: list[int], config) -> int:
    """Number of start, image_seq_length placeholders, end runs in `ids`; fails on any placeholder outside one."""
    start, end, image, length = (
        config.image_start_token_id,
        config.image_end_token_id,
        config.image_token_id,
        config.image_seq_length,
    )
    runs, position = 0, 0
    while position < len(ids):
        if ids[position] == start:
            assert ids[position + 1 : position + 1 + length] == [image] * length
            assert ids[position + 1 + length] == end
            runs, position = runs + 1, position + length + 2
        else:
            assert ids[position] not in (image, end), f"token {ids[position]} at {position} outside a wrapped image"
            position += 1
    return runs


def test_processor_and_collator_wrap_each_image_alike(make_model, photos, digit_samples):
    model, processor = make_model(mm_use_im_start_end=True)
    config = model.config
    assert processor.tokenizer.convert_ids_to_tokens([config.image_start_token_id, config.image_end_token_id]) == [
        "<im_start>",
        "<im_end>",
    ]
    inputs = processor(images=photos, text=["<image> and <image>: two photos"])
    assert _wrapped_runs(inputs["input_ids"][0].tolist(), config) == 2

    sample = {**digit_samples[0], "messages": [{**digit_samples[0]["messages"][0]}, digit_samples[0]["messages"][1]]}
    sample["messages"][0]["content"] = "<image> and <image>\nWhich digits?"
    sample["images"] = digit_samples[0]["images"] * 2
    collator = VisionBridgeCollator(processor)
    input_ids, labels = collator.encode(sample["messages"], num_images=2)
    assert _wrapped_runs(input_ids.tolist(), config) == 2
    boundary = (input_ids == config.image_start_token_id) | (input_ids == config.image_end_token_id)
    assert (labels[boundary] == -100).all()
    # The collator's sequence is the processor's, token for token, for the same rendered conversation.
    text = processor.apply_chat_template(sample["messages"])
    expected = processor(images=sample["images"], text=text, add_special_tokens=processor.tokenizer_adds_special_tokens)
    assert torch.equal(input_ids, expected["input_ids"][0])

    plain_model, plain = make_model()
    assert plain_model.image_boundary is None
    assert plain.image_start_token is None and "<im_start>" not in plain.tokenizer.get_vocab()
    plain_ids = plain(images=photos[0], text="<image>")["input_ids"][0]
    assert plain_ids.tolist() == [plain_model.config.image_token_id] * plain_model.config.image_seq_length


def test_boundary_starts_at_the_mean_embedding_and_moves_the_logits(make_model, photos):
    model, processor = make_model(mm_use_im_start_end=True)
    mean = model.get_input_embeddings().weight.float().mean(0)
    assert torch.equal(model.image_boundary.embeddings, torch.stack([mean, mean]))
    inputs = processor(images=photos[0], text="<image> a photo")
    with torch.no_grad():
        before = model(**inputs).logits
        model.image_boundary.embeddings[1] += 1.0
        after = model(**inputs).logits
    end = int((inputs["input_ids"][0] == model.config.image_end_token_id).nonzero())
    assert torch.equal(before[:, :end], after[:, :end]) and not torch.allclose(before[:, end:], after[:, end:])


def _train(model, processor, samples, tmp_path, **kwargs):
    args = cpu_args(
        tmp_path / "out",
        stage="instruct",
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        connector_lr=3e-3,
        max_steps=3,
        **kwargs,
    )
    return VisionBridgeTrainer(model=model, args=args, train_dataset=samples, processing_class=processor)


def test_boundary_trains_with_the_connector_and_reloads_exactly(make_model, digit_samples, tmp_path):
    model, processor = make_model(mm_use_im_start_end=True)
    base = tmp_path / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    reloaded = AutoModelForImageTextToText.from_pretrained(base).eval()
    inputs = VisionBridgeCollator(processor)(digit_samples[:2])
    inputs.pop("labels")
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)
    initial = model.image_boundary.embeddings.detach().clone()

    trainer = _train(model, processor, digit_samples[:12], tmp_path)
    groups = {group["name"]: group for group in trainer.create_optimizer().param_groups}
    trained = unwrap(trainer.model).image_boundary.modules_to_save["default"].embeddings
    assert any(parameter is trained for parameter in groups["connector"]["params"])
    assert groups["connector"]["lr"] == 3e-3
    batch = VisionBridgeCollator(processor)(digit_samples[:4])
    trainer.model.train()
    trainer.model(**batch).loss.backward()
    assert trained.grad is not None and (trained.grad.abs().sum(-1) > 0).all()  # both rows
    trainer.model.zero_grad(set_to_none=True)
    trainer.train()
    assert not torch.allclose(trained[0], initial[0]) and not torch.allclose(trained[1], initial[1])

    adapter = tmp_path / "adapter"
    trainer.save_model(adapter)
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**inputs).logits
        tuned = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), adapter).eval()
        assert torch.equal(tuned(**inputs).logits, expected)
        merged = tuned.merge_and_unload()
        merged.save_pretrained(tmp_path / "merged")
        assert torch.equal(merged.image_boundary.embeddings, trained)
        merged_again = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged").eval()
        assert torch.allclose(merged_again(**inputs).logits, expected, atol=1e-5)
    # The adapter folder's processor (no config.json beside it) expands images the same way.
    adapter_processor = VisionBridgeProcessor.from_pretrained(adapter)
    text = "<image> What digit is this?"
    assert torch.equal(
        adapter_processor(text=text, images=digit_samples[0]["images"])["input_ids"],
        processor(text=text, images=digit_samples[0]["images"])["input_ids"],
    )


@pytest.mark.parametrize("which", ["this line", "other line"])
def test_fresh_interpreter_loads_the_boundary_tokens(make_model, photos, tmp_path, which):
    python = interpreter(which)
    model, processor = make_model(mm_use_im_start_end=True)
    with torch.no_grad():
        model.image_boundary.embeddings.normal_()  # as after training: far from the mean a fresh init would give
    folder, photo, inputs, expected_logits = saved_with_photo(model, processor, photos[0], tmp_path)

    report, tensors = run_check(python, folder, photo, tmp_path)
    assert (report["transformers"] == transformers.__version__) == (which == "this line")
    assert torch.equal(tensors["input_ids"], inputs["input_ids"])
    assert _wrapped_runs(tensors["input_ids"][0].tolist(), model.config) == 1
    for entry in report["loaders"]:
        assert entry["differing_tensors"] == []
        logits = tensors[f"logits_{entry['name']}"]
        assert torch.allclose(logits, expected_logits, atol=1e-5), (logits - expected_logits).abs().max()


def test_train_command_sets_the_option(tmp_path, photos):
    from visionbridge.cli.train import build_model, parse_arguments

    model_args, _, _ = parse_arguments(["--output_dir", str(tmp_path), "--mm_use_im_start_end"])
    model, processor, base = build_model(model_args, tmp_path)
    assert model.config.mm_use_im_start_end and model.image_boundary is not None
    assert _wrapped_runs(processor(images=photos[0], text="<image>")["input_ids"][0].tolist(), model.config) == 1
    assert AutoModelForImageTextToText.from_pretrained(base).config.mm_use_im_start_end
