"""Where the assistant answers are in a rendered conversation, found from the chat template alone: the reference
the collator's label masks are checked against."""

import torch


def answer_characters(processor, messages: list[dict]) -> tuple[str, torch.Tensor]:
    """Per character of the expanded conversation: does it belong to an assistant answer (end marker included)?"""

    def render(upto: int, prompt: bool) -> str:
        text = processor.apply_chat_template(messages[:upto], add_generation_prompt=prompt)
        return text.replace("<image>", "<image>" * processor.image_seq_length)

    full = render(len(messages), False)
    inside = torch.zeros(len(full), dtype=torch.bool)
    for turn, message in enumerate(messages):
        if message["role"] == "assistant":
            inside[len(render(turn, True)) : len(render(turn + 1, False))] = True
    return full, inside
