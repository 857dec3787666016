"""Multi-turn chat as Qwen-VL offers it: `model.chat(processor, query, images, history) -> (response, history)`.

The history is a plain list of chat messages (`{"role": ..., "content": [parts]}`), the same form the processor's
chat template reads, so it can be stored and passed back later. Each image of a turn is labelled `Picture N:`,
N counting on from the images of earlier turns.
"""

from pathlib import Path

import torch


def image_count(messages: list[dict]) -> int:
    """Images shown so far in a chat history."""
    return sum(
        1
        for message in messages
        if not isinstance(message["content"], str)
        for part in message["content"]
        if part["type"] == "image"
    )


def user_message(query: str, images: list, first_number: int) -> dict:
    """A user turn: `Picture N:` and the image for each image (a PIL image or a local path), then the query."""
    content = []
    for number, image in enumerate(images, start=first_number):
        if isinstance(image, Path):
            image = str(image)
        content += [{"type": "text", "text": f"Picture {number}:"}, {"type": "image", "image": image}]
    return {"role": "user", "content": [*content, {"type": "text", "text": query}]}


def respond(model, processor, messages: list[dict], **generate_kwargs) -> str:
    """The model's answer to a chat that ends with a user turn; generate_kwargs go to `model.generate`."""
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True).to(model.device)
    generate_kwargs.setdefault("pad_token_id", processor.tokenizer.pad_token_id)
    with torch.inference_mode():
        output = model.generate(**inputs, **generate_kwargs)  # [1, T + new]
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def chat(
    model, processor, query: str, images=None, history: list[dict] | None = None, **generate_kwargs
) -> tuple[str, list[dict]]:
    """Answer `query` about `images` (one, or a list: PIL images or local file paths) with `history` as context.
    Returns the answer and a new history that ends with this turn; the history passed in is left unchanged."""
    history = list(history or [])
    if images is None:
        images = []
    elif not isinstance(images, (list, tuple)):
        images = [images]
    messages = [*history, user_message(query, list(images), image_count(history) + 1)]
    response = respond(model, processor, messages, **generate_kwargs)
    return response, [*messages, {"role": "assistant", "content": [{"type": "text", "text": response}]}]
