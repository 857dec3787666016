"""Reading one hidden layer of a vision encoder without running the blocks after it.

LLaVA reads layer -2 of CLIP: the encoder's last block (and its final norm or pooling head) only cost time. The
encoder's block list is cut to the blocks before the layer read for the duration of the call, and the layer is the
last hidden state the shortened encoder returns. Blocks are found where CLIP, SigLIP and BLIP-2
(`encoder.layers`) and ViT and DINOv2 (`encoder.layer`) keep them; an encoder laid out otherwise runs whole, with
the same result.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def encoder_blocks(vision_tower: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(name of the block list within the tower, the blocks in order), or None where the tower keeps them
    elsewhere. transformers 4.x nests CLIP and SigLIP under `vision_model`."""
    for prefix in ("vision_model.encoder", "encoder"):
        for name in ("layers", "layer"):
            blocks = vision_tower.get_submodule(prefix) if _has(vision_tower, prefix) else None
            blocks = getattr(blocks, name, None)
            if isinstance(blocks, nn.ModuleList) and len(blocks):
                return f"{prefix}.{name}", blocks
    return None


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


@contextmanager
def _first_blocks(vision_tower: nn.Module, name: str, count: int) -> Iterator[None]:
    """The tower runs only its first `count` blocks while the block list `name` is cut short."""
    owner_name, _, attribute = name.rpartition(".")
    owner = vision_tower.get_submodule(owner_name)
    blocks = getattr(owner, attribute)
    setattr(owner, attribute, blocks[:count])
    try:
        yield
    finally:
        setattr(owner, attribute, blocks)


def hidden_layer(vision_tower: nn.Module, pixel_values: torch.Tensor, layer: int, **kwargs) -> torch.Tensor:
    """`hidden_states[layer]` of the tower ([N, tokens, D], index 0: the embeddings), computing only the blocks
    before it."""
    found = encoder_blocks(vision_tower)
    if found is None:
        return vision_tower(pixel_values, output_hidden_states=True, **kwargs).hidden_states[layer]
    name, blocks = found
    count = layer % (len(blocks) + 1)  # hidden_states[i] is the output after i blocks
    # At least one block runs: transformers 5 records hidden states as the blocks' inputs and outputs.
    with _first_blocks(vision_tower, name, max(count, 1)):
        return vision_tower(pixel_values, output_hidden_states=True, **kwargs).hidden_states[count]
