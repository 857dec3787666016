"""Answer spans in time linear in the conversation's length, with the labels of the reference (answer_spans.py)."""

import copy
import time

import pytest
import torch
from answer_spans import answer_characters

from visionbridge.trainer.collator import IGNORE_INDEX, VisionBridgeCollator

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
TEMPLATES = {
    "vicuna (the default)": None,
    "chatml": CHATML_TEMPLATE,
    # User text runs into "ASSISTANT:", and the generation prompt's space merges into the answer's first word.
    "glued": (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}{{- 'USER:' + message['content'] -}}"
        "{%- elif message['role'] == 'system' -%}{{- message['content'] -}}"
        "{%- else -%}{{- 'ASSISTANT: ' + message['content'] + eos_token -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'ASSISTANT: ' -}}{%- endif -%}"
    ),
    # LLaMA-2's: the system text inside the first question, and no generation prompt at all.
    "llama-2": (
        "{%- for message in messages if message['role'] != 'system' -%}"
        "{%- if message['role'] == 'user' -%}{{- bos_token + '[INST] ' -}}"
        "{%- if loop.first and messages[0]['role'] == 'system' -%}"
        "{{- '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' -}}{%- endif -%}"
        "{{- message['content'] + ' [/INST]' -}}"
        "{%- else -%}{{- ' ' + message['content'] + ' ' + eos_token -}}{%- endif -%}"
        "{%- endfor -%}"
    ),
    # Texts trimmed and answers numbered: the text around answers differs, so every prefix is rendered.
    "trimmed and numbered": (
        "{%- for message in messages -%}"
        "{{- message['role'] + ' ' + loop.index|string + ': ' + message['content']|trim + '\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'assistant ' + (messages|length + 1)|string + ': ' -}}{%- endif -%}"
    ),
}


@pytest.fixture(scope="module")
def processors(make_model) -> dict:
    llama = make_model(language="llama")[1]
    processors = {}
    for name, template in TEMPLATES.items():
        processor = copy.deepcopy(llama)
        processor.chat_template = template or processor.chat_template
        processor.tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
        processors[name] = processor
    return processors


def conversation(turns: int) -> list[dict]:
    """A system message, then `turns` questions and answers, an image in the first question; texts with spaces at
    their ends and pieces of the templates' own markers."""
    messages = [{"role": "system", "content": "You answer briefly."}]
    for turn in range(turns):
        question = "<image> What is in it?" if turn == 0 else f" Question {turn}: and ASSISTANT: then?"
        answer = f"Answer {turn} </s> ends <|im_end|> here. " if turn % 3 else f"It is {turn}."
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def reference_labels(processor, messages: list[dict], input_ids: torch.Tensor) -> torch.Tensor:
    """Labels from the reference spans: a token is supervised iff it is no placeholder and overlaps an answer."""
    full, inside = answer_characters(processor, messages)
    offsets = processor.tokenizer(
        full, add_special_tokens=processor.tokenizer_adds_special_tokens, return_offsets_mapping=True
    )["offset_mapping"]
    supervised = [
        start < end and bool(inside[start:end].any()) and int(token) != processor.image_token_id
        for (start, end), token in zip(offsets, input_ids, strict=True)
    ]
    return torch.where(torch.tensor(supervised), input_ids, IGNORE_INDEX)


@pytest.mark.parametrize("template", TEMPLATES)
def test_labels_of_a_long_conversation_are_the_references(processors, template):
    processor = processors[template]
    messages = conversation(30)
    input_ids, labels = VisionBridgeCollator(processor).encode(messages, num_images=1)
    assert torch.equal(labels, reference_labels(processor, messages, input_ids))
    assert (labels != IGNORE_INDEX).sum() > 30 * 3


@pytest.mark.parametrize("template", ["vicuna (the default)", "chatml", "llama-2"])
def test_a_2000_turn_conversation_is_labelled_in_linear_time(processors, template):
    # Rendering every answer's prefixes, as the reference does, took 8.8 s at 1,200 turns and grows with the square.
    collator = VisionBridgeCollator(processors[template])
    start = time.perf_counter()
    input_ids, labels = collator.encode(conversation(2000), num_images=1)
    assert time.perf_counter() - start < 5.0
    assert len(input_ids) > 2000 * 10 and (labels != IGNORE_INDEX).sum() > 2000 * 3
