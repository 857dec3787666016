"""Data that never silently drops an image or an answer: mixed file formats, blank answers, images over the pixel
limit or without pixels, malformed records, images as arrays, samples dropped for their length counted across
dataloader workers, and an image token other than "<image>"."""

import json
import logging

import numpy as np
import pytest
import torch
from cpu_args import cpu_args
from PIL import Image

import visionbridge
from visionbridge.trainer import VisionBridgeTrainer
from visionbridge.trainer.bad_samples import RECORD, SKIPPED
from visionbridge.trainer.collator import VisionBridgeCollator
from visionbridge.trainer.data import load_training_data


def _write(path, records):
    path.write_text(json.dumps(records))
    return path


def _llava(image, question="<image>\nWhat is this?", answer="A square."):
    record = {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    return record if image is None else {**record, "image": image}


def _qwen(image, question="What is this?", answer="A square."):
    turns = [
        {"from": "user", "value": f"Picture 1: <img>{image}</img>\n{question}"},
        {"from": "assistant", "value": answer},
    ]
    return {"conversations": turns}


@pytest.fixture
def folder(tmp_path):
    """tmp_path/images with red.png and blue.png, 8x8."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8), "red").save(images / "red.png")
    Image.new("RGB", (8, 8), "blue").save(images / "blue.png")
    return images


@pytest.fixture(scope="module")
def processor(make_model):
    return make_model()[1]


def test_a_file_mixing_llava_and_qwen_records_reads_each_in_its_format(tmp_path, folder):
    path = _write(tmp_path / "mixed.json", [_llava("red.png"), _qwen("blue.png"), _llava(None, "Hi?")])
    data = load_training_data(path, image_folder=folder)
    assert [record["images"] for record in data.records] == [[str(folder / "red.png")], [str(folder / "blue.png")], []]
    assert data[0]["messages"][0]["content"] == "<image>\nWhat is this?"
    assert data[1]["messages"][0]["content"] == "Picture 1: <image>\nWhat is this?"
    assert data[0]["images"][0].getpixel((0, 0)) == (255, 0, 0)


def test_a_record_in_both_formats_is_refused_naming_it(tmp_path, folder):
    both = {**_qwen("blue.png"), "image": "red.png"}
    path = _write(tmp_path / "both.json", [_llava("red.png"), both])
    with pytest.raises(ValueError, match=rf"record 1 of {path} has both an 'image' key \(LLaVA\) and <img> tags"):
        load_training_data(path, image_folder=folder)


@pytest.mark.parametrize("answer", ["", "   \n"])
def test_a_blank_answer_is_refused_or_skipped_naming_record_and_turn(tmp_path, folder, processor, answer):
    path = _write(tmp_path / "data.json", [_llava("red.png"), _llava("red.png", answer=answer)])
    message = rf"record 1 of {path}, turn 1: the assistant answer is empty"
    with pytest.raises(ValueError, match=message):
        load_training_data(path, image_folder=folder)
    skipping = load_training_data(path, image_folder=folder, on_bad_sample="skip")
    assert list(skipping.errors) == [1]
    with pytest.raises(ValueError, match=message):
        skipping[1]
    # Samples given to the collator directly are checked there.
    blank = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": answer}], "images": []}
    with pytest.raises(ValueError, match=r"Sample 0, turn 1: the assistant answer is empty"):
        VisionBridgeCollator(processor)([blank])
    good = {**blank, "messages": [blank["messages"][0], {"role": "assistant", "content": "Hello."}]}
    batch = VisionBridgeCollator(processor, on_bad_sample="skip")([{**good, RECORD: 0}, {**blank, RECORD: 1}])
    assert batch["input_ids"].shape[0] == 1 and batch[SKIPPED][0].startswith("record 1 of the training data")


def test_an_image_over_the_pixel_limit_is_refused_below_twice_the_limit(tmp_path, folder, processor, monkeypatch):
    Image.new("RGB", (100, 100)).save(folder / "large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10,000 pixels: Pillow itself would only warn
    path = _write(tmp_path / "data.json", [_llava("large.png")])
    with pytest.raises(Image.DecompressionBombError) as error:
        load_training_data(path, image_folder=folder)[0]
    assert f"image {folder / 'large.png'} of record 0 in {path}" in str(error.value)
    assert "100x100 = 10000 pixels is more than PIL.Image.MAX_IMAGE_PIXELS = 6000" in str(error.value)
    with pytest.raises(Image.DecompressionBombError, match="MAX_IMAGE_PIXELS = 6000"):
        processor(images=str(folder / "large.png"), text="<image>")


def test_a_role_that_is_not_a_string_names_record_and_turn(tmp_path, folder):
    record = {
        "image": "red.png",
        "conversations": [{"from": ["human"], "value": "<image>"}, {"from": "gpt", "value": "A"}],
    }
    path = _write(tmp_path / "data.json", [_llava("red.png"), record])
    with pytest.raises(ValueError, match=rf"record 1 of {path}, turn 0: expected .*found .*\['human'\]"):
        load_training_data(path, image_folder=folder)
    assert list(load_training_data(path, image_folder=folder, on_bad_sample="skip").errors) == [1]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_nested_too_deep_is_named(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=rf"{path}(, line 1)?: JSON nested deeper than Python's recursion limit"):
        load_training_data(path)


def test_an_image_without_pixels_is_refused_naming_it(processor):
    with pytest.raises(ValueError, match=r"Image 1 is 0x0 pixels: it has no pixels to see"):
        processor(images=[Image.new("RGB", (4, 4)), Image.new("RGB", (0, 0))], text="<image> <image>")
    sample = {
        "messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "Nothing."}],
        "images": [Image.new("RGB", (5, 0))],
        RECORD: 3,
    }
    with pytest.raises(ValueError, match=r"Record 3 of the training data: Image 0 is 5x0 pixels"):
        VisionBridgeCollator(processor)([sample])


def test_images_given_as_arrays_or_tensors_become_the_same_pixels(processor):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 12, 3), dtype=np.uint8)  # [H, W, C]
    expected = processor(images=Image.fromarray(pixels), text="<image>")["pixel_values"]
    as_tensor = torch.from_numpy(pixels).permute(2, 0, 1)  # [C, H, W], as torchvision gives them
    as_floats = as_tensor.float() / 255
    for image in (pixels, as_tensor, as_floats):
        assert torch.allclose(processor(images=image, text="<image>")["pixel_values"], expected, atol=1e-5)
    batch = processor(images=np.stack([pixels, pixels]), text="<image> <image>")["pixel_values"]  # [N, H, W, C]
    assert torch.allclose(batch, expected.expand(2, -1, -1, -1), atol=1e-5)


def _samples(count: int, long_every: int) -> list[dict]:
    """Digit-like samples; every `long_every`-th has a question far over a short model_max_length."""
    image = Image.new("L", (8, 8), 128)
    return [
        {
            "messages": [
                {"role": "user", "content": "<image>" + (" Tell me more." * 60 if index % long_every == 0 else "?")},
                {"role": "assistant", "content": "A square."},
            ],
            "images": [image],
        }
        for index in range(count)
    ]


@pytest.mark.parametrize("workers", [0, 2])
def test_samples_dropped_for_their_length_are_counted_with_dataloader_workers(make_model, tmp_path, workers, caplog):
    model, processor = make_model()
    samples = _samples(16, long_every=4)
    short = len(VisionBridgeCollator(processor).encode(samples[1]["messages"], 1)[0])
    args = cpu_args(
        tmp_path / "run",
        per_device_train_batch_size=4,
        num_train_epochs=1,
        model_max_length=short + 8,
        dataloader_num_workers=workers,
    )
    trainer = VisionBridgeTrainer(model=model, args=args, train_dataset=samples, processing_class=processor)
    with caplog.at_level(logging.WARNING):
        metrics = trainer.train().metrics
    assert metrics["dropped_samples"] == 4
    warning = next(record.getMessage() for record in caplog.records if "were dropped" in record.getMessage())
    assert warning.startswith("4 samples did not fit model_max_length")
    assert f"more than model_max_length={short + 8}" in warning


@pytest.mark.parametrize("format", ["llava", "qwen"])
def test_a_model_with_its_own_image_token_trains_on_llava_and_qwen_files(components, tmp_path, folder, format):
    torch.manual_seed(0)
    model, processor = visionbridge.from_components(*components(), image_token="<|image|>")
    record = _llava("red.png") if format == "llava" else _qwen("red.png")
    data = load_training_data(_write(tmp_path / "data.json", [record] * 4), image_folder=folder)
    args = cpu_args(tmp_path / "run", per_device_train_batch_size=2, max_steps=2)
    trainer = VisionBridgeTrainer(model=model, args=args, train_dataset=data, processing_class=processor)
    assert "<|image|>" in data[0]["messages"][0]["content"] and "<image>" not in data[0]["messages"][0]["content"]
    trainer.train()
    assert trainer.state.global_step == 2
