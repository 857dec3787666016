"""VisionBridgeConfig: a vision encoder config, a causal-LM config and the connector that joins them.

The connector's class (modeling/connectors.py lists them) declares its settings, completes and checks them, and
says how many tokens it gives per image; its settings live in `connector_config`.
"""

from torch import nn
from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..compat import config_from_dict
from .checkpoint_code import code_from, connector_class, connector_waits_for_code, text_config

# Top-level keys of folders saved before connector_config held the settings, by connector: key -> setting.
_FLAT_SETTINGS = {
    "qformer": {"num_query_tokens": "num_query_tokens", "qformer_config": "qformer_config"},
    "resampler": {
        "num_query_tokens": "num_query_tokens",
        "resampler_hidden_size": "hidden_size",
        "resampler_num_heads": "num_heads",
    },
}
_FLAT_KEYS = {key for keys in _FLAT_SETTINGS.values() for key in keys}

# Encoders whose sequence starts with tokens that are not patches (a CLS token); all others start with patches.
PREFIX_TOKENS = {"clip_vision_model": 1, "blip_2_vision_model": 1, "vit": 1, "dinov2": 1, "dinov2_with_registers": 1}


class ConnectorConfig:
    """The settings of the model's connector, as attributes, as its class declares them (`settings`).
    `shipped_class` names the class ("file.Class") of a connector that is not built into visionbridge, whose code
    is saved with the model. Saved in config.json as the `connector_config` dict."""

    def __init__(self, shipped_class: str | None = None, **settings):
        self.shipped_class = shipped_class
        self.__dict__.update(settings)

    def to_dict(self) -> dict:
        """The settings as JSON values (a nested config as its dict); `shipped_class` where there is one."""
        values = {name: value for name, value in vars(self).items() if name != "shipped_class"}
        if self.shipped_class is not None:
            values["shipped_class"] = self.shipped_class
        return {
            name: value.to_dict() if isinstance(value, PretrainedConfig) else value for name, value in values.items()
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConnectorConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"ConnectorConfig({self.to_dict()})"


def _as_config(
    value: PretrainedConfig | dict | None, default_type: str, code_may_ship: bool = False
) -> PretrainedConfig:
    """A config from a config, its dict or None (the default type); with `code_may_ship`, also of a model type that
    transformers does not know, whose class is code that ships with the checkpoint."""
    if value is None:
        return CONFIG_MAPPING[default_type]()
    if not isinstance(value, dict):
        return value
    value = dict(value)
    model_type = value.pop("model_type", default_type)
    if code_may_ship and model_type not in CONFIG_MAPPING:
        return text_config(model_type, value)
    return config_from_dict(model_type, value)


class VisionBridgeConfig(PretrainedConfig):
    """Configuration of `VisionBridgeForConditionalGeneration`.

    Args:
        vision_config: config of any transformers vision encoder (CLIP-vision, SigLIP-vision, ...).
        text_config: config of any causal language model (LLaMA, Qwen2, OPT, GPT-NeoX, ...).
        connector: a name of `CONNECTORS`: `"linear"`, `"mlp{N}x_gelu"`, `"qformer"`, `"resampler"`,
            `"pixel_shuffle"`, or one added with `register_connector`.
        connector_config: the connector's settings (a dict or `ConnectorConfig`; its class lists them and their
            defaults in `settings`); missing ones take their defaults. Folders saved before `connector_config`
            hold them as top-level keys, which are read too: `num_query_tokens`, `qformer_config` (qformer),
            `num_query_tokens`, `resampler_hidden_size`, `resampler_num_heads` (resampler).
        vision_feature_layer: hidden layer of the encoder whose output feeds the connector (LLaVA: -2); None
            takes the encoder's own output, after its final norm where it has one (BLIP-2).
        vision_feature_select: `"patch"` drops the encoder's CLS token where it has one, `"full"` keeps it.
        image_token_id: id of the placeholder token that marks where image features go.
        image_seq_length: placeholder tokens per image: the connector's tokens for the encoder's features at the
            resolution the processor feeds. Derived at the encoder's own resolution when not given.
        image_aspect_ratio: `"pad"` pads images to a square with the mean colour (LLaVA), `"resize"` stretches them.
        mm_use_im_start_end: wrap each image's placeholders in learned start and end tokens (LLaVA's option of
            that name), whose ids are `image_start_token_id` and `image_end_token_id`.
    """

    model_type = "visionbridge"
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config: PretrainedConfig | dict | None = None,
        text_config: PretrainedConfig | dict | None = None,
        connector: str = "mlp2x_gelu",
        connector_config: ConnectorConfig | dict | None = None,
        vision_feature_layer: int | None = -2,
        vision_feature_select: str = "patch",
        image_token_id: int | None = None,
        image_seq_length: int | None = None,
        image_aspect_ratio: str = "pad",
        mm_use_im_start_end: bool = False,
        image_start_token_id: int | None = None,
        image_end_token_id: int | None = None,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.vision_config = _as_config(vision_config, "clip_vision_model")
        self.text_config = _as_config(text_config, "llama", code_may_ship=True)
        if vision_feature_select not in ("patch", "full"):
            raise ValueError(f"vision_feature_select must be 'patch' or 'full', got {vision_feature_select!r}.")
        if image_aspect_ratio not in ("pad", "resize"):
            raise ValueError(f"image_aspect_ratio must be 'pad' or 'resize', got {image_aspect_ratio!r}.")
        if mm_use_im_start_end and (image_start_token_id is None or image_end_token_id is None):
            raise ValueError(
                "mm_use_im_start_end=True needs image_start_token_id and image_end_token_id "
                f"(got {image_start_token_id} and {image_end_token_id}); from_components adds the tokens for you."
            )
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select = vision_feature_select
        self.image_token_id = image_token_id
        self.image_aspect_ratio = image_aspect_ratio
        self.mm_use_im_start_end = mm_use_im_start_end
        self.image_start_token_id = image_start_token_id
        self.image_end_token_id = image_end_token_id
        self.initializer_range = initializer_range
        self._check_feature_layer()
        self.connector = connector
        flat = {key: kwargs.pop(key) for key in _FLAT_KEYS & kwargs.keys()}
        given = (
            connector_config.to_dict()
            if isinstance(connector_config, ConnectorConfig)
            else dict(connector_config or {})
        )
        shipped = given.pop("shipped_class", None)
        if connector_waits_for_code(connector, shipped):
            # Saved complete with the model, its settings are kept as they are until the model loads its code.
            self.connector_config = ConnectorConfig(shipped_class=shipped, **given)
            self.image_seq_length = image_seq_length
        else:
            self.connector_config = self._connector_config(given, flat, shipped)
            if image_seq_length is not None:
                self._check_image_seq_length(image_seq_length)
            self.image_seq_length = image_seq_length or self.image_tokens_at(self.vision_config.image_size)
        kwargs.setdefault("tie_word_embeddings", getattr(self.text_config, "tie_word_embeddings", False))
        # The base class sets one attention implementation on every sub-config; keep the ones the parts came with.
        kwargs.setdefault(
            "attn_implementation",
            {key: getattr(self, key)._attn_implementation for key in self.sub_configs},
        )
        super().__init__(**kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "VisionBridgeConfig":
        """As transformers loads a config; `trust_remote_code=True` also loads code saved with the model (a language
        model's own classes, a connector that is not built in), else the language model's config waits for the
        model to load it."""
        trust_remote_code = kwargs.pop("trust_remote_code", None)
        if trust_remote_code is None:  # the model's from_pretrained may have set the source already
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        with code_from(pretrained_model_name_or_path, kwargs, trust_remote_code):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @property
    def connector_class(self) -> type[nn.Module]:
        """The class that builds this config's connector."""
        return connector_class(self.connector, self.connector_config.shipped_class)

    def _connector_config(self, given: dict, flat: dict, shipped: str | None) -> ConnectorConfig:
        """The connector's settings: its defaults, then `given`, then the flat keyword arguments; completed and
        checked by its class."""
        connector = connector_class(self.connector, shipped)
        renamed = _FLAT_SETTINGS.get(self.connector, {})
        settings = {**connector.settings, **given, **{renamed[key]: flat[key] for key in flat.keys() & renamed.keys()}}
        unknown = sorted((settings.keys() - connector.settings.keys()) | (flat.keys() - renamed.keys()))
        if unknown:
            names = ", ".join(connector.settings) or "none"
            raise ValueError(
                f"The {self.connector} connector has no setting {', '.join(unknown)} (its settings: {names})."
            )
        self.connector_config = ConnectorConfig(shipped_class=shipped, **settings)
        self.complete_connector_config(connector)
        return self.connector_config

    def complete_connector_config(self, connector: type[nn.Module]) -> None:
        """Complete and check the connector's settings with its class: when the config is made, or when the model
        loads a connector's code saved with it."""
        settings = self.connector_config.to_dict()
        shipped = settings.pop("shipped_class", None)
        self.connector_config = ConnectorConfig(shipped_class=shipped, **connector.complete_settings(settings, self))

    def _check_feature_layer(self) -> None:
        """hidden_states holds the embeddings and each layer's output: L + 1 entries, indexed -(L + 1) to L."""
        layers = getattr(self.vision_config, "num_hidden_layers", None)
        layer = self.vision_feature_layer
        if layer is not None and layers is not None and not -(layers + 1) <= layer <= layers:
            raise ValueError(
                f"vision_feature_layer={layer} is out of range: the vision encoder "
                f"({self.vision_config.model_type}) has {layers} layers, so its hidden states are indexed "
                f"{-(layers + 1)} to {layers} (or None for its final output)."
            )

    def _check_image_seq_length(self, image_seq_length: int) -> None:
        """The connector must give `image_seq_length` tokens at some resolution (a square grid of patches)."""
        connector, patch = self.connector_class, self.vision_config.patch_size
        possible = sorted({self._image_tokens(connector, side * patch) for side in range(1, 1025)})
        if image_seq_length not in possible:
            native = self.vision_config.image_size
            raise ValueError(
                f"image_seq_length={image_seq_length} does not fit the {self.connector} connector on "
                f"{self.vision_config.model_type}: it gives {self._image_tokens(connector, native)} tokens per image "
                f"at {native} px, and {', '.join(map(str, possible[:6]))}{', ...' if len(possible) > 6 else ''} at "
                "any resolution. Leave image_seq_length unset to derive it."
            )

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens the encoder puts before its patches (CLS); they are dropped under `vision_feature_select="patch"`."""
        registers = self.vision_config.num_register_tokens if self.vision_config.model_type.endswith("registers") else 0
        return PREFIX_TOKENS.get(self.vision_config.model_type, 0) + registers

    def image_tokens_at(self, image_size: int) -> int:
        """Placeholders per image of side `image_size`: the connector's tokens for the encoder's features there."""
        return self._image_tokens(self.connector_class, image_size)

    def _image_tokens(self, connector: type[nn.Module], image_size: int) -> int:
        features = (image_size // self.vision_config.patch_size) ** 2
        if self.vision_feature_select == "full":
            features += self.num_prefix_tokens
        return connector.image_tokens(self.connector_config.to_dict(), features)

    def to_dict(self) -> dict:
        output = super().to_dict()
        output["connector_config"] = self.connector_config.to_dict()
        return output
