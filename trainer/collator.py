"""VisionBridgeCollator: chat samples -> input_ids, attention_mask, labels and pixel_values for the Trainer.

Labels come from one tokenisation of the whole rendered conversation. An assistant answer's character span runs
from the end of the conversation up to it rendered with the generation prompt, to the end of the conversation
rendered through it (answer_spans.py); a token is supervised iff its character offsets overlap such a span.
Re-tokenising turn by turn, as LLaVA does, miscounts tokens wherever a merge crosses a turn boundary and then masks
whole samples; offsets cannot drift.
"""

from dataclasses import dataclass, field

import jinja2
import torch
from transformers.utils import logging

from ..processing.processing_visionbridge import VisionBridgeProcessor
from .answer_spans import answer_spans
from .bad_samples import BAD_SAMPLE, BAD_SAMPLE_ERRORS, DROPPED, ON_BAD_SAMPLE, RECORD, SKIPPED
from .data import check_answers
from .packing import pack

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100


@dataclass
class VisionBridgeCollator:
    """Collate `{"messages": [...], "images": [...]}` samples; each `<image>` in the text stands for one image.

    Returns input_ids, attention_mask and labels [B, T], right-padded, and pixel_values [N, 3, H, W] for the
    batch's images in reading order (absent when there are none). With `packing`, the samples are laid end to end
    instead, in rows no longer than the longest sample (or `packing_row_length`): input_ids, labels and
    position_ids [R, L], no attention mask, padding only at the end of a row (see packing.py).
    A sample longer than `model_max_length` is cut from the end when the cut falls after its last image
    placeholder, and dropped otherwise: the batch says why under "dropped", and `dropped_samples` adds up over
    calls (in this process). A sample that cannot be encoded raises, naming it; with `on_bad_sample="skip"` it is
    left out instead, and the batch says why under "skipped" (see bad_samples.py).
    """

    processor: VisionBridgeProcessor
    model_max_length: int | None = None
    on_bad_sample: str = "raise"
    packing: bool = False
    packing_row_length: int | None = None
    dropped_samples: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        tokenizer = self.processor.tokenizer
        if not tokenizer.is_fast:
            raise ValueError(f"The collator needs character offsets, which {type(tokenizer).__name__} (slow) lacks.")
        if tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set tokenizer.pad_token before collating.")
        if self.processor.image_seq_length is None:
            raise ValueError("The processor is not bound to a model config; call bind_config(model.config).")
        if self.model_max_length is not None and self.model_max_length < 1:
            raise ValueError(f"model_max_length must be positive or None, got {self.model_max_length}.")
        if self.on_bad_sample not in ON_BAD_SAMPLE:
            raise ValueError(f"on_bad_sample must be one of {', '.join(ON_BAD_SAMPLE)}, got {self.on_bad_sample!r}.")
        if self.packing_row_length is not None and (not self.packing or self.packing_row_length < 1):
            raise ValueError(f"packing_row_length={self.packing_row_length} needs packing=True and a positive value.")

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        # Encode every sample before counting anything, so a batch rejected for a bad sample leaves no trace.
        encoded, skipped = [], []
        for index, sample in enumerate(samples):
            try:
                encoded.append((index, *self._encode_sample(sample, index)))
            except BAD_SAMPLE_ERRORS as error:
                if RECORD not in sample and self.on_bad_sample == "raise":
                    raise
                where = f"record {sample[RECORD]} of the training data" if RECORD in sample else f"sample {index}"
                if self.on_bad_sample == "raise":
                    raise _renamed(error, f"{where.capitalize()}: {error}") from error
                skipped.append(f"{where}: {error}")
        if not encoded:
            raise ValueError(
                f"All {len(samples)} samples of the batch are bad and were skipped (on_bad_sample='skip'), and a "
                f"batch cannot be empty. Fix or remove these records, or shuffle the data so that bad records do not "
                f"fill a batch: {' | '.join(skipped[:3])}"
            )
        rows, pixel_values, dropped = [], [], []
        for index, input_ids, labels, sample_pixels in encoded:
            kept = self._fit(input_ids, labels, index)
            if isinstance(kept, str):
                dropped.append(kept)
            else:
                rows.append(kept)
                pixel_values.append(sample_pixels)
        self.dropped_samples += len(dropped)
        if not rows:
            raise ValueError(
                f"All {len(encoded)} samples of the batch left to train on were dropped for exceeding "
                f"model_max_length={self.model_max_length}; raise model_max_length."
            )

        if self.packing:
            batch, order = pack(rows, self.packing_row_length, self.processor.tokenizer.pad_token_id)
            pixel_values = [pixel_values[i] for i in order]  # images follow their samples into the rows
        else:
            batch = self._pad(rows)
        pixel_values = [pixels for pixels in pixel_values if pixels is not None]
        if pixel_values:
            batch["pixel_values"] = torch.cat(pixel_values)  # [N, 3, H, W]
        if skipped:
            batch[SKIPPED] = skipped
        if dropped:
            batch[DROPPED] = dropped
        return batch

    def _pad(self, rows: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = max(len(ids) for ids, _ in rows)
        batch = {
            "input_ids": torch.full((len(rows), length), self.processor.tokenizer.pad_token_id),  # [B, T]
            "attention_mask": torch.zeros(len(rows), length, dtype=torch.long),  # [B, T]
            "labels": torch.full((len(rows), length), IGNORE_INDEX),  # [B, T]
        }
        for row, (ids, labels) in enumerate(rows):
            batch["input_ids"][row, : len(ids)] = ids
            batch["attention_mask"][row, : len(ids)] = 1
            batch["labels"][row, : len(ids)] = labels
        return batch

    def _encode_sample(self, sample: dict, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(input_ids [T], labels [T], pixel_values [N, 3, H, W] or None)."""
        if BAD_SAMPLE in sample:
            raise OSError(sample[BAD_SAMPLE])
        images = list(sample.get("images") or [])
        input_ids, labels = self.encode(sample["messages"], len(images), index)
        # Each sample's images apart, so that a bad one is told from the others.
        pixel_values = self.processor.preprocess_images(images) if images else None
        return input_ids, labels, pixel_values

    def encode(self, messages: list[dict], num_images: int, index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """One conversation -> (input_ids [T], labels [T]) before truncation; `index` names it in errors."""
        if not messages:
            raise ValueError(f"Sample {index} has no messages.")
        image_token = self.processor.image_token
        full = self._render(messages, False, index)
        if full.count(image_token) != num_images:
            raise ValueError(
                f"Sample {index}: the rendered conversation holds {full.count(image_token)} {image_token} "
                f"placeholders but the sample has {num_images} images."
            )
        check_answers(messages, f"Sample {index}")
        text = self._expand(full)

        def render(upto: list[dict], add_generation_prompt: bool) -> str:
            return self._expand(self._render(upto, add_generation_prompt, index))

        spans = answer_spans(messages, text, render, self._expand, f"Sample {index}")

        # Special tokens as processor(text=...) adds them at inference, so training sees the same sequence.
        encoded = self.processor.tokenizer(
            text,
            add_special_tokens=self.processor.tokenizer_adds_special_tokens,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        input_ids = encoded["input_ids"][0]  # [T]
        starts, ends = encoded["offset_mapping"][0].unbind(-1)  # [T] each
        answer = torch.zeros(len(text), dtype=torch.long)  # [C]: 1 on the characters of an answer
        for start, end in spans:
            answer[start:end] = 1
        before = torch.cat([answer.new_zeros(1), answer.cumsum(0)])  # [C + 1]: answer characters before each offset
        # Tokens the tokenizer added have empty offsets; placeholders are filled by image features, not predicted.
        overlaps = before[ends] > before[starts]  # [T]
        supervised = overlaps & (ends > starts) & (input_ids != self.processor.image_token_id)
        labels = torch.where(supervised, input_ids, IGNORE_INDEX)
        if not supervised.any():
            raise ValueError(
                f"Sample {index} has no supervised token: it needs at least one assistant turn the template renders."
            )
        return input_ids, labels

    def _fit(
        self, input_ids: torch.Tensor, labels: torch.Tensor, index: int
    ) -> tuple[torch.Tensor, torch.Tensor] | str:
        """Cut a too-long sample after its last image, or say why it is dropped."""
        limit = self.model_max_length
        if limit is None or len(input_ids) <= limit:
            return input_ids, labels
        placeholders = (input_ids == self.processor.image_token_id).nonzero()
        if len(placeholders) and placeholders.max() >= limit:
            reason = "the cut would split or remove an image's placeholders"
        elif (labels[:limit] == IGNORE_INDEX).all():
            reason = "no supervised token would be left"
        else:
            return input_ids[:limit], labels[:limit]
        why = (
            f"sample {index} of the batch has {len(input_ids)} tokens, more than model_max_length={limit}, and {reason}"
        )
        logger.warning(f"Dropped {why}.")
        return why

    def _render(self, messages: list[dict], add_generation_prompt: bool, index: int) -> str:
        try:
            return self.processor.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        except jinja2.TemplateError as error:
            raise ValueError(f"Sample {index}: the chat template failed on its messages: {error}") from error

    def _expand(self, text: str) -> str:
        return self.processor.expand_image_tokens(text)


def _renamed(error: Exception, message: str) -> Exception:
    """An error of `error`'s kind with `message`, or a ValueError where that kind takes other arguments."""
    try:
        return type(error)(message)
    except TypeError:
        return ValueError(message)
