"""Padding-free packing: a batch's samples laid end to end in rows, each attending only to itself.

transformers keeps packed samples apart through their restarting `position_ids` when no attention mask is given:
sdpa, eager and flex attention build a block-diagonal causal mask from them (masking_utils), and flash attention
turns them into `cu_seqlens` for its varlen kernel. Both need no attention mask, no KV cache being filled (the
model turns the cache off for such a batch), and a language model that hands `position_ids` to its mask builder.

Eager and sdpa attention mask a dense square over each row, whose cost grows with the square of the row's length,
so rows are no longer than the batch's longest sample by default: never a larger square than padding would give,
and fewer rows. Flash attention reads packing from a single row only: the trainer packs one row for it.
"""

import sys

import torch
import transformers
from torch import nn

from ..compat import PACKED_MASK_NEEDS_TORCH_2_6

IGNORE_INDEX = -100

# Language models whose mask builder receives position_ids on both supported transformers lines. OPT does not:
# it reads position_ids for its embeddings but builds its mask without them, so packed samples would see each other.
PACKING_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
PACKING_ATTENTION = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")


def assign_rows(lengths: list[int], row_length: int | None = None) -> list[list[int]]:
    """Sample indices per row: first-fit decreasing into rows of `row_length` tokens, or, without it, of the
    longest sample's length. A sample longer than `row_length` gets a row of its own. Samples keep their order
    within a row, and rows the order of their first sample."""
    capacity = max(lengths) if row_length is None else row_length
    rows, filled = [], []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, used in enumerate(filled) if used + lengths[index] <= capacity), None)
        if row is None:
            rows.append([])
            filled.append(0)
            row = len(rows) - 1
        rows[row].append(index)
        filled[row] += lengths[index]
    return sorted(sorted(row) for row in rows)


def pack(
    samples: list[tuple[torch.Tensor, torch.Tensor]], row_length: int | None = None, pad_token_id: int = 0
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """(input_ids [T_i], labels [T_i]) per sample -> input_ids, labels and position_ids [R, L], and the order in
    which the samples now stand (row by row; images must follow it).

    Rows come from `assign_rows` and are right-padded to the longest; the padding is labelled IGNORE_INDEX and
    positioned after the row's last sample, which it cannot affect. Each sample's first label is IGNORE_INDEX, so
    the last token of one sample is never trained to predict the first token of the next.
    """
    groups = assign_rows([len(ids) for ids, _ in samples], row_length)
    width = max(sum(len(samples[i][0]) for i in group) for group in groups)
    batch = {
        "input_ids": torch.full((len(groups), width), pad_token_id),  # [R, L]
        "labels": torch.full((len(groups), width), IGNORE_INDEX),  # [R, L]
        "position_ids": torch.zeros(len(groups), width, dtype=torch.long),  # [R, L]
    }
    for row, group in enumerate(groups):
        start = 0
        for ids, labels in (samples[i] for i in group):
            end = start + len(ids)
            batch["input_ids"][row, start:end] = ids
            batch["labels"][row, start + 1 : end] = labels[1:]
            batch["position_ids"][row, start:end] = torch.arange(len(ids))
            start = end
        last_length = len(samples[group[-1]][0])
        batch["position_ids"][row, start:] = torch.arange(width - start) + last_length
    return batch, [i for group in groups for i in group]


def row_length_for(language_model: nn.Module, row_length: int | None) -> int | None:
    """The row length to pack with: one row under flash attention, which finds packed samples in a batch of one
    row only and whose cost does not grow with the square of a row (no row padding at all); else the length asked
    for, or None (rows of the batch's longest sample)."""
    attention = language_model.config._attn_implementation
    if not attention.startswith("flash_attention"):
        return row_length
    if row_length is not None:
        raise ValueError(
            f"packing_row_length={row_length} does not apply under {attention}, which reads packed samples from one "
            "row only: the batch's samples are packed into one row. Leave packing_row_length unset."
        )
    return sys.maxsize


def check_packing_support(language_model: nn.Module) -> None:
    """Raise unless `language_model` is known to keep packed samples apart in attention."""
    config = language_model.config
    model_type, attention = config.model_type, config._attn_implementation
    if model_type not in PACKING_MODEL_TYPES:
        raise ValueError(
            "packing needs a language model whose attention mask follows position_ids "
            f"({', '.join(PACKING_MODEL_TYPES)}); {model_type!r} would let packed samples attend to each other. "
            "Train without packing."
        )
    if attention not in PACKING_ATTENTION:
        raise ValueError(
            f"packing is not supported with attn_implementation={attention!r}; "
            f"use one of {', '.join(PACKING_ATTENTION)}."
        )
    old_torch = tuple(int(part) for part in torch.__version__.split(".")[:2]) < (2, 6)
    if PACKED_MASK_NEEDS_TORCH_2_6 and old_torch and not attention.startswith("flash_attention"):
        raise ValueError(
            f"packing with attn_implementation={attention!r} on transformers {transformers.__version__} needs "
            f"torch >= 2.6 (found {torch.__version__}); upgrade torch or use flash_attention_2."
        )


def per_sample_losses(
    logits: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean next-token loss of each sample [S] from logits [B, T, V] and labels [B, T]: one sample per row, or,
    given the position_ids of a packed batch, one per run of positions starting at 0."""
    token_losses = nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )  # [B * (T-1)]
    if position_ids is None:
        sample = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)  # [B, T]
    else:
        sample = (position_ids.flatten() == 0).cumsum(0).view_as(labels) - 1  # [B, T]
    sample, targets = sample[:, 1:].flatten(), labels[:, 1:].flatten() != IGNORE_INDEX  # [B * (T-1)] each
    count = int(sample.max()) + 1
    totals = torch.zeros(count, device=logits.device).index_add_(0, sample[targets], token_losses[targets])
    return totals / torch.bincount(sample[targets], minlength=count)
