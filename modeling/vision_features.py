"""Reading one hidden layer of a vision encoder without running the blocks after it.

LLaVA reads layer -2 of CLIP: the encoder's last block (and its final norm or pooling head) only cost time. The
blocks are found where CLIP, SigLIP and BLIP-2 (`encoder.layers`) and ViT and DINOv2 (`encoder.layer`) keep them;
an encoder laid out otherwise runs whole, with the same result. The tower's forward ends early, so forward
hooks on the tower itself do not run (pre-hooks do).
"""

import torch
from torch import nn


class _LayerReached(Exception):
    """Carries the input of the first block whose output is not needed, which ends the encoder's forward."""

    def __init__(self, hidden_states: torch.Tensor):
        super().__init__()
        self.hidden_states = hidden_states


def encoder_blocks(vision_tower: nn.Module) -> nn.ModuleList | None:
    """The encoder's blocks, in order, or None where the tower keeps them elsewhere."""
    owner = getattr(vision_tower, "vision_model", vision_tower)  # transformers 4.x nests CLIP/SigLIP under it
    encoder = getattr(owner, "encoder", None)
    for name in ("layers", "layer"):
        blocks = getattr(encoder, name, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks):
            return blocks
    return None


def hidden_layer(vision_tower: nn.Module, pixel_values: torch.Tensor, layer: int, **kwargs) -> torch.Tensor:
    """`hidden_states[layer]` of the tower ([N, tokens, D], index 0: the embeddings), computing only the blocks
    before it."""
    blocks = encoder_blocks(vision_tower)
    if blocks is None or layer % (len(blocks) + 1) == len(blocks):
        return vision_tower(pixel_values, output_hidden_states=True, **kwargs).hidden_states[layer]

    def stop(module, args, block_kwargs):
        raise _LayerReached(args[0] if args else block_kwargs["hidden_states"])

    handle = blocks[layer % (len(blocks) + 1)].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        vision_tower(pixel_values, **kwargs)
    except _LayerReached as reached:
        return reached.hidden_states
    finally:
        handle.remove()
    raise RuntimeError(f"{type(vision_tower).__name__} ran without calling its encoder block for layer {layer}.")
