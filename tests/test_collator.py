"""VisionBridgeCollator: labels from character offsets of one tokenisation, truncation that never splits an image."""

import copy
import logging
import string

import pytest
import torch
from answer_spans import answer_characters
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from visionbridge.trainer.bad_samples import DROPPED
from visionbridge.trainer.collator import IGNORE_INDEX, VisionBridgeCollator

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
# Glued turns: user text runs into "ASSISTANT:" and the generation prompt ends in a space that BPE merges into the
# answer's first word, so each piece tokenised alone differs from the whole conversation tokenised once.
GLUED_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER:' + message['content'] -}}"
    "{%- else -%}{{- 'ASSISTANT: ' + message['content'] + eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT: ' -}}{%- endif -%}"
)


@pytest.fixture(scope="module")
def llama_processor(make_model):
    return make_model(language="llama")[1]


@pytest.fixture(scope="module")
def chatml_processor(make_model):
    processor = make_model(language="qwen2")[1]
    processor.chat_template = CHATML_TEMPLATE
    # Qwen2's own tokenizer has these as special tokens; the tiny one learns them here.
    processor.tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    return processor


def with_template(processor, template: str):
    processor = copy.deepcopy(processor)
    processor.chat_template = template
    return processor


def conversation(*turns: str, system: str | None = None) -> list[dict]:
    """Alternating user/assistant messages, optionally after a system message."""
    messages = [{"role": "system", "content": system}] if system else []
    roles = ("user", "assistant")
    return messages + [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


def supervised_runs(labels: torch.Tensor) -> list[list[int]]:
    """Contiguous runs of supervised label ids in one row."""
    runs, current = [], []
    for label in labels.tolist():
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


def decoded_answers(processor, labels: torch.Tensor) -> list[str]:
    return [processor.decode(run, skip_special_tokens=True).strip() for run in supervised_runs(labels)]


def answers_of(messages: list[dict]) -> list[str]:
    return [m["content"].strip() for m in messages if m["role"] == "assistant"]


def multi_turn_samples(photos) -> list[dict]:
    return [
        {
            "messages": conversation(
                "<image>\nWhat is in this picture?",
                "A temple by a lake.",
                "And in this one? <image>",
                "A red flower with green leaves.",
                system="You describe photos.",
            ),
            "images": photos[:2],
        },
        {"messages": conversation("What digit is 2 + 2?", "It is four."), "images": []},
        {
            "messages": conversation("<image> <image> Two photos: which is older?", "The temple is older."),
            "images": [photos[1], photos[0]],
        },
    ]


@pytest.mark.parametrize(
    ("processor_name", "end_of_turn"), [("llama_processor", "</s>"), ("chatml_processor", "<|im_end|>\n")]
)
def test_labels_decode_to_exactly_the_answers(request, processor_name, end_of_turn, photos):
    processor = request.getfixturevalue(processor_name)
    samples = multi_turn_samples(photos)
    batch = VisionBridgeCollator(processor)(samples)
    for row, sample in enumerate(samples):
        assert decoded_answers(processor, batch["labels"][row]) == answers_of(sample["messages"])
        # The marker the template writes after an answer is learnt too: it is how the model stops.
        assert all(processor.decode(run).endswith(end_of_turn) for run in supervised_runs(batch["labels"][row]))


def test_labels_survive_merges_across_turn_boundaries(llama_processor):
    processor = with_template(llama_processor, GLUED_TEMPLATE)
    tokenizer = processor.tokenizer
    messages = conversation("what is in the sky", "A blue sky.", "and now", "It is grey.")
    sample = {"messages": messages, "images": []}

    # Precondition: piece-by-piece tokenisation (LLaVA's) disagrees with the whole conversation's.
    pieces = [
        processor.apply_chat_template(messages[:i], add_generation_prompt=i % 2 == 1)
        for i in range(1, len(messages) + 1)
    ]
    deltas = [pieces[0]] + [after[len(before) :] for before, after in zip(pieces, pieces[1:], strict=False)]
    piecewise = [token for piece in deltas for token in tokenizer(piece)["input_ids"]]
    assert piecewise != tokenizer("".join(deltas))["input_ids"]

    labels = VisionBridgeCollator(processor)([sample])["labels"][0]
    assert decoded_answers(processor, labels) == answers_of(messages)


def test_placeholders_padding_and_prompts_are_masked(llama_processor, photos):
    processor = llama_processor
    samples = multi_turn_samples(photos)
    batch = VisionBridgeCollator(processor)(samples)
    input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert input_ids.shape == mask.shape == labels.shape

    placeholders = input_ids == processor.image_token_id
    assert (labels[placeholders] == IGNORE_INDEX).all()
    assert placeholders.sum() == 4 * processor.image_seq_length
    assert (labels[mask == 0] == IGNORE_INDEX).all()
    assert (input_ids[mask == 0] == processor.tokenizer.pad_token_id).all()
    # Right padding: each row's mask is ones, then zeros.
    assert torch.equal(mask, mask.sort(dim=1, descending=True).values)
    supervised = labels != IGNORE_INDEX
    assert torch.equal(labels[supervised], input_ids[supervised])

    for row, sample in enumerate(samples):
        prompt = processor.decode(input_ids[row][mask[row].bool() & ~supervised[row] & ~placeholders[row]])
        for message in sample["messages"]:
            if message["role"] == "assistant":
                assert message["content"] not in prompt
            else:
                assert message["content"].replace("<image>", "") in prompt
    assert batch["pixel_values"].shape == (4, 3, 32, 32)


def test_text_only_batch_has_no_pixel_values(llama_processor):
    batch = VisionBridgeCollator(llama_processor)([{"messages": conversation("Hello?", "Hello.")}])
    assert "pixel_values" not in batch


def test_truncation_never_splits_an_image(llama_processor, photos, caplog):
    processor = llama_processor
    image_id = processor.image_token_id
    late_image = {
        "messages": conversation("<image> first", "One.", "<image> second", "Two."),
        "images": photos[:2],
    }
    early_image = {
        "messages": conversation("<image> Describe it.", "A temple. " + "It is old and grey. " * 8),
        "images": photos[:1],
    }
    full = VisionBridgeCollator(processor)
    late_ids, _ = full.encode(late_image["messages"], 2)
    early_ids, _ = full.encode(early_image["messages"], 1)
    limit = int((late_ids == image_id).nonzero().max())  # cuts off the last placeholder of the second image
    assert int((early_ids == image_id).nonzero().max()) < limit < len(early_ids)

    collator = VisionBridgeCollator(processor, model_max_length=limit)
    with caplog.at_level(logging.WARNING):
        batch = collator([late_image, early_image])
    assert collator.dropped_samples == 1
    assert f"{len(late_ids)} tokens" in caplog.text
    # The batch says why, so that the trainer counts it whichever process collated the batch.
    (dropped,) = batch[DROPPED]
    assert dropped.startswith(f"sample 0 of the batch has {len(late_ids)} tokens") and "split or remove" in dropped
    assert batch["input_ids"].shape == (1, limit)
    assert torch.equal(batch["input_ids"][0], early_ids[:limit])
    assert (batch["input_ids"] == image_id).sum() == processor.image_seq_length
    assert batch["pixel_values"].shape[0] == 1
    assert (batch["labels"] != IGNORE_INDEX).any()
    assert int(batch["attention_mask"].sum()) == limit

    with pytest.raises(ValueError, match="All 1 samples .* dropped.*raise model_max_length"):
        collator([late_image])
    assert collator.dropped_samples == 2


def test_truncation_that_leaves_no_answer_drops_the_sample(llama_processor):
    long_question = {"messages": conversation("Tell me. " * 30, "No."), "images": []}
    short = {"messages": conversation("Hi?", "Hi."), "images": []}
    short_ids, _ = VisionBridgeCollator(llama_processor).encode(short["messages"], 0)
    collator = VisionBridgeCollator(llama_processor, model_max_length=len(short_ids))
    batch = collator([long_question, short])
    assert collator.dropped_samples == 1
    assert torch.equal(batch["input_ids"][0], short_ids)


def test_sample_without_supervised_tokens_raises(llama_processor):
    collator = VisionBridgeCollator(llama_processor)
    good = {"messages": conversation("Hi?", "Hi."), "images": []}
    with pytest.raises(ValueError, match="Sample 1 has no supervised token"):
        collator([good, {"messages": conversation("Only a question?"), "images": []}])
    assert collator.dropped_samples == 0


def test_template_that_is_not_prefix_consistent_raises(llama_processor):
    template = GLUED_TEMPLATE.replace("{{- 'ASSISTANT: ' -}}{%- endif", "{{- 'BOT: ' -}}{%- endif")
    collator = VisionBridgeCollator(with_template(llama_processor, template))
    with pytest.raises(ValueError, match="Sample 0: the chat template is not prefix-consistent"):
        collator([{"messages": conversation("Hi?", "Hi."), "images": []}])


def test_image_count_mismatch_raises(llama_processor, photos):
    with pytest.raises(ValueError, match="holds 1 <image> placeholders but the sample has 2 images"):
        VisionBridgeCollator(llama_processor)([{"messages": conversation("<image>", "Hi."), "images": photos}])


# Printable text with fragments of the templates' own markers, so answers can imitate turn boundaries.
FRAGMENTS = ["ASSISTANT:", "ASSISTANT: ", "USER:", " ", "\n", ":", "</s>", "<|im_end|>\n", "<|im_start|>assistant\n"]
TEXT = st.lists(st.one_of(st.text(string.printable, max_size=8), st.sampled_from(FRAGMENTS)), max_size=4).map("".join)
IMAGES = [Image.new("RGB", (12, 20), "red"), Image.new("L", (9, 9), 128), Image.new("RGBA", (30, 10))]


@st.composite
def chat_samples(draw) -> dict:
    """Mostly well-formed conversations (optional system, user/assistant turns); one in ten in any role order."""
    roles = ["user", "assistant"] * draw(st.integers(1, 3))
    if draw(st.booleans()):
        roles = ["system", *roles]
    if draw(st.integers(0, 9)) == 0:
        roles = draw(st.permutations(roles))[: draw(st.integers(1, len(roles)))]
    messages, images = [], []
    for role in roles:
        count = draw(st.integers(0, 2)) if draw(st.integers(0, 2)) == 0 else 0
        messages.append({"role": role, "content": "<image>".join(draw(TEXT) for _ in range(count + 1))})
        images += [draw(st.sampled_from(IMAGES)) for _ in range(count)]
    return {"messages": messages, "images": images}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    samples=st.lists(chat_samples(), min_size=1, max_size=3),
    limit=st.one_of(st.none(), st.integers(8, 300)),
    chatml=st.booleans(),
)
def test_property_placeholders_whole_and_labels_inside_answers(
    llama_processor, chatml_processor, samples, limit, chatml
):
    processor = chatml_processor if chatml else llama_processor
    image_id, seq_length = processor.image_token_id, processor.image_seq_length
    collator = VisionBridgeCollator(processor, model_max_length=limit)
    try:
        batch = collator(samples)
    except ValueError as error:
        event(f"ValueError: {str(error)[:70]}")
        return
    event(f"collated {batch['input_ids'].shape[0]} of {len(samples)}")

    row, kept_images = 0, 0
    for sample in samples:
        ids, labels = collator.encode(sample["messages"], len(sample["images"]))
        kept = len(ids) if limit is None else min(len(ids), limit)
        placeholders = (ids == image_id).nonzero()
        image_cut = len(placeholders) and int(placeholders.max()) >= kept
        if image_cut or (labels[:kept] == IGNORE_INDEX).all():
            continue  # dropped
        assert torch.equal(batch["input_ids"][row, :kept], ids[:kept])
        assert int(batch["attention_mask"][row].sum()) == kept
        assert int((batch["input_ids"][row] == image_id).sum()) == len(sample["images"]) * seq_length

        full, inside = answer_characters(processor, sample["messages"])
        offsets = processor.tokenizer(full, return_offsets_mapping=True)["offset_mapping"][:kept]
        for position, (start, end) in enumerate(offsets):
            label = int(batch["labels"][row, position])
            token = int(batch["input_ids"][row, position])
            if label != IGNORE_INDEX:
                assert inside[start:end].any() and token != image_id and label == token
            elif start < end and token != image_id:
                assert not inside[start:end].all()  # a token wholly inside an answer is supervised
        row, kept_images = row + 1, kept_images + len(sample["images"])
    assert row == batch["input_ids"].shape[0] == len(samples) - collator.dropped_samples
    assert len(batch.get("pixel_values", [])) == kept_images
