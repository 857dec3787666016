"""Evaluation on a data file: generate each sample's last answer and score it against the reference.

Three scores, as VQA and captioning benchmarks report them: `exact_match` (the normalised answer equals the
normalised reference), `accuracy` (the normalised reference appears in the answer as whole words, VQA-style, so
"It is 7." counts for "7") and `caption_overlap` (unigram F1 between answer and reference, as SQuAD's F1).
"""

import re
from collections import Counter

import torch
from torch import nn
from tqdm.auto import tqdm

from ..processing.processing_visionbridge import VisionBridgeProcessor
from .data import VisionBridgeDataset

_ARTICLES = re.compile(r"\b(a|an|the)\b")
SCORES = ("exact_match", "accuracy", "caption_overlap")


def normalize(text: str) -> str:
    """Lower case, no punctuation or articles, single spaces."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def scores(answer: str, reference: str) -> dict[str, float]:
    """exact_match, accuracy and caption_overlap of one answer."""
    answer_words, reference_words = normalize(answer).split(), normalize(reference).split()
    common = sum((Counter(answer_words) & Counter(reference_words)).values())
    overlap = 0.0
    if common:
        precision, recall = common / len(answer_words), common / len(reference_words)
        overlap = 2 * precision * recall / (precision + recall)
    padded = f" {' '.join(answer_words)} "
    return {
        "exact_match": float(answer_words == reference_words),
        "accuracy": float(bool(reference_words) and f" {' '.join(reference_words)} " in padded),
        "caption_overlap": overlap,
    }


def _last_user_turn(messages: list[dict]) -> int:
    return max(turn for turn, message in enumerate(messages) if message["role"] == "user")


@torch.no_grad()
def answer_batch(
    model: nn.Module, processor: VisionBridgeProcessor, batch: list[dict], max_new_tokens: int = 32
) -> list[str]:
    """Greedy answers to each sample's last user turn (the turns before it are the context); samples hold
    `{"messages": [...], "images": [...]}` as `load_training_data` gives them."""
    prompts, images = [], []
    for sample in batch:
        context = sample["messages"][: _last_user_turn(sample["messages"]) + 1]
        prompts.append(processor.apply_chat_template(context, add_generation_prompt=True))
        # The context shows the first images in reading order, one per placeholder.
        shown = sum(message["content"].count(processor.image_token) for message in context)
        images += list(sample["images"])[:shown]
    inputs = processor(
        images=images or None, text=prompts, padding=True, add_special_tokens=processor.tokenizer_adds_special_tokens
    ).to(model.device)
    output = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id
    )
    answers = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [answer.strip() for answer in answers]


def evaluate(
    model: nn.Module,
    processor: VisionBridgeProcessor,
    samples,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    progress: bool = True,
) -> dict:
    """{"exact_match", "accuracy", "caption_overlap": means over the samples, "count", "samples": [{"index",
    "reference", "answer", scores...}, ...]}; the reference is the assistant turn after the last user turn."""
    model.eval()
    if isinstance(samples, VisionBridgeDataset):
        samples.bind(processor)  # images marked with the processor's image token
    rows = []
    for start in tqdm(range(0, len(samples), batch_size), desc="evaluating", disable=not progress):
        batch = [samples[index] for index in range(start, min(start + batch_size, len(samples)))]
        answers = answer_batch(model, processor, batch, max_new_tokens)
        for offset, (sample, answer) in enumerate(zip(batch, answers, strict=True)):
            messages = sample["messages"]
            after = _last_user_turn(messages) + 1
            reference = messages[after]["content"] if after < len(messages) else ""
            row = {"index": start + offset, "reference": reference, "answer": answer}
            rows.append({**row, **scores(answer, reference)})
    means = {name: sum(row[name] for row in rows) / max(len(rows), 1) for name in SCORES}
    return {**means, "count": len(rows), "samples": rows}
