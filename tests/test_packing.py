"""Padding-free packing: packed and padded batches of the same samples train on the same per-sample losses."""

import sys

import pytest
import torch
from test_trainer import _args
from transformers import AutoModelForCausalLM, HfArgumentParser, MistralConfig, OPTConfig, Qwen3Config

from visionbridge import VisionBridgeTrainer, VisionBridgeTrainingArguments
from visionbridge.trainer.collator import IGNORE_INDEX, VisionBridgeCollator
from visionbridge.trainer.packing import (
    PACKING_MODEL_TYPES,
    assign_rows,
    check_packing_support,
    per_sample_losses,
    row_length_for,
)


def chat(*turns: str) -> list[dict]:
    return [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(turns)]


@pytest.fixture(scope="module")
def samples(photos) -> list[dict]:
    """Lengths from a few tokens to a few hundred: one image, none, two images, a long multi-turn chat."""
    small = [photo.resize((64, 48)) for photo in photos]
    return [
        {"messages": chat("<image>\nWhat is in this picture?", "A temple by a lake."), "images": small[:1]},
        {"messages": chat("Say a digit.", "seven")},
        {
            "messages": chat("<image> and <image>: which has a flower?", "The second.", "And the first?", "A temple."),
            "images": small,
        },
        {"messages": chat(*[f"Describe the image in {n} words." if n % 2 else "A red flower." for n in range(1, 11)])},
    ]


def _forward(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits  # [B, T, V]


@pytest.mark.parametrize("row_length", [None, 200, 10_000])
@pytest.mark.parametrize("language", ["llama", "qwen2"])
def test_packed_and_padded_batches_give_the_same_per_sample_loss(make_model, samples, language, row_length):
    model, processor = make_model(language=language)
    padded = VisionBridgeCollator(processor)(samples)
    packed = VisionBridgeCollator(processor, packing=True, packing_row_length=row_length)(samples)
    lengths = padded["attention_mask"].sum(-1).tolist()
    rows = assign_rows(lengths, row_length)
    # lengths about 104, 77, 145, 200: the two shortest share a row of the longest's length or of 200 tokens
    assert lengths[0] + lengths[1] <= min(200, lengths[3]) < lengths[1] + lengths[2]
    assert rows == ([[0, 1, 2, 3]] if row_length == 10_000 else [[0, 1], [2], [3]])
    assert packed["input_ids"].shape == (len(rows), max(sum(lengths[i] for i in row) for row in rows))
    assert "attention_mask" not in packed and torch.equal(packed["pixel_values"], padded["pixel_values"])

    padded_losses = per_sample_losses(_forward(model, padded), padded["labels"])
    packed_losses = per_sample_losses(_forward(model, packed), packed["labels"], packed["position_ids"])
    assert padded_losses.shape == packed_losses.shape == (len(samples),)
    torch.testing.assert_close(packed_losses, padded_losses, rtol=1e-5, atol=1e-5)
    # The model's own loss (mean over every supervised token of the batch) agrees as well.
    torch.testing.assert_close(model(**packed).loss, model(**padded).loss, rtol=1e-5, atol=1e-5)


def test_rows_are_filled_first_fit_decreasing_and_images_follow_their_samples(make_model, samples):
    assert assign_rows([5, 9, 3, 4, 6]) == [[0, 3], [1], [2, 4]]  # 9 | 6+3 | 5+4, then back to sample order
    assert assign_rows([5, 9, 3], row_length=4) == [[0], [1], [2]]
    model, processor = make_model()
    # no image, two images, one image, no image: the third sample joins the first's row, ahead of the second
    batch = [samples[1], samples[2], samples[0], samples[3]]
    padded = VisionBridgeCollator(processor)(batch)
    packed = VisionBridgeCollator(processor, packing=True)(batch)
    order = [i for row in assign_rows(padded["attention_mask"].sum(-1).tolist()) for i in row]
    assert order == [0, 2, 1, 3]
    assert torch.equal(packed["pixel_values"], padded["pixel_values"][[2, 0, 1]])
    padded_losses = per_sample_losses(_forward(model, padded), padded["labels"])
    packed_losses = per_sample_losses(_forward(model, packed), packed["labels"], packed["position_ids"])
    torch.testing.assert_close(packed_losses, padded_losses[order], rtol=1e-5, atol=1e-5)


def test_positions_restart_and_no_label_crosses_a_join(make_model, samples):
    processor = make_model()[1]
    packed = VisionBridgeCollator(processor, packing=True, packing_row_length=10_000)(samples)  # one row
    padded = VisionBridgeCollator(processor)(samples)
    lengths = padded["attention_mask"].sum(-1).tolist()
    starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
    positions = packed["position_ids"][0]
    assert torch.equal((positions == 0).nonzero().flatten(), starts)
    assert torch.equal(positions, torch.cat([torch.arange(length) for length in lengths]))
    assert (packed["labels"][0, starts] == IGNORE_INDEX).all()
    # Apart from the first token of each sample, the labels are the padded rows' real tokens in order.
    real = padded["labels"][padded["attention_mask"].bool()]
    real[starts] = IGNORE_INDEX
    assert torch.equal(packed["labels"][0], real)


@pytest.mark.parametrize("language", ["llama", "qwen2"])
def test_a_packed_sample_cannot_see_the_one_before(make_model, samples, language):
    model, processor = make_model(language=language)
    packed = VisionBridgeCollator(processor, packing=True, packing_row_length=10_000)(samples[:3])  # one row
    first_end = int((packed["position_ids"][0] == 0).nonzero()[1])
    changed = {**packed, "input_ids": packed["input_ids"].clone()}
    text = changed["input_ids"][0, :first_end] != processor.image_token_id
    changed["input_ids"][0, :first_end][text] = processor.tokenizer.eos_token_id
    changed["pixel_values"] = packed["pixel_values"].clone()
    changed["pixel_values"][0] = changed["pixel_values"][0].flip(-1)  # the first sample's image, mirrored

    before, after = _forward(model, packed), _forward(model, changed)
    assert not torch.allclose(before[0, :first_end], after[0, :first_end])
    torch.testing.assert_close(after[0, first_end:], before[0, first_end:], rtol=0, atol=1e-6)


def _tiny_language_model(config_class, **sizes):
    config = config_class(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, **sizes)
    return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize(
    ("model_type", "language_model"),
    [
        ("mistral", lambda: _tiny_language_model(MistralConfig, intermediate_size=64, num_key_value_heads=2)),
        ("qwen3", lambda: _tiny_language_model(Qwen3Config, intermediate_size=64, num_key_value_heads=2, head_dim=8)),
        ("opt", lambda: _tiny_language_model(OPTConfig, ffn_dim=64, word_embed_proj_dim=32)),
    ],
)
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_only_the_listed_language_models_isolate_packed_samples(model_type, language_model, attention):
    """The support list is right: the listed models keep packed samples apart, OPT (refused) does not."""
    torch.manual_seed(0)
    model = language_model()
    model.config._attn_implementation = attention
    ids = torch.randint(4, 64, (1, 12))
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])
    changed = ids.clone()
    changed[0, :5] = 3
    with torch.no_grad():
        before, after = (model(input_ids=i, position_ids=position_ids, use_cache=False).logits for i in (ids, changed))
    isolated = torch.allclose(before[0, 5:], after[0, 5:], atol=1e-6)
    assert isolated == (model_type in PACKING_MODEL_TYPES)


