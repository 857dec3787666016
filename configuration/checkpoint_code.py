"""Code that ships with a checkpoint: a language model whose classes transformers does not have (its config's
`auto_map` names them, in code files saved beside the weights), and the model's connector (saved folders carry its
file, `connector_config.shipped_class` names the class), for where visionbridge is not installed.

That code runs only where the caller allowed it (`trust_remote_code=True`). The narrow interface:
- `code_from(path, kwargs, trust_remote_code)`: while loading from `path`, classes may come from its code files;
- `text_config(model_type, values)`: a text_config for a model type transformers lacks;
- `resolved(text_config)`: that config with its real class, or an error saying how to load it;
- `shipped_class(reference, what)`: a class ("file.Class") from the code files of the checkpoint being loaded;
- `may_run_shipped_code()`: whether that is allowed now;
- `connector_class(name, shipped)`, `connector_waits_for_code(name, shipped)`: where a connector's class comes from,
  and whether it cannot come yet.

transformers 5 loads a folder's configuration and modeling files as separate module copies, each with its own copy
of this one: the model resolves its classes through the copy its own file imports.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.dynamic_module_utils import get_class_from_dynamic_module

_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision")
# The folder or repo being loaded, its hub arguments and the caller's trust_remote_code.
_SOURCE: ContextVar[tuple[str, dict, bool | None] | None] = ContextVar("visionbridge_code_source", default=None)


class PendingTextConfig(PretrainedConfig):
    """The values of a text_config whose class is code saved beside the weights, kept as they were saved until
    that code may run: loading the model with `trust_remote_code=True` builds the real class. Built from its own
    `to_dict()`, it is the same again (transformers rebuilds sub-configs that way)."""

    def __init__(self, model_type: str = "", **values):
        self.remote_model_type = model_type
        self.remote_values = values
        super().__init__(**values)

    def to_dict(self) -> dict:
        values = {key: value for key, value in super().to_dict().items() if not key.startswith("remote_")}
        return {**values, **self.remote_values, "model_type": self.remote_model_type}


@contextmanager
def code_from(pretrained_model_name_or_path, kwargs: dict, trust_remote_code: bool | None) -> Iterator:
    """While loading from `pretrained_model_name_or_path`, classes named by its config may be read from the code
    files saved there, if `trust_remote_code` allows."""
    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if kwargs.get(key) is not None}
    token = _SOURCE.set((str(pretrained_model_name_or_path), hub_kwargs, trust_remote_code))
    try:
        yield
    finally:
        _SOURCE.reset(token)


def may_run_shipped_code() -> bool:
    """Whether the checkpoint being loaded may run the code saved with it."""
    source = _SOURCE.get()
    return source is not None and bool(source[2])


def shipped_class(reference: str, what: str) -> type:
    """The class `reference` ("file.Class") from the code files of the checkpoint being loaded; `what` names it in
    the error raised where that code may not run."""
    source = _SOURCE.get()
    if not may_run_shipped_code():
        where = f" from {source[0]}" if source else " through from_pretrained"
        raise ValueError(
            f"{what} runs code saved with the model ({reference}); load it with trust_remote_code=True{where}."
        )
    path, hub_kwargs, _ = source
    return get_class_from_dynamic_module(reference, path, **hub_kwargs)


def _registry():
    try:
        from visionbridge.modeling import connectors
    except ImportError:  # a saved folder's remote code, without visionbridge
        return None
    return connectors


def registered_connector(name: str) -> type | None:
    """The class registered for the connector called `name` in visionbridge, where it is installed, else None."""
    registry = _registry()
    return None if registry is None else registry.registered_connector(name)


def connector_waits_for_code(name: str, shipped: str | None) -> bool:
    """Whether the connector `name` is code saved with the model (or the model's own file, where visionbridge is not
    installed) that may not run yet: its settings are then kept as saved until the model loads that code."""
    return (
        registered_connector(name) is None and not may_run_shipped_code() and (shipped is not None or not _registry())
    )


def connector_class(name: str, shipped: str | None) -> type:
    """The class of the connector called `name`: registered in visionbridge where it is installed, else the code
    saved with the model being loaded (`shipped`, "file.Class"), which runs only under trust_remote_code."""
    registered = registered_connector(name)
    if registered is not None:
        return registered
    if shipped is None:
        registry = _registry()
        known = "those of visionbridge" if registry is None else ", ".join(registry.CONNECTORS)
        raise ValueError(f"Unknown connector {name!r}; valid connectors are {known}.")
    return shipped_class(shipped, f"The connector {name!r}")


def text_config(model_type: str, values: dict) -> PretrainedConfig:
    """A text_config of a language model that ships its own code: its class from the checkpoint being loaded (when
    trusted), else a `PendingTextConfig` that waits for the model to load it."""
    auto_map = values.get("auto_map") or {}
    if not may_run_shipped_code() or not {"AutoConfig", "AutoModelForCausalLM"} <= auto_map.keys():
        return PendingTextConfig(model_type, **values)
    what = f"The language model ({model_type})"
    config_class = shipped_class(auto_map["AutoConfig"], what)
    # As transformers does for a remote model it loads, so that AutoModelForCausalLM.from_config finds the class.
    AutoModelForCausalLM.register(config_class, shipped_class(auto_map["AutoModelForCausalLM"], what), exist_ok=True)
    return config_class.from_dict(values)


def is_pending(config: PretrainedConfig) -> bool:
    # By name: transformers 5 loads the model's and the config's remote-code files as separate module copies.
    return type(config).__name__ == PendingTextConfig.__name__


def resolved(config: PretrainedConfig) -> PretrainedConfig:
    """`config` with its real class: a `PendingTextConfig` is resolved from the checkpoint being loaded."""
    if not is_pending(config):
        return config
    model_type, values = config.remote_model_type, config.remote_values
    resolved_config = text_config(model_type, values)
    if is_pending(resolved_config):
        source = _SOURCE.get()
        raise ValueError(
            f"The language model ({model_type}) runs code saved with the model ({values.get('auto_map')}); load it "
            f"with trust_remote_code=True{f' from {source[0]}' if source else ' through from_pretrained'}."
        )
    return resolved_config
