"""Bad training data: each kind of bad file, image or record gets an error naming it, or is skipped and reported."""

import io
import json
import logging

import datasets
import numpy as np
import pytest
import torch
from cpu_args import cpu_args
from PIL import Image
from transformers import HfArgumentParser

from visionbridge.processing.images import shrink_for_square, to_rgb
from visionbridge.trainer import VisionBridgeTrainer, VisionBridgeTrainingArguments
from visionbridge.trainer.bad_samples import BAD_SAMPLE, RECORD, SKIPPED, IndexedSamples
from visionbridge.trainer.collator import VisionBridgeCollator
from visionbridge.trainer.data import load_training_data


def _turns(*pairs):
    return [{"from": role, "value": value} for role, value in pairs]


def _llava(image: str | None, question: str = "<image>\nWhat is this?", answer: str = "A picture.") -> dict:
    record = {"conversations": _turns(("human", question), ("gpt", answer))}
    return record if image is None else {**record, "image": image}


def _write_json(path, records):
    path.write_text(json.dumps(records))
    return path


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


# Files that are not images a decoder can finish: each must fail with the file, record and data file named.
BAD_FILES = {
    "empty.png": b"",
    "truncated.jpg": _jpeg_bytes()[: len(_jpeg_bytes()) // 2],  # the header whole, the pixels cut
    "garbage.jpg": bytes(np.random.default_rng(1).integers(0, 255, 2000, dtype=np.uint8)),
    "text.png": b"this is not a picture\n",
}


@pytest.fixture
def images(tmp_path):
    """tmp_path/images with a good JPEG (good.jpg) and the BAD_FILES."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(_jpeg_bytes())
    for name, data in BAD_FILES.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_unreadable_image_names_file_record_and_data_file(tmp_path, images, name):
    path = _write_json(tmp_path / "data.json", [_llava("good.jpg"), _llava(name)])
    data = load_training_data(path, image_folder=images)
    assert data[0]["images"][0].size == (64, 48)
    with pytest.raises(OSError, match="Cannot read image") as error:
        data[1]
    assert str(images / name) in str(error.value) and "record 1" in str(error.value) and str(path) in str(error.value)


def test_undecodable_image_in_a_datasets_table_names_the_row():
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": _jpeg_bytes(), "path": None}, {"bytes": BAD_FILES["garbage.jpg"], "path": None}]},
        features=datasets.Features({"image": datasets.Image()}),
    ).add_column("text", ["a", "b"])
    data = load_training_data(table)
    assert data[0]["images"][0].size == (64, 48)
    with pytest.raises(OSError, match=r"Cannot read the image of row 1 of the datasets.Dataset passed in"):
        data[1]


def test_decompression_bomb_names_the_file_and_the_setting(tmp_path, images, monkeypatch):
    Image.new("RGB", (100, 100)).save(images / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels is more than twice this: Pillow refuses
    path = _write_json(tmp_path / "data.json", [_llava("huge.png")])
    with pytest.raises(Image.DecompressionBombError) as error:
        load_training_data(path, image_folder=images)[0]
    message = str(error.value)
    assert str(images / "huge.png") in message and "record 0" in message and str(path) in message
    assert "MAX_IMAGE_PIXELS" in message


def test_a_one_by_4000_pixel_line_is_shrunk_before_padding_and_stays_visible(tmp_path, make_model):
    _, processor = make_model()
    line = Image.new("L", (1, 4000), 0)  # a black vertical line
    shrunk = shrink_for_square(line)
    assert shrunk.size == (1, 1024)  # padded, it is a 1024x1024 square, not a 4000x4000 one
    assert shrink_for_square(Image.new("RGB", (640, 427))).size == (640, 427)  # ordinary photos are untouched
    line.save(tmp_path / "line.png")
    data = load_training_data(_write_json(tmp_path / "data.json", [_llava("line.png")]))
    pixel_values = processor(images=data[0]["images"], text="<image>")["pixel_values"]
    assert pixel_values.shape == (1, 3, 32, 32) and torch.isfinite(pixel_values).all()
    # Padding is the mean colour (about 0 once normalised); the line, 1/32 of a column wide once the square is
    # resized, darkens the middle columns.
    columns = pixel_values[0].mean(dim=(0, 1))  # [W]
    assert columns[:8].abs().max() < 0.02 and columns[15:17].min() < columns[:8].max() - 0.02
    # A strip Pillow opens without complaint, whose square would be 60000x60000 pixels (10 GB), goes through.
    assert processor(images=Image.new("RGB", (60000, 1)), text="<image>")["pixel_values"].shape == (1, 3, 32, 32)


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 3), (1, 3)])
def test_tiny_images_keep_their_colour(make_model, size):
    # A 1x1 or 3x3 array looks channels-first to a shape guess; the colour must come through as red.
    _, processor = make_model()
    pixel_values = processor(images=Image.new("RGB", size, (255, 0, 0)), text="<image>")["pixel_values"]
    red, green, blue = pixel_values[0, :, 16, 16].tolist()
    assert red > 1.5 and green < -1.5 and blue < -1.0


def _palette(transparent: bool) -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    if transparent:
        image.info["transparency"] = 1  # palette index 1 (blue) is see-through
    return image


# Each mode as a file holds it, and the RGB it must become: alpha over a white background, 16 bits scaled to 8.
MODES = {
    "I;16": (Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16)), [(0,) * 3, (128,) * 3, (255,) * 3]),
    "CMYK": (Image.new("CMYK", (1, 1), (0, 255, 255, 0)), [(255, 0, 0)]),
    "P": (_palette(transparent=False), [(255, 0, 0), (0, 0, 255)]),
    "P with transparency": (_palette(transparent=True), [(255, 0, 0), (255, 255, 255)]),
    "RGBA": (Image.frombytes("RGBA", (2, 1), bytes([0, 0, 0, 255, 0, 0, 0, 0])), [(0, 0, 0), (255, 255, 255)]),
    "half-transparent RGBA": (Image.new("RGBA", (1, 1), (0, 0, 0, 128)), [(127, 127, 127)]),
    "LA": (Image.frombytes("LA", (2, 1), bytes([40, 255, 40, 0])), [(40, 40, 40), (255, 255, 255)]),
}


@pytest.mark.parametrize("name", sorted(MODES))
def test_image_modes_become_the_right_rgb_after_a_round_trip_through_a_file(tmp_path, name):
    image, expected = MODES[name]
    image.save(tmp_path / "image.png" if image.mode != "CMYK" else tmp_path / "image.tiff")
    saved = next(tmp_path.glob("image.*"))
    data = load_training_data(_write_json(tmp_path / "data.json", [_llava(saved.name)]))
    (loaded,) = data[0]["images"]
    assert loaded.mode == image.mode
    rgb = to_rgb(loaded)
    assert rgb.mode == "RGB"
    found = [rgb.getpixel((x, 0)) for x in range(rgb.width)]
    assert all(
        abs(a - b) <= 1 for pixel, want in zip(found, expected, strict=True) for a, b in zip(pixel, want, strict=True)
    )


def test_json_with_a_byte_order_mark_reads_and_other_encodings_are_named(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([_llava(None, "Hi?")]).encode())
    assert len(load_training_data(path)) == 1
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(_llava(None, "caf\u00e9?"), ensure_ascii=False).encode("latin-1") + b"\n")
    with pytest.raises(ValueError, match=rf"{latin} is not UTF-8 text: byte \d+ is b'\\xe9'"):
        load_training_data(latin)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("<ref>cat</ref><box>(10,20),(1000,400)</box>", r"coordinate outside \[0, 1000\)"),
        ("<ref>cat</ref><box>(10,20),(300,4000)</box>", r"coordinate outside \[0, 1000\)"),
        ("<ref>cat</ref><box>(-5,20),(300,400)</box>", r"1 <box> tags but 0 boxes"),
        ("<ref>cat</ref><box>(0.1,0.2),(0.3,0.4)</box>", r"1 <box> tags but 0 boxes"),
        ("<box>(1,2),(3,4)</box> and <box>(1,2)</box>", r"2 <box> tags but 1 boxes"),
    ],
)
@pytest.mark.parametrize("fmt", ["llava", "qwen"])
def test_boxes_outside_the_grid_name_record_turn_and_file(tmp_path, answer, message, fmt):
    good = "<ref>cat</ref><box>(0,0),(999,999)</box>"
    roles = ("human", "gpt") if fmt == "llava" else ("user", "assistant")
    records = [{"conversations": _turns((roles[0], "Where?"), (roles[1], text))} for text in (good, answer)]
    path = _write_json(tmp_path / "data.json", records)
    with pytest.raises(ValueError, match=message) as error:
        load_training_data(path, format=fmt)
    assert f"record 1 of {path}, turn 1" in str(error.value)
    assert len(load_training_data(_write_json(tmp_path / "good.json", records[:1]), format=fmt)) == 1


@pytest.fixture(scope="module")
def processor(make_model):
    return make_model()[1]


def _sample(question: str, images: list, record: int | None = None) -> dict:
    sample = {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "Yes."}],
        "images": images,
    }
    return sample if record is None else {**sample, RECORD: record}


def test_collator_skips_a_bad_sample_and_says_why(processor):
    good, bad = Image.new("RGB", (8, 8)), [Image.new("RGB", (8, 8))] * 2
    samples = [_sample("<image> ok?", [good], record=4), _sample("<image> two?", bad, record=7)]
    samples.append({RECORD: 9, BAD_SAMPLE: "FileNotFoundError: Image x.jpg of record 9 in d.json does not exist."})
    batch = VisionBridgeCollator(processor, on_bad_sample="skip")(samples)
    assert batch["input_ids"].shape[0] == 1 and batch["pixel_values"].shape[0] == 1
    first, second = batch[SKIPPED]
    assert first.startswith("record 7 of the training data: Sample 1:") and "1 <image> placeholders" in first
    assert second.startswith("record 9 of the training data:") and "x.jpg" in second
    assert SKIPPED not in VisionBridgeCollator(processor, on_bad_sample="skip")(samples[:1])


def test_collator_raises_naming_the_record(processor):
    samples = [_sample("<image> ok?", [Image.new("RGB", (8, 8))], record=4), _sample("<image> <image>", [], record=7)]
    with pytest.raises(ValueError, match=r"^Record 7 of the training data: Sample 1: .* 2 <image> placeholders"):
        VisionBridgeCollator(processor)(samples)
    # A lazily opened image whose data is cut short fails only when the collator converts it: a bad sample too,
    # told apart from the rest of the batch.
    truncated = _sample("<image>", [Image.open(io.BytesIO(BAD_FILES["truncated.jpg"]))], record=2)
    with pytest.raises(OSError, match=r"^Record 2 of the training data: .*truncated"):
        VisionBridgeCollator(processor)([samples[0], truncated])
    batch = VisionBridgeCollator(processor, on_bad_sample="skip")([samples[0], truncated])
    assert batch["pixel_values"].shape[0] == 1 and batch[SKIPPED][0].startswith("record 2 of the training data")


def test_a_batch_of_only_bad_samples_says_what_to_do(processor):
    samples = [_sample("no image", [Image.new("RGB", (8, 8))], record=index) for index in range(3)]
    with pytest.raises(ValueError, match=r"All 3 samples of the batch are bad .* Fix or remove these records") as error:
        VisionBridgeCollator(processor, on_bad_sample="skip")(samples)
    assert "record 0 of the training data" in str(error.value)


def test_indexed_samples_stand_in_for_a_sample_that_fails_to_load(tmp_path, images):
    data = load_training_data(_write_json(tmp_path / "d.json", [_llava("good.jpg"), _llava("gone.jpg")]), images)
    skipping = IndexedSamples(data, "skip")
    assert skipping[0][RECORD] == 0 and len(skipping[0]["images"]) == 1
    assert skipping[1][RECORD] == 1 and "gone.jpg" in skipping[1][BAD_SAMPLE]
    assert skipping.lengths(16) == data.lengths(16)
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        IndexedSamples(data, "raise")[1]


def _args(tmp_path, **kwargs) -> VisionBridgeTrainingArguments:
    return cpu_args(
        tmp_path / "out", **(dict(per_device_train_batch_size=4, num_train_epochs=1, logging_steps=1) | kwargs)
    )


class _BadData(torch.utils.data.Dataset):
    """7 LLaVA records from a file: a missing image (record 1), a corrupt one (4) and two placeholders for one image
    (6, caught when the file is read); then record 7, a sample that loads but that the collator cannot encode."""

    def __init__(self, tmp_path, images, on_bad_sample):
        records = [_llava("good.jpg") for _ in range(7)]
        records[1], records[4] = _llava("gone.jpg"), _llava("garbage.jpg")
        records[6] = {**_llava(None, "<image> <image> two?"), "image": "good.jpg"}
        path = _write_json(tmp_path / "data.json", records)
        self.records = load_training_data(path, image_folder=images, on_bad_sample=on_bad_sample)
        self.unencodable = _sample("No image here.", [Image.new("RGB", (8, 8))])

    def __len__(self):
        return len(self.records) + 1

    def __getitem__(self, index):
        return self.records[index] if index < len(self.records) else self.unencodable


def test_skip_trains_on_the_rest_and_reports_the_count_across_workers(make_model, tmp_path, images, caplog):
    model, processor = make_model()
    data = _BadData(tmp_path, images, "skip")
    args = _args(tmp_path, on_bad_sample="skip", dataloader_num_workers=1)
    eval_data = [_sample("<image> ok?", [Image.new("RGB", (8, 8))]), _sample("<image>", [])]
    trainer = VisionBridgeTrainer(
        model=model, args=args, train_dataset=data, eval_dataset=eval_data, processing_class=processor
    )
    with caplog.at_level(logging.WARNING):
        output = trainer.train()
    assert output.metrics["skipped_samples"] == 4 and trainer.state.global_step == 2
    messages = [record.getMessage() for record in caplog.records]
    warning = next(message for message in messages if "bad samples were skipped" in message)
    assert warning.startswith("4 bad samples were skipped (on_bad_sample='skip')")
    for record in range(8):
        assert (f"record {record} of the training data" in warning) == (record in (1, 4, 6, 7))
    assert "gone.jpg" in warning and "garbage.jpg" in warning and "placeholders: 2, images: 1" in warning
    assert np.isfinite(trainer.evaluate()["eval_loss"])  # the bad evaluation sample is left out, not fed to the model


def test_raise_stops_at_the_first_bad_record_naming_it(make_model, tmp_path, images):
    model, processor = make_model()
    args = _args(tmp_path)
    assert args.on_bad_sample == "raise"
    with pytest.raises(ValueError, match=r"record 6 of .*data.json: <image> placeholders and images do not match"):
        _BadData(tmp_path, images, "raise")
    data = load_training_data(_write_json(tmp_path / "data.json", [_llava("good.jpg"), _llava("gone.jpg")]), images)
    trainer = VisionBridgeTrainer(model=model, args=args, train_dataset=data, processing_class=processor)
    with pytest.raises(FileNotFoundError, match=r"gone.jpg of record 1 in .*data.json does not exist"):
        trainer.train()


def test_skip_needs_the_collator_that_knows_it(make_model, tmp_path):
    model, processor = make_model()
    data = [_sample("<image>", [Image.new("RGB", (8, 8))])]
    with pytest.raises(ValueError, match="on_bad_sample='skip' needs the VisionBridgeCollator"):
        VisionBridgeTrainer(
            model=model, args=_args(tmp_path, on_bad_sample="skip"), train_dataset=data, data_collator=list
        )
    with pytest.raises(ValueError, match="data_collator has on_bad_sample='raise' but the arguments say 'skip'"):
        VisionBridgeTrainer(
            model=model,
            args=_args(tmp_path, on_bad_sample="skip"),
            train_dataset=data,
            data_collator=VisionBridgeCollator(processor),
        )


def test_on_bad_sample_parses_from_the_command_line(tmp_path):
    parser = HfArgumentParser(VisionBridgeTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--on_bad_sample", "skip"])
    assert args.on_bad_sample == "skip"
    with pytest.raises(ValueError, match=r"on_bad_sample must be one of raise, skip, got 'ignore'"):
        VisionBridgeTrainingArguments(output_dir=str(tmp_path), on_bad_sample="ignore")
