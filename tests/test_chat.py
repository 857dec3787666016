"""`model.chat`: Qwen-VL's multi-turn chat with labelled pictures, a reusable history, and grounding boxes drawn
from a chat answer."""

import json

import pytest
import torch
from PIL import Image

import visionbridge

QUESTIONS = ["What is in the first picture?", "And in this one?", "Which of the two is brighter?"]


def test_chat_keeps_history_over_three_turns_and_matches_generate(make_model, photos, tmp_path):
    model, processor = make_model()
    path = tmp_path / "china.png"
    photos[0].save(path)
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)

    first, history1 = model.chat(processor, QUESTIONS[0], images=str(path), **settings)
    second, history2 = model.chat(processor, QUESTIONS[1], images=[photos[1]], history=history1, **settings)
    json.dumps(history1)  # images given by path leave a history that can be stored as it is
    stored = json.loads(json.dumps(history1))
    assert model.chat(processor, QUESTIONS[1], images=[photos[1]], history=stored, **settings)[0] == second
    third, history3 = model.chat(processor, QUESTIONS[2], history=history2, **settings)

    assert len(history1) == 2 and len(history2) == 4 and len(history3) == 6  # earlier histories stay as they were
    assert [message["role"] for message in history3] == ["user", "assistant"] * 3
    assert [message["content"][-1]["text"] for message in history3[1::2]] == [first, second, third]

    # The same conversation built by hand, rendered by the processor and answered by generate.
    def user(label, question):
        parts = [{"type": "text", "text": label}, {"type": "image"}] if label else []
        return {"role": "user", "content": [*parts, {"type": "text", "text": question}]}

    def assistant(text):
        return {"role": "assistant", "content": [{"type": "text", "text": text}]}

    messages = [
        user("Picture 1:", QUESTIONS[0]),
        assistant(first),
        user("Picture 2:", QUESTIONS[1]),
        assistant(second),
        user(None, QUESTIONS[2]),
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.count(processor.image_token) == 2 and "Picture 2:" in prompt
    inputs = processor(
        images=[Image.open(path), photos[1]], text=prompt, add_special_tokens=processor.tokenizer_adds_special_tokens
    )
    output = model.generate(**inputs, **settings, pad_token_id=processor.tokenizer.pad_token_id)
    expected = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert third and third == expected


def test_chat_refuses_urls_and_leaves_history_alone(make_model, photos):
    model, processor = make_model()
    _, history = model.chat(processor, "Hello", images=photos[0], max_new_tokens=2)
    before = json.dumps(history, default=str)
    with pytest.raises(ValueError, match="local files only"):
        model.chat(processor, "And this?", images="https://example.com/cat.png", history=history, max_new_tokens=2)
    assert json.dumps(history, default=str) == before


def test_draw_boxes_on_a_chat_answer(make_model, photos):
    """The model is made to answer with a grounding box (each step allows only the next token of a fixed answer);
    the answer comes back through chat and draw_boxes outlines the box it names."""
    model, processor = make_model()
    target = "<ref>temple</ref><box>(100,200),(500,800)</box>"
    target_ids = processor.tokenizer(target, add_special_tokens=False)["input_ids"]
    eos = processor.tokenizer.eos_token_id
    prompt_length = {}

    def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        step = len(input_ids) - prompt_length.setdefault(batch_id, len(input_ids))
        return [target_ids[step] if step < len(target_ids) else eos]

    response, _ = model.chat(
        processor,
        "Where is the temple?",
        images=photos[0],
        max_new_tokens=len(target_ids) + 1,
        prefix_allowed_tokens_fn=allowed,
    )
    assert response == target
    image = photos[0]
    drawn = visionbridge.draw_boxes(image, response)
    x1, y1 = int(100 * image.width / 1000), int(200 * image.height / 1000)
    assert drawn.getpixel((x1, y1 + 10)) == (255, 0, 0) and image.getpixel((x1, y1 + 10)) != (255, 0, 0)
