"""`load_mm_projector`: an original LLaVA projector file (`mm_projector.bin` from LLaVA's pretraining stage) as
the connector of a VisionBridge model.

LLaVA saves the projector alone, keys `model.mm_projector.0.weight`, `.0.bias`, `.2.weight`, `.2.bias` for
`mlp2x_gelu` (`model.mm_projector.weight` / `.bias` for `linear`), pickled with torch.save. It is read with
`torch.load(weights_only=True)`, which refuses any pickled object that is not a tensor or plain container; a
`.safetensors` file with the same keys is read too.
"""

import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from .connector_mlp import MLPConnector
from .modeling_visionbridge import VisionBridgeForConditionalGeneration

_PROJECTOR_KEY = re.compile(r"(?:^|\.)mm_projector\.(?:(\d+)\.)?(weight|bias)$")


def _read(path: Path) -> dict:
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds pickled objects other than tensors, which are not loaded (weights_only=True): {error}"
        ) from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a dict of projector tensors.")
    return state


def _connector_keys(state: dict, path: Path, depth: int) -> dict[str, torch.Tensor]:
    """mm_projector tensors under the connector's names (`0.weight`, ...; a single linear layer is `0`)."""
    renamed, others = {}, []
    for key, value in state.items():
        match = _PROJECTOR_KEY.search(key)
        if match is None or not isinstance(value, torch.Tensor):
            others.append(key)
            continue
        renamed[f"{match.group(1) or 0}.{match.group(2)}"] = value
    if others:
        raise ValueError(f"{path}: {len(others)} entries are not mm_projector tensors, e.g. {others[0]!r}.")
    layers = len({name.split(".")[0] for name in renamed})
    if layers != depth:
        raise ValueError(
            f"{path} holds a projector of {layers} linear layers, but the model's connector has {depth}: "
            f"build the model with connector={'linear' if layers == 1 else f'mlp{layers}x_gelu'!r}."
        )
    return renamed


def load_mm_projector(model: VisionBridgeForConditionalGeneration, path: str | Path) -> None:
    """Load LLaVA's pretrained projector (`mm_projector.bin` or `.safetensors`) into `model.connector`, which must
    be the matching `linear` / `mlp{N}x_gelu` connector between encoder and LLM of the same widths."""
    path = Path(path)
    depth = MLPConnector.depth(model.config.connector)
    if depth is None:
        raise ValueError(
            f"A LLaVA mm_projector loads into a linear or mlp{{N}}x_gelu connector, not {model.config.connector!r}."
        )
    weights = _connector_keys(_read(path), path, depth)
    expected = {name: tensor.shape for name, tensor in model.connector.state_dict().items()}
    wrong = [
        f"{name}: file {list(weights[name].shape)}, model {list(shape)}"
        for name, shape in expected.items()
        if name in weights and weights[name].shape != shape
    ]
    missing = sorted(set(expected) - set(weights))
    if wrong or missing:
        raise ValueError(
            f"{path} does not fit this connector (vision hidden_size {model.config.vision_config.hidden_size} -> "
            f"LLM hidden_size {model.config.text_config.hidden_size}): "
            + "; ".join([*wrong, *(f"{name}: missing" for name in missing)])
        )
    model.connector.load_state_dict(weights)
