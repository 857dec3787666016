"""The connectors: one line each, a name and the class that builds it.

A connector class is self-contained, one file, and says everything the config and the model need to know about it:

    settings                             its settings (the `connector_config` fields) and their defaults
    complete_settings(settings, config)  the settings with derived defaults filled in and checked (ValueError)
    image_tokens(settings, features)     LLM tokens per image, for `features` vision features per image
    from_config(config)                  the module for a VisionBridgeConfig
    init_weights(std)                    its own initialisation, after the model's generic one of its layers
    default_lr                           the connector_lr `visionbridge train` gives it when it builds it from
                                         fresh weights and none is passed (None: learning_rate)
    forward(features)                    [N, P, D_vision] -> [N, image tokens, D_text]

A saved model carries the file of its connector and names the class in `connector_config.shipped_class`, so that
it loads where visionbridge is not installed (and, for a connector added with `register_connector`, where that
code is not either) with `trust_remote_code=True`.
"""

import re

from torch import nn

from .connector_mlp import MLPConnector
from .connector_pixel_shuffle import PixelShuffleConnector
from .connector_qformer import QFormerConnector
from .connector_resampler import ResamplerConnector

# Name -> class; `{N}` in a name stands for a whole number (mlp2x_gelu, mlp3x_gelu, ...).
CONNECTORS: dict[str, type[nn.Module]] = {
    "linear": MLPConnector,
    "mlp{N}x_gelu": MLPConnector,
    "qformer": QFormerConnector,
    "resampler": ResamplerConnector,
    "pixel_shuffle": PixelShuffleConnector,
}
CONNECTOR_NAMES = tuple(CONNECTORS)  # visionbridge's own


def register_connector(name: str, connector_class: type[nn.Module]) -> None:
    """Make `connector_class` (see the module docstring for what it provides) the connector called `name`. The
    names of visionbridge's own connectors are refused: folders saved with them must load as they were saved."""
    if is_built_in(name):
        raise ValueError(
            f"{name!r} names one of visionbridge's connectors ({', '.join(CONNECTOR_NAMES)}); register yours under "
            "a name of its own."
        )
    CONNECTORS[name] = connector_class


def _named(name: str, pattern: str) -> bool:
    return re.fullmatch(re.escape(pattern).replace(r"\{N\}", r"\d+"), name) is not None


def registered_connector(name: str) -> type[nn.Module] | None:
    """The registered class of the connector called `name`, or None."""
    return next((registered for pattern, registered in CONNECTORS.items() if _named(name, pattern)), None)


def is_built_in(name: str) -> bool:
    """Whether the connector called `name` is one of visionbridge's own."""
    return any(_named(name, pattern) for pattern in CONNECTOR_NAMES)
