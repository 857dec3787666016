"""Property tests of the processor and the collator on random text, placeholder counts, image sizes and modes.

Whatever goes in, either the output is whole (every image has its image_seq_length placeholder tokens and one
pixel_values row; every supervised label lies in an assistant answer) or a ValueError says what was wrong.
Nothing else may be raised.
"""

import copy

import numpy as np
import pytest
import torch
from answer_spans import answer_characters
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from visionbridge.trainer.bad_samples import RECORD, SKIPPED
from visionbridge.trainer.collator import IGNORE_INDEX, VisionBridgeCollator

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces of the placeholder, of the chat templates' own markers, of Jinja and of grounding, to splice into text.
FRAGMENTS = [
    "<image",
    "image>",
    "<",
    ">",
    "<im",
    "<<",
    "ASSISTANT:",
    "USER: ",
    "</s>",
    "<s>",
    "<|im_start|>assistant\n",
    "<|im_end|>\n",
    "{{ messages }}",
    "{% endfor %}",
    "<img>a.jpg</img>",
    "<ref>x</ref><box>(1,2),(3,4)</box>",
    "\u2028",
    "\r\n",
    "\x00",
    " ",
]
TEXT = st.lists(st.one_of(st.text(max_size=10), st.sampled_from(FRAGMENTS)), max_size=5).map("".join)
MODES = ["RGB", "L", "1", "P", "PA", "RGBA", "RGBa", "LA", "La", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F"]


@st.composite
def images(draw) -> Image.Image:
    """An image of any common PIL mode, 1 to 40 pixels a side, sometimes a strip up to 2500 pixels long."""
    short, long = draw(st.integers(1, 40)), draw(st.one_of(st.integers(1, 40), st.sampled_from([300, 2500])))
    width, height = (short, long) if draw(st.booleans()) else (long, short)
    pixels = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, (height, width, 4), dtype=np.uint8)
    mode = draw(st.sampled_from(MODES))
    if mode == "I;16":
        return Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    rgba = Image.fromarray(pixels, "RGBA")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return rgba.convert(mode) if mode != "La" else rgba.convert("LA").convert("La")
    return rgba.convert("RGB").convert(mode)


@st.composite
def texts_with_placeholders(draw) -> str:
    """Random text with 0-3 `<image>` placeholders between its pieces."""
    count = draw(st.integers(0, 3))
    return "<image>".join(draw(TEXT) for _ in range(count + 1))


@pytest.fixture(scope="module")
def processors(make_model):
    """The default (Vicuna) template over a llama tokenizer, and ChatML over a qwen2 tokenizer."""
    llama = make_model(language="llama")[1]
    chatml = copy.deepcopy(make_model(language="qwen2")[1])
    chatml.chat_template = CHATML_TEMPLATE
    chatml.tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    return {"llama": llama, "chatml": chatml}


@FUZZ
@given(
    texts=st.lists(texts_with_placeholders(), min_size=1, max_size=3),
    extra_images=st.one_of(st.just(0), st.integers(-2, 2)),
    pool=st.lists(images(), min_size=1, max_size=3),
    max_length=st.one_of(st.none(), st.integers(1, 80)),
    name=st.sampled_from(["llama", "chatml"]),
)
def test_processor_placeholders_always_match_features(processors, texts, extra_images, pool, max_length, name):
    processor = processors[name]
    placeholders = [text.count("<image>") for text in texts]
    count = max(0, sum(placeholders) + extra_images)
    given_images = [pool[index % len(pool)] for index in range(count)]
    truncation = {} if max_length is None else {"truncation": True, "max_length": max_length}
    try:
        inputs = processor(images=given_images or None, text=texts, **truncation)
    except ValueError as error:
        # Only a count mismatch, or truncation into an image, may be refused.
        assert count != sum(placeholders) or (max_length is not None and "truncation cut into an image" in str(error))
        event(f"ValueError: {str(error)[:60]}")
        return
    assert count == sum(placeholders)
    event(f"{count} images")
    image_tokens = (inputs["input_ids"] == processor.image_token_id).sum(-1)  # [B]
    assert image_tokens.tolist() == [n * processor.image_seq_length for n in placeholders]
    if count:
        assert inputs["pixel_values"].shape == (count, 3, 32, 32)
        assert torch.isfinite(inputs["pixel_values"]).all()
    else:
        assert "pixel_values" not in inputs


@st.composite
def chat_samples(draw) -> dict:
    """Conversations, mostly well formed, whose texts and image counts are random: placeholders and images may
    disagree, roles may come in any order."""
    roles = ["user", "assistant"] * draw(st.integers(1, 2))
    if draw(st.booleans()):
        roles = ["system", *roles]
    if draw(st.integers(0, 9)) == 0:
        roles = draw(st.permutations(roles))[: draw(st.integers(1, len(roles)))]
    messages = [{"role": role, "content": draw(texts_with_placeholders())} for role in roles]
    placeholders = sum(message["content"].count("<image>") for message in messages)
    count = placeholders if draw(st.integers(0, 4)) else max(0, placeholders + draw(st.sampled_from([-1, 1])))
    return {"messages": messages, "images": [draw(images()) for _ in range(count)]}


@FUZZ
@given(
    samples=st.lists(chat_samples(), min_size=1, max_size=3),
    name=st.sampled_from(["llama", "chatml"]),
    skip=st.booleans(),
)
def test_collator_keeps_placeholders_whole_and_labels_inside_answers(processors, samples, name, skip):
    processor = processors[name]
    collator = VisionBridgeCollator(processor, on_bad_sample="skip" if skip else "raise")
    samples = [{**sample, RECORD: index} for index, sample in enumerate(samples)]
    good = []
    for sample in samples:
        try:
            collator.encode(sample["messages"], len(sample["images"]))
            good.append(sample)
        except ValueError:
            pass
    try:
        batch = collator(samples)
    except ValueError as error:
        # Raised for a bad sample, or under skip when no sample is good.
        assert len(good) < len(samples) if not skip else not good
        assert ("Record" in str(error)) if not skip else "All" in str(error)
        event(f"ValueError: {str(error).partition('Sample')[2][:60]}")
        return
    assert len(good) == len(samples) or skip
    assert len(batch.get(SKIPPED, [])) == len(samples) - len(good)
    assert batch["input_ids"].shape[0] == len(good)
    assert len(batch.get("pixel_values", [])) == sum(len(sample["images"]) for sample in good)
    event(f"kept {len(good)} of {len(samples)}")

    for row, sample in enumerate(good):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]  # [T]
        assert int((ids == processor.image_token_id).sum()) == len(sample["images"]) * processor.image_seq_length
        full, inside = answer_characters(processor, sample["messages"])
        encoding = processor.tokenizer(full, add_special_tokens=processor.tokenizer_adds_special_tokens)
        offsets = processor.tokenizer(
            full, add_special_tokens=processor.tokenizer_adds_special_tokens, return_offsets_mapping=True
        )["offset_mapping"]
        assert ids.tolist() == encoding["input_ids"]
        labels = batch["labels"][row][: len(ids)]
        for position, (start, end) in enumerate(offsets):
            if int(labels[position]) != IGNORE_INDEX:
                # A supervised token is the token itself, no image placeholder, and part of an answer's text.
                assert int(labels[position]) == int(ids[position]) != processor.image_token_id
                assert start < end and inside[start:end].any()
