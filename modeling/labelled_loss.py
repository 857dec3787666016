"""The language-model loss from the positions that carry a label only.

In a LLaVA-style batch most positions are the image's placeholders and the prompt, which carry no label: computing
the LM head there is most of a training step's time and memory at a real vocabulary (32,000 to 152,000 logits per
position). Here the causal LM's body runs as usual, the hidden states that predict a labelled token are gathered,
and the head, the logit soft-capping or scaling the LM applies after it, and the LM's own loss function run on
those alone, in chunks whose logits are recomputed in the backward pass, so that the logits of all labelled
positions never exist at once.
"""

from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
# Logits of one chunk of labelled positions, in bytes of fp32: chunks bound the head's memory at any vocabulary.
CHUNK_BYTES = 256 * 2**20
# Positions at which the LM's own logits are compared with the head's, once: enough to tell a different head, few
# enough that the check's logits cost next to nothing beside a training step's.
CHECKED_POSITIONS = 16


def head_logits(language_model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM's logits for hidden states [..., D] as its own forward computes them: its head, then what some
    families apply after it (Gemma 2 and 3: `final_logit_softcapping`; Cohere: `logit_scale`; Granite:
    `logits_scaling`)."""
    logits = language_model.get_output_embeddings()(hidden)  # [..., V]
    config = language_model.config
    cap = getattr(config, "final_logit_softcapping", None)  # attributes of those families' configs only
    if cap:
        logits = torch.tanh(logits / cap) * cap
    scale = getattr(language_model, "logit_scale", None)
    if scale is not None:
        logits = logits * scale
    scaling = getattr(config, "logits_scaling", None)
    if scaling:
        logits = logits / scaling
    return logits


def has_separate_head(language_model: nn.Module) -> bool:
    """Whether the LM is a body (`base_model`, returning `last_hidden_state`) with a head on top, as transformers'
    causal LMs are; the loss at labels needs the body's output."""
    return language_model.base_model is not language_model and language_model.get_output_embeddings() is not None


@torch.no_grad()
def head_reproduces_the_logits(language_model: nn.Module, lm_inputs: dict, keeps_logits: bool) -> bool:
    """Whether `head_logits` on the LM body's output gives the LM's own logits, checked once on the first row of a
    batch with dropout off, at its last CHECKED_POSITIONS positions when the LM takes `logits_to_keep`
    (`keeps_logits`), else at all of them: an LM that changes its logits in a way not listed in `head_logits` is
    trained on its full logits instead."""
    if not has_separate_head(language_model):
        return False
    rows = lm_inputs["inputs_embeds"].shape[0]
    first = {
        key: value[:1] if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == rows else value
        for key, value in lm_inputs.items()
    }
    first["use_cache"] = False
    kept = {"logits_to_keep": CHECKED_POSITIONS} if keeps_logits else {}
    was_training = language_model.training
    language_model.eval()
    try:
        expected = language_model(**first, **kept).logits.float()  # [1, K, V], K = CHECKED_POSITIONS or T
        hidden = language_model.base_model(**first).last_hidden_state[:, -expected.shape[1] :]  # [1, K, D]
        found = head_logits(language_model, hidden).float()
    finally:
        language_model.train(was_training)
    return found.shape == expected.shape and torch.allclose(found, expected, rtol=1e-3, atol=1e-3)


def _chunk_loss(
    language_model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, denominator: torch.Tensor
) -> torch.Tensor:
    if not len(targets):
        # No labelled position: the head runs on a zero row weighted by zero, so that its weights take part (DDP
        # wants every trained weight used) and it runs as on the other processes.
        row = hidden.new_zeros(1, hidden.shape[-1]) + hidden.sum()  # [1, D]
        return head_logits(language_model, row).sum() * 0.0
    logits = head_logits(language_model, hidden)  # [K_chunk, V]
    return language_model.loss_function(
        logits=logits, labels=None, vocab_size=logits.shape[-1], num_items_in_batch=denominator, shift_labels=targets
    )


def labelled_loss(
    language_model: nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch=None,
    lockstep: bool = False,
) -> torch.Tensor:
    """The LM loss of hidden states [B, T, D] (the body's output) against labels [B, T], as the LM's own loss
    function normalises it (summed over labelled tokens and divided by `num_items_in_batch` when the Trainer gives
    it, else their mean), computed from the positions whose next token is labelled. The head runs at least once,
    also in a batch without labels. `lockstep`: one of several processes whose engine gathers the head's weight each
    time it runs (ZeRO-3, FSDP), which must all run it as often, whatever their numbers of labels: the head runs
    once, on all labelled positions, without chunks."""
    shift_labels = labels[:, 1:]  # [B, T-1]: position t predicts token t+1
    labelled = shift_labels != IGNORE_INDEX
    hidden = hidden[:, :-1][labelled]  # [K, D]
    targets = shift_labels[labelled]  # [K]
    denominator = num_items_in_batch if num_items_in_batch is not None else labelled.sum()
    # From the config: a sharded engine (ZeRO-3) holds the head's weight only while the head runs.
    size = max(1, CHUNK_BYTES // (4 * language_model.config.vocab_size))
    loss = partial(_chunk_loss, language_model, denominator=denominator)
    if lockstep or len(targets) <= size:
        return loss(hidden, targets)
    # Each chunk's logits are recomputed in the backward pass instead of being kept.
    return sum(
        checkpoint(loss, hidden[start : start + size], targets[start : start + size], use_reentrant=False)
        for start in range(0, len(targets), size)
    )
