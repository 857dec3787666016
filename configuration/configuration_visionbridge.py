"""VisionBridgeConfig: a vision encoder config, a causal-LM config and the connector that joins them."""

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from transformers import AutoConfig, AutoModelForCausalLM, Blip2QFormerConfig, Blip2VisionConfig, PretrainedConfig
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

# Connectors that keep the encoder's patch grid (one LLM token per patch) and those that emit a fixed
# number of learned queries, with the query count each one defaults to.
PATCH_CONNECTORS = ("linear", "mlp{N}x_gelu")
QUERY_CONNECTORS = {"qformer": 32, "resampler": 256}
CONNECTOR_NAMES = (*PATCH_CONNECTORS, *QUERY_CONNECTORS)
_MLP_PATTERN = re.compile(r"^mlp(\d+)x_gelu$")

# Encoders whose sequence starts with tokens that are not patches (a CLS token); all others start with patches.
PREFIX_TOKENS = {"clip_vision_model": 1, "blip_2_vision_model": 1, "vit": 1, "dinov2": 1, "dinov2_with_registers": 1}


def mlp_depth(connector: str) -> int | None:
    """Number of linear layers of a patch connector (`linear`: 1, `mlp{N}x_gelu`: N), None for any other name."""
    if connector == "linear":
        return 1
    match = _MLP_PATTERN.match(connector)
    return int(match.group(1)) if match else None


_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision")
# The folder or repo being loaded, its hub arguments and the caller's trust_remote_code: where the code of a
# language model that transformers does not know is read from, and whether it may run.
_CODE_SOURCE: ContextVar[tuple[str, dict, bool | None] | None] = ContextVar("visionbridge_code_source", default=None)
# Classes of such language models' configs met in this process (from_components), by model type.
_REMOTE_TEXT_CONFIGS: dict[str, type[PretrainedConfig]] = {}


class RemoteCodeTextConfig(PretrainedConfig):
    """The values of a text_config whose class is code saved beside the weights (its `auto_map`), kept as they
    were saved until that code may run: loading the model with `trust_remote_code=True` builds the real class.
    Built from its own `to_dict()`, it is the same again (transformers rebuilds sub-configs that way)."""

    def __init__(self, model_type: str = "", **values):
        self.remote_model_type = model_type
        self.remote_values = values
        super().__init__(**values)

    def to_dict(self) -> dict:
        values = {key: value for key, value in super().to_dict().items() if not key.startswith("remote_")}
        return {**values, **self.remote_values, "model_type": self.remote_model_type}


@contextmanager
def language_model_code_from(pretrained_model_name_or_path, kwargs: dict, trust_remote_code: bool | None) -> Iterator:
    """While loading from `pretrained_model_name_or_path`, a text_config of a model type transformers lacks takes
    its classes from the code files that its `auto_map` names there, if `trust_remote_code` allows."""
    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if kwargs.get(key) is not None}
    token = _CODE_SOURCE.set((str(pretrained_model_name_or_path), hub_kwargs, trust_remote_code))
    try:
        yield
    finally:
        _CODE_SOURCE.reset(token)


def remote_text_config(model_type: str, values: dict) -> PretrainedConfig:
    """A text_config of a language model that ships its own code: its class from the folder being loaded (when
    trusted), else the class this process already uses for that model type, else a `RemoteCodeTextConfig`."""
    source, auto_map = _CODE_SOURCE.get(), values.get("auto_map") or {}
    if source is not None and source[2] and {"AutoConfig", "AutoModelForCausalLM"} <= auto_map.keys():
        path, hub_kwargs, _ = source
        config_class = get_class_from_dynamic_module(auto_map["AutoConfig"], path, **hub_kwargs)
        model_class = get_class_from_dynamic_module(auto_map["AutoModelForCausalLM"], path, **hub_kwargs)
        # As transformers does for a remote model it loads: later from_config calls find the class.
        AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)
        _REMOTE_TEXT_CONFIGS[model_type] = config_class
    if model_type in _REMOTE_TEXT_CONFIGS:
        return _REMOTE_TEXT_CONFIGS[model_type].from_dict(values)
    return RemoteCodeTextConfig(model_type, **values)


def _waits_for_code(config: PretrainedConfig) -> bool:
    # By name: transformers 5 loads the model's and the config's remote-code files as separate module copies.
    return type(config).__name__ == RemoteCodeTextConfig.__name__


def resolved_text_config(text_config: PretrainedConfig) -> PretrainedConfig:
    """`text_config` with its real class: a `RemoteCodeTextConfig` is resolved from the folder being loaded."""
    if not _waits_for_code(text_config):
        return text_config
    model_type, values = text_config.remote_model_type, text_config.remote_values
    resolved = remote_text_config(model_type, values)
    if _waits_for_code(resolved):
        source = _CODE_SOURCE.get()
        raise ValueError(
            f"The language model ({model_type}) runs code saved with the model ({values.get('auto_map')}); load it "
            f"with trust_remote_code=True{f' from {source[0]}' if source else ' through from_pretrained'}."
        )
    return resolved


