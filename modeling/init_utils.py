"""transformers' weight-initialisation helpers, wherever the installed line keeps them."""

import torch
from torch import nn

try:  # transformers 5: these skip tensors that were loaded from a checkpoint
    from transformers.initialization import copy_, no_init_weights
    from transformers.initialization import normal_ as _normal
except ImportError:  # transformers 4.x
    from transformers.modeling_utils import no_init_weights

    _normal = nn.init.normal_

    def copy_(tensor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return tensor.copy_(other)


def normal_(tensor: torch.Tensor, std: float) -> None:
    _normal(tensor, mean=0.0, std=std)


__all__ = ["copy_", "no_init_weights", "normal_"]
