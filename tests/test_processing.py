import json

import numpy as np
import pytest
import torch
from PIL import Image

from visionbridge import VisionBridgeProcessor
from visionbridge.processing.images import pad_to_square, to_rgb

PIL_MODES = ["RGBA", "LA", "L", "P", "CMYK", "I;16", "1"]


def _image_in_mode(mode: str, size=(40, 24)) -> Image.Image:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", PIL_MODES)
def test_every_pil_mode_becomes_rgb_and_goes_through(make_model, mode):
    _, processor = make_model()
    image = _image_in_mode(mode)
    assert to_rgb(image).mode == "RGB"
    inputs = processor(images=image, text="<image>\nWhat is this?")
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    assert torch.isfinite(inputs["pixel_values"]).all()


def test_sixteen_bit_keeps_its_brightness():
    image = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert image.mode == "I;16"
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert to_rgb(image).getpixel((1, 1)) == (255, 255, 255)


def test_pad_to_square_uses_the_fill_and_keeps_the_picture_centred():
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    square = pad_to_square(image, (1, 2, 3))
    assert square.size == (40, 40)
    assert square.getpixel((0, 0)) == (1, 2, 3) and square.getpixel((20, 20)) == (200, 10, 10)


def test_real_photos_are_padded_with_the_mean_colour(make_model, photos):
    _, processor = make_model()
    assert processor.image_aspect_ratio == "pad"
    pixel_values = processor(images=photos, text=["<image> a", "<image> b"])["pixel_values"]
    assert pixel_values.shape == (2, 3, 32, 32)
    # The photos are 640x427 landscape: the top row is padding, which normalises to ~0 (the mean colour).
    assert pixel_values[:, :, 0, :].abs().max() < 0.05
    assert pixel_values[:, :, 16, :].abs().mean() > 0.2
    processor.image_aspect_ratio = "resize"
    stretched = processor(images=photos[0], text="<image>")["pixel_values"]
    assert stretched[:, :, 0, :].abs().mean() > 0.2


def test_each_image_token_expands_to_the_config_count(make_model):
    model, processor = make_model()
    assert processor.image_seq_length == model.config.image_seq_length == 16
    image = Image.new("RGB", (32, 32))
    inputs = processor(images=[[image, image], []], text=["<image> one <image> two", "no image here"])
    counts = (inputs["input_ids"] == model.config.image_token_id).sum(dim=1)
    assert counts.tolist() == [32, 0]
    assert inputs["pixel_values"].shape[0] == 2


def test_placeholder_and_image_counts_must_agree(make_model):
    _, processor = make_model()
    image = Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match=r"2 <image> placeholders \(per text: \[2\]\) but 1 images"):
        processor(images=image, text="<image><image>")
    with pytest.raises(ValueError, match="0 <image> placeholders"):
        processor(images=image, text="no placeholder")


def test_padding_is_left_for_generation_and_can_be_right_for_training(make_model):
    _, processor = make_model()
    texts = ["a", "a much longer text than the first"]
    left = processor(text=texts)
    assert left["attention_mask"][0, 0] == 0 and left["attention_mask"][0, -1] == 1
    right = processor(text=texts, padding_side="right")
    assert right["attention_mask"][0, 0] == 1 and right["attention_mask"][0, -1] == 0


def test_chat_template_with_image_parts_uses_the_default_vicuna_format(make_model):
    _, processor = make_model()
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": "And its colour?"},
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.endswith("USER: <image>\nWhat is this? ASSISTANT: A cat.</s>USER: And its colour? ASSISTANT:")
    assert prompt.startswith("A chat between a curious human")


def test_chat_template_of_the_language_model_is_used_when_it_has_one(make_model, components, tmp_path):
    from transformers import AutoTokenizer

    import visionbridge

    vision, language = components("clip", "qwen2")
    tokenizer = AutoTokenizer.from_pretrained(language)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer.save_pretrained(tmp_path / "lm")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(language).save_pretrained(tmp_path / "lm")
    _, processor = visionbridge.from_components(vision, str(tmp_path / "lm"))
    image = Image.new("RGB", (32, 32))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi"}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == (
        "<|im_start|>user\n<image>\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert inputs["pixel_values"].shape[0] == 1
    assert (inputs["input_ids"] == processor.image_token_id).sum() == processor.image_seq_length


def test_decode_round_trips(make_model):
    _, processor = make_model()
    ids = processor(text=["What digit is this?"])["input_ids"]
    assert processor.batch_decode(ids, skip_special_tokens=True) == ["What digit is this?"]
    assert processor.decode(ids[0], skip_special_tokens=True) == "What digit is this?"


def test_processor_save_load_reads_the_count_from_the_config(make_model, tmp_path):
    from transformers import AutoProcessor

    model, processor = make_model(image_aspect_ratio="resize")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    # The processor keeps a copy for folders without a config (adapters); beside a config.json, the config wins.
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert (saved["image_seq_length"], saved["image_aspect_ratio"]) == (16, "resize")
    (tmp_path / "processor_config.json").write_text(json.dumps({**saved, "image_seq_length": 5}))
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is VisionBridgeProcessor
    assert loaded.image_seq_length == 16 and loaded.image_aspect_ratio == "resize"
    image = Image.new("RGB", (32, 20), (9, 99, 199))
    texts = ["<image> x", "<image> a longer text"]
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(
            loaded(images=[image, image], text=texts)[key], processor(images=[image, image], text=texts)[key]
        )
    assert loaded(images=[image, image], text=texts)["attention_mask"][0, 0] == 0  # left padded after reload


def test_truncation_into_an_image_is_refused(make_model):
    _, processor = make_model()
    with pytest.raises(ValueError, match="truncation cut into an image"):
        processor(images=Image.new("RGB", (8, 8)), text="hello <image>", truncation=True, max_length=8)


def test_image_urls_are_not_fetched(make_model):
    _, processor = make_model()
    messages = [{"role": "user", "content": [{"type": "image", "url": "https://example.com/a.jpg"}]}]
    with pytest.raises(ValueError, match="local files only"):
        processor.apply_chat_template(messages, tokenize=True)


def test_chat_template_tokenize_accepts_the_usual_arguments(make_model):
    _, processor = make_model()
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (8, 8))}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert inputs["input_ids"].shape[0] == 1 and inputs["pixel_values"].shape[0] == 1


def test_the_placeholder_count_comes_from_the_models_config_where_the_folder_has_one(make_model, tmp_path):
    """config.json is the one source; a processor saved without it (beside an adapter) keeps the count it had."""
    model, processor = make_model()
    processor.save_pretrained(tmp_path / "alone")
    alone = VisionBridgeProcessor.from_pretrained(tmp_path / "alone")
    assert alone.image_seq_length == processor.image_seq_length == model.config.image_seq_length
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    saved = tmp_path / "model" / "processor_config.json"
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "image_seq_length": 1}))
    assert VisionBridgeProcessor.from_pretrained(tmp_path / "model").image_seq_length == model.config.image_seq_length