def _as_config(value: PretrainedConfig | dict | None, default_type: str, remote_code: bool = False) -> PretrainedConfig:
    """A config from a config, its dict or None (the default type); with `remote_code`, also of a model type that
    transformers does not know, whose class is code that ships with the checkpoint."""
    if value is None:
        return CONFIG_MAPPING[default_type]()
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", default_type)
        if remote_code and model_type not in CONFIG_MAPPING:
            return remote_text_config(model_type, value)
        # transformers 4.x does not register BLIP-2's vision config under its model type.
        config_class = Blip2VisionConfig if model_type == Blip2VisionConfig.model_type else CONFIG_MAPPING[model_type]
        return config_class(**value)
    if remote_code and value.model_type not in CONFIG_MAPPING and not _waits_for_code(value):
        _REMOTE_TEXT_CONFIGS[value.model_type] = type(value)
    return value


class VisionBridgeConfig(PretrainedConfig):
    """Configuration of `VisionBridgeForConditionalGeneration`.

    Args:
        vision_config: config of any transformers vision encoder (CLIP-vision, SigLIP-vision, ...).
        text_config: config of any causal language model (LLaMA, Qwen2, OPT, GPT-NeoX, ...).
        connector: `"linear"`, `"mlp{N}x_gelu"`, `"qformer"` or `"resampler"`.
        num_query_tokens: learned queries of a query connector (`qformer`: 32, `resampler`: 256 by default);
            must stay None for the patch connectors. The resampler's must be a square number (a 2-D grid).
        qformer_config: size of the `qformer` connector's Q-Former (a `Blip2QFormerConfig` or its dict: hidden
            size, layers, heads, `cross_attention_frequency`); its `encoder_hidden_size` is the encoder width.
        resampler_hidden_size: width of the `resampler` connector's attention (default: the LLM width).
        resampler_num_heads: its attention heads (default: width // 128, at least 1).
        vision_feature_layer: hidden layer of the encoder whose output feeds the connector (LLaVA: -2); None
            takes the encoder's own output, after its final norm where it has one (BLIP-2).
        vision_feature_select: `"patch"` drops the encoder's CLS token where it has one, `"full"` keeps it.
        image_token_id: id of the placeholder token that marks where image features go.
        image_seq_length: placeholder tokens per image; derived from the encoder and connector when not given.
        image_aspect_ratio: `"pad"` pads images to a square with the mean colour (LLaVA), `"resize"` stretches them.
        mm_use_im_start_end: wrap each image's placeholders in learned start and end tokens (LLaVA's option of
            that name), whose ids are `image_start_token_id` and `image_end_token_id`.
    """

    model_type = "visionbridge"
    # qformer_config is a nested config too, but only for one connector: transformers 4.x expects every entry
    # of sub_configs to be set.
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config: PretrainedConfig | dict | None = None,
        text_config: PretrainedConfig | dict | None = None,
        connector: str = "mlp2x_gelu",
        num_query_tokens: int | None = None,
        qformer_config: Blip2QFormerConfig | dict | None = None,
        resampler_hidden_size: int | None = None,
        resampler_num_heads: int | None = None,
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
        self.text_config = _as_config(text_config, "llama", remote_code=True)
        if connector not in QUERY_CONNECTORS and mlp_depth(connector) is None:
            raise ValueError(f"Unknown connector {connector!r}; valid connectors are {', '.join(CONNECTOR_NAMES)}.")
        if connector in QUERY_CONNECTORS:
            num_query_tokens = num_query_tokens or QUERY_CONNECTORS[connector]
        elif num_query_tokens is not None:
            raise ValueError(f"num_query_tokens={num_query_tokens} is set, but connector {connector!r} has no queries.")
        if vision_feature_select not in ("patch", "full"):
            raise ValueError(f"vision_feature_select must be 'patch' or 'full', got {vision_feature_select!r}.")
        if connector == "resampler" and vision_feature_select == "full" and self.num_prefix_tokens:
            raise ValueError("The resampler places features on a square grid: use vision_feature_select='patch'.")
        if image_aspect_ratio not in ("pad", "resize"):
            raise ValueError(f"image_aspect_ratio must be 'pad' or 'resize', got {image_aspect_ratio!r}.")
        if mm_use_im_start_end and (image_start_token_id is None or image_end_token_id is None):
            raise ValueError(
                "mm_use_im_start_end=True needs image_start_token_id and image_end_token_id "
                f"(got {image_start_token_id} and {image_end_token_id}); from_components adds the tokens for you."
            )
        self.connector = connector
        self.num_query_tokens = num_query_tokens
        self.qformer_config = self._qformer_config(qformer_config) if connector == "qformer" else None
        if connector == "resampler":
            if round(num_query_tokens**0.5) ** 2 != num_query_tokens:
                raise ValueError(f"The resampler's num_query_tokens must be a square number, got {num_query_tokens}.")
            resampler_hidden_size = resampler_hidden_size or self.text_config.hidden_size
            resampler_num_heads = resampler_num_heads or max(1, resampler_hidden_size // 128)
            if resampler_hidden_size % resampler_num_heads:
                raise ValueError(
                    f"resampler_hidden_size={resampler_hidden_size} is not divisible by "
                    f"resampler_num_heads={resampler_num_heads}."
                )
        self.resampler_hidden_size = resampler_hidden_size
        self.resampler_num_heads = resampler_num_heads
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select = vision_feature_select
        self.image_token_id = image_token_id
        self.image_aspect_ratio = image_aspect_ratio
        self.mm_use_im_start_end = mm_use_im_start_end
        self.image_start_token_id = image_start_token_id
        self.image_end_token_id = image_end_token_id
        self.initializer_range = initializer_range
        self._check_feature_layer()
        if image_seq_length is not None:
            self._check_image_seq_length(image_seq_length)
        self.image_seq_length = image_seq_length or self.derived_image_seq_length(self.vision_config.image_size)
        kwargs.setdefault("tie_word_embeddings", getattr(self.text_config, "tie_word_embeddings", False))
        # The base class sets one attention implementation on every sub-config; keep the ones the parts came with.
        kwargs.setdefault(
            "attn_implementation",
            {key: getattr(self, key)._attn_implementation for key in self.sub_configs},
        )
        super().__init__(**kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "VisionBridgeConfig":
        """As transformers loads a config; `trust_remote_code=True` also loads the code of a language model
        that ships its own (saved beside the weights), else its text_config waits for the model to load it."""
        trust_remote_code = kwargs.pop("trust_remote_code", None)
        if trust_remote_code is None:  # the model's from_pretrained may have set the source already
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        with language_model_code_from(pretrained_model_name_or_path, kwargs, trust_remote_code):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def _qformer_config(self, value: Blip2QFormerConfig | dict | None) -> Blip2QFormerConfig:
        if isinstance(value, dict):
            value = {key: item for key, item in value.items() if key != "model_type"}
            value.setdefault("encoder_hidden_size", self.vision_config.hidden_size)
            value = Blip2QFormerConfig(**value)
        elif value is None:
            value = Blip2QFormerConfig(encoder_hidden_size=self.vision_config.hidden_size)
        if value.encoder_hidden_size != self.vision_config.hidden_size:
            raise ValueError(
                f"qformer_config.encoder_hidden_size={value.encoder_hidden_size} must equal the vision encoder's "
                f"hidden_size={self.vision_config.hidden_size}."
            )
        return value

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
        """A query connector emits its queries; a patch connector one token per patch of a square grid (plus the
        prefix under "full"), at whatever resolution the processor feeds."""
        if self.num_query_tokens is not None:
            if image_seq_length != self.num_query_tokens:
                raise ValueError(
                    f"image_seq_length={image_seq_length} must equal num_query_tokens={self.num_query_tokens}: "
                    f"the {self.connector} connector emits one token per query."
                )
            return
        prefix = self.num_prefix_tokens if self.vision_feature_select == "full" else 0
        grid = math.isqrt(max(image_seq_length - prefix, 0))
        if grid < 1 or grid * grid != image_seq_length - prefix:
            side = self.vision_config.image_size // self.vision_config.patch_size
            prefix_text = f" + {prefix} prefix token{'s' if prefix > 1 else ''}" if prefix else ""
            raise ValueError(
                f"image_seq_length={image_seq_length} does not fit the encoder's patch grid: "
                f"{self.vision_config.model_type} at {self.vision_config.image_size} px gives {side}x{side} patches"
                f"{prefix_text} = {self.derived_image_seq_length(self.vision_config.image_size)} placeholders "
                f"per image, and any resolution a square number of patches{prefix_text}. Leave image_seq_length "
                "unset to derive it."
            )

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens the encoder puts before its patches (CLS); they are dropped under `vision_feature_select="patch"`."""
        registers = self.vision_config.num_register_tokens if self.vision_config.model_type.endswith("registers") else 0
        return PREFIX_TOKENS.get(self.vision_config.model_type, 0) + registers

    def derived_image_seq_length(self, image_size: int) -> int:
        """Placeholders per image of side `image_size`: the queries, or the patches (+ CLS under "full")."""
        if self.num_query_tokens is not None:
            return self.num_query_tokens
        num_patches = (image_size // self.vision_config.patch_size) ** 2
        return num_patches + (self.num_prefix_tokens if self.vision_feature_select == "full" else 0)