def test_trainer_trains_with_packing(make_model, digit_samples, samples, tmp_path):
    model, processor = make_model()
    flags = ["--output_dir", str(tmp_path), "--packing", "--max_steps", "3", "--per_device_train_batch_size", "4"]
    flags += ["--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--use_cpu"]
    (args,) = HfArgumentParser(VisionBridgeTrainingArguments).parse_args_into_dataclasses(flags)
    (with_rows,) = HfArgumentParser(VisionBridgeTrainingArguments).parse_args_into_dataclasses(
        [*flags, "--packing_row_length", "256"]
    )
    assert args.packing and args.packing_row_length is None and with_rows.packing_row_length == 256
    trainer = VisionBridgeTrainer(
        model=model, args=args, train_dataset=digit_samples[:8] + samples, processing_class=processor
    )
    assert trainer.data_collator.packing
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3 and all(0 < entry["supervised_share"] < 1 for entry in logged)
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logged)


def test_flash_attention_gets_one_packed_row(make_model, samples):
    """Flash attention finds packed samples in a batch of one row only: the trainer packs one row, without row
    padding, for it (a row length does not apply there), and the model refuses several rows under it."""
    model, processor = make_model()
    language_model = model.language_model
    assert row_length_for(language_model, None) is None and row_length_for(language_model, 64) == 64
    packed = VisionBridgeCollator(processor, packing=True)(samples)
    one_row = VisionBridgeCollator(processor, packing=True, packing_row_length=sys.maxsize)(samples)
    assert packed["input_ids"].shape[0] == 3 and one_row["input_ids"].shape[0] == 1
    assert (one_row["input_ids"] != processor.tokenizer.pad_token_id).all()
    one_row_losses = per_sample_losses(_forward(model, one_row), one_row["labels"], one_row["position_ids"])
    rows_losses = per_sample_losses(_forward(model, packed), packed["labels"], packed["position_ids"])
    # The layouts order the samples differently; each sample's loss is its own.
    torch.testing.assert_close(one_row_losses.sort().values, rows_losses.sort().values, rtol=1e-5, atol=1e-5)

    language_model.config._attn_implementation = "flash_attention_2"
    try:
        check_packing_support(language_model)
        assert row_length_for(language_model, None) == sys.maxsize
        with pytest.raises(ValueError, match="packing_row_length=64 does not apply under flash_attention_2"):
            row_length_for(language_model, 64)
        with pytest.raises(ValueError, match="finds packed samples in a batch of one row only, and this one has 3"):
            model(**packed)
    finally:
        language_model.config._attn_implementation = "sdpa"


def test_packing_is_refused_where_samples_could_see_each_other(make_model, tmp_path):
    model, processor = make_model(language="opt")
    with pytest.raises(ValueError, match="'opt' would let packed samples attend to each other"):
        VisionBridgeTrainer(model=model, args=_args(tmp_path, packing=True), processing_class=processor)
    model, processor = make_model()
    with pytest.raises(ValueError, match="args.packing=True but the data_collator does not pack"):
        VisionBridgeTrainer(
            model=model,
            args=_args(tmp_path, packing=True),
            data_collator=VisionBridgeCollator(processor),
            processing_class=processor,
        )
