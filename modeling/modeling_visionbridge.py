"""VisionBridgeForConditionalGeneration: vision tower -> connector -> placeholder scatter -> causal LM.

The language model is kept whole (any `AutoModelForCausalLM`, with its own head, tying and loss), so every
causal LM that transformers can build works here unchanged.
"""

import inspect
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..configuration.configuration_visionbridge import (
    VisionBridgeConfig,
    language_model_code_from,
    mlp_depth,
    resolved_text_config,
)
from .atomic_save import staged_folder
from .chat import chat as _chat
from .connector_mlp import MLPConnector
from .connector_qformer import QFormerConnector
from .connector_resampler import ResamplerConnector
from .hub_upload import pop_hub_kwargs, push_folder
from .image_boundary import ImageBoundary
from .init_utils import copy_, normal_
from .load_checks import check_connector_loaded, check_loaded_state_dict
from .quantization import with_unquantized_parts
from .remote_code import AUTO_MAP, language_model_sources, write_remote_code
from .vision_features import hidden_layer
from .vision_tower import legacy_vision_prefix, vision_tower_from_config

# Weight files of an earlier save that a new one into the same folder replaces.
WEIGHT_FILES = (
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
)


def build_connector(config: VisionBridgeConfig) -> nn.Module:
    """The connector named by `config.connector`: vision features [N, P, D_vision] -> [N, image_seq_length, D_text].

    Each connector lives in its own file, imported here directly: transformers 4.x copies only the files that
    the model file itself imports into a local remote-code folder.
    """
    vision_size, text_size = config.vision_config.hidden_size, config.text_config.hidden_size
    if (depth := mlp_depth(config.connector)) is not None:
        return MLPConnector(vision_size, text_size, depth=depth)
    if config.connector == "qformer":
        return QFormerConnector(config.qformer_config, config.num_query_tokens, text_size)
    if config.connector == "resampler":
        return ResamplerConnector(
            config.num_query_tokens, config.resampler_hidden_size, config.resampler_num_heads, vision_size, text_size
        )
    raise ValueError(f"Connector {config.connector!r} has no implementation in this version of visionbridge.")


def _read_saved_vision_layout(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: tensors saved under the nested vision-tower keys that `canonical_state_dict`
    writes are renamed to the flat keys of a transformers-5 tower (the Trainer restores checkpoints this way)."""
    nested = legacy_vision_prefix(module.vision_tower)
    if nested is None:
        return
    saved, own = f"{prefix}vision_tower.{nested}.", f"{prefix}vision_tower."
    for key in [key for key in state_dict if key.startswith(saved)]:
        state_dict[own + key[len(saved) :]] = state_dict.pop(key)


class VisionBridgeForConditionalGeneration(PreTrainedModel, GenerationMixin):
    config_class = VisionBridgeConfig
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = []  # transformers adds the sub-models' own no-split modules
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_flash_attn_2 = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(
        self,
        config: VisionBridgeConfig,
        vision_tower: PreTrainedModel | None = None,
        language_model: PreTrainedModel | None = None,
    ):
        """`vision_tower` and `language_model` take already-loaded components (see `from_components`)."""
        super().__init__(config)
        self.vision_tower = vision_tower if vision_tower is not None else vision_tower_from_config(config.vision_config)
        config.text_config = resolved_text_config(config.text_config)
        self.language_model = (
            language_model if language_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        )
        # One config object per part, so that resizing or retuning a part is seen by the whole model.
        config.vision_config = self.vision_tower.config
        config.text_config = self.language_model.config
        self.connector = build_connector(config).to(self.language_model.dtype)
        self.image_boundary = (
            ImageBoundary(config.text_config.hidden_size).to(self.language_model.dtype)
            if config.mm_use_im_start_end
            else None
        )
        self._lm_keeps_logits = "logits_to_keep" in inspect.signature(self.language_model.forward).parameters
        if config.connector == "qformer":
            config.qformer_config = self.connector.qformer.config
        # Weights come back in the layout save_pretrained writes; an adapter or checkpoint made for another base fails
        # with one clear message, not a page of size mismatches.
        self.register_load_state_dict_pre_hook(_read_saved_vision_layout)
        self.register_load_state_dict_pre_hook(check_loaded_state_dict)
        self.post_init()

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *args, quantization_config=None, output_loading_info: bool = False, **kwargs
    ):
        """As transformers loads a model, with three additions: a folder without connector weights is refused (which
        transformers would only warn about while it initialised the connector at random); under
        `trust_remote_code=True`, a language model that ships its own code is built from the code files saved in the
        folder or repo; and a bitsandbytes `quantization_config` without `llm_int8_skip_modules` quantizes only the
        language model's body (quantization.py lists what stays unquantized)."""
        if quantization_config is not None:
            kwargs["quantization_config"] = with_unquantized_parts(quantization_config)
        with language_model_code_from(pretrained_model_name_or_path, kwargs, kwargs.get("trust_remote_code")):
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        check_connector_loaded(pretrained_model_name_or_path, info)
        return (model, info) if output_loading_info else model

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # The learned queries are bare parameters, which the generic initialisation does not see.
        if isinstance(module, QFormerConnector):
            normal_(module.query_tokens, std=self.config.initializer_range)
        elif isinstance(module, ResamplerConnector):
            normal_(module.query, std=self.config.initializer_range)
        elif isinstance(module, ImageBoundary):  # LLaVA starts its new token rows at the mean embedding
            mean = self.get_input_embeddings().weight.float().mean(0)  # [D]
            copy_(module.embeddings, mean.expand_as(module.embeddings))

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def resize_token_embeddings(self, *args, **kwargs) -> nn.Embedding:
        return self.language_model.resize_token_embeddings(*args, **kwargs)

    if not hasattr(PreTrainedModel, "activation_checkpointing_enable"):  # transformers 4.x

        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
            # Non-reentrant by default, as transformers 5 does: with a frozen tower and embeddings, reentrant
            # checkpointing sees inputs that need no grad and drops the gradients of the checkpointed blocks.
            super().gradient_checkpointing_enable(gradient_checkpointing_kwargs or {"use_reentrant": False})

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, 3, H, W] -> image tokens [N, image_seq_length, D_text]."""
        kwargs = {}
        if pixel_values.shape[-1] != self.config.vision_config.image_size:
            kwargs["interpolate_pos_encoding"] = True  # another resolution than the encoder was trained at
        layer, pixel_values = self.config.vision_feature_layer, pixel_values.to(self.vision_tower.dtype)
        # A frozen tower needs no autograd graph: its features enter the connector as plain inputs.
        tower_trains = any(parameter.requires_grad for parameter in self.vision_tower.parameters())
        with torch.set_grad_enabled(tower_trains and torch.is_grad_enabled()):
            if layer is None:
                features = self.vision_tower(pixel_values, **kwargs).last_hidden_state  # [N, prefix+P, D_vision]
            else:
                features = hidden_layer(self.vision_tower, pixel_values, layer, **kwargs)  # [N, prefix+P, D_vision]
        if self.config.vision_feature_select == "patch":
            features = features[:, self.config.num_prefix_tokens :]  # [N, P, D_vision]
        return self.connector(features)  # [N, S, D_text]; each connector casts to its own dtype

    def _image_token_mask(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, token_id: int | None = None
    ) -> torch.Tensor:
        """[B, T] bool: where the image placeholders (or the tokens `token_id`) are."""
        token_id = self.config.image_token_id if token_id is None else token_id
        if input_ids is not None:
            return input_ids == token_id
        image_embedding = self.get_input_embeddings().weight[token_id]
        return (inputs_embeds == image_embedding.to(inputs_embeds.dtype)).all(-1)

    def merge_image_features(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Write image tokens [N, S, D] into the placeholder positions of inputs_embeds [B, T, D], in order."""
        mask = self._image_token_mask(input_ids, inputs_embeds)
        num_tokens, num_features = int(mask.sum()), image_features.shape[0] * image_features.shape[1]
        if num_tokens == num_features == 0:
            return inputs_embeds
        if num_tokens != num_features:
            raise ValueError(
                "Image features and image tokens do not match: "
                f"tokens: {num_tokens}, features: {num_features} "
                f"({image_features.shape[0]} images x {image_features.shape[1]} tokens each)."
            )
        mask = mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)  # [B, T, D]
        return inputs_embeds.masked_scatter(mask, image_features.to(inputs_embeds.device, inputs_embeds.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """input_ids [B, T] with `image_seq_length` placeholders per image, pixel_values [N, 3, H, W] for the N
        images of the batch in reading order (any number per sample, none included), labels [B, T] -> logits
        [B, T, V] and the LM loss."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # [B, T, D_text]
        if pixel_values is not None:
            image_features = self.get_image_features(pixel_values)
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, image_features)
        elif input_ids is not None and input_ids.shape[1] > 1:
            # A single decoding step may sample the placeholder id like any other; a prompt must bring its images.
            self.merge_image_features(input_ids, inputs_embeds, inputs_embeds.new_zeros(0, 0, 0))
        if pixel_values is None and self.training and torch.is_grad_enabled() and self._image_path_trains():
            inputs_embeds = inputs_embeds + self._unused_image_path(inputs_embeds)
        if self.image_boundary is not None:
            start = self._image_token_mask(input_ids, inputs_embeds, self.config.image_start_token_id)
            end = self._image_token_mask(input_ids, inputs_embeds, self.config.image_end_token_id)
            inputs_embeds = self.image_boundary(inputs_embeds, start, end)
        packed_shape = inputs_embeds.shape[:2]  # [R, L] when the batch is packed
        one_row = False
        if attention_mask is None and position_ids is not None and past_key_values is None:
            # Packed samples are kept apart by their restarting position_ids only while no KV cache is being built.
            kwargs.setdefault("use_cache", False)
            # Flash attention finds packed samples in a batch of one row only: lay the rows end to end. A row's
            # padding continues its last sample's positions, so it stays behind that sample.
            one_row = packed_shape[0] > 1 and position_ids.shape == packed_shape
            one_row = one_row and self._attention_packs_one_row_only()
            if one_row and logits_to_keep:
                raise ValueError(
                    f"Packed rows under {self.language_model.config._attn_implementation} are laid end to end, "
                    "where logits_to_keep would keep the last row's logits only; pack one row or drop it."
                )
        if one_row:
            inputs_embeds = inputs_embeds.reshape(1, -1, inputs_embeds.shape[-1])  # [1, R * L, D_text]
            position_ids = position_ids.reshape(1, -1)  # [1, R * L]
            labels = None if labels is None else labels.reshape(1, -1)  # [1, R * L]
        if logits_to_keep and self._lm_keeps_logits:
            kwargs["logits_to_keep"] = logits_to_keep
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            **kwargs,
        )
        if one_row and getattr(outputs, "logits", None) is not None:
            outputs.logits = outputs.logits.view(*packed_shape, -1)  # [R, L, V]
        return outputs

    def _attention_packs_one_row_only(self) -> bool:
        return self.language_model.config._attn_implementation.startswith("flash_attention")

    def _image_path_trains(self) -> bool:
        parts = (self.vision_tower, self.connector, self.image_boundary)
        return any(parameter.requires_grad for part in parts if part is not None for parameter in part.parameters())

    def _unused_image_path(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """A zero that depends on every weight of the image path: a blank image through tower and connector, and
        the boundary embeddings. Added to a training batch without images, it gives those weights an exact zero
        gradient instead of none, so that every DDP rank reduces the same tensors whatever its batch holds."""
        side = self.config.vision_config.image_size
        blank = inputs_embeds.new_zeros(1, 3, side, side)  # [1, 3, H, W]
        total = self.get_image_features(blank).float().mean()
        if self.image_boundary is not None:
            total = total + self.image_boundary.embeddings.float().mean()
        return (0.0 * total).to(inputs_embeds.dtype)

    def prepare_inputs_for_generation(self, *args, pixel_values: torch.Tensor | None = None, **kwargs) -> dict:
        model_inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        # Images are encoded when their placeholders are fed (the prefill, or a new turn over a reused cache);
        # later steps read them from the KV cache.
        input_ids = model_inputs.get("input_ids")
        if input_ids is not None:
            feeds_images = bool((input_ids == self.config.image_token_id).any())
        else:
            cache = model_inputs.get("past_key_values")
            feeds_images = not isinstance(cache, Cache) or cache.get_seq_length() == 0
        model_inputs["pixel_values"] = pixel_values if feeds_images else None
        return model_inputs

    def chat(self, processor, query: str, images=None, history: list[dict] | None = None, **generate_kwargs):
        """Qwen-VL's chat: (response, history) for `query` about `images` (PIL images or local paths, labelled
        `Picture N:`), `history` a list of chat messages from an earlier call. See modeling/chat.py."""
        return _chat(self, processor, query, images, history, **generate_kwargs)

    def canonical_state_dict(self, state_dict: dict | None = None) -> dict:
        """The state dict under the key layout every transformers line loads.

        transformers 5 flattened some vision models (CLIPVisionModel: `vision_model.embeddings` became
        `embeddings`) and reads both layouts, while 4.x reads only the nested one; original checkpoints use it too.
        """
        state_dict = self.state_dict() if state_dict is None else state_dict
        prefix = legacy_vision_prefix(self.vision_tower)
        if prefix is None:
            return state_dict
        flat, nested = "vision_tower.", f"vision_tower.{prefix}."
        return {
            nested + key[len(flat) :] if key.startswith(flat) and not key.startswith(nested) else key: value
            for key, value in state_dict.items()
        }

    def save_pretrained(
        self, save_directory, *args, state_dict: dict | None = None, push_to_hub: bool = False, **kwargs
    ) -> None:
        """Save weights, config and the flat remote code that loads them with only transformers and torch; with
        push_to_hub, upload the folder once it is complete (repo_id, token, private, ... as in transformers)."""
        hub_kwargs = pop_hub_kwargs(kwargs)
        self.config.auto_map = dict(AUTO_MAP)
        self.config.architectures = [type(self).__name__]
        language_model_code, language_model_auto_map = language_model_sources(self.language_model)
        if language_model_auto_map:  # the LLM's own code travels in the folder, and its config points at it there
            self.config.text_config.auto_map = language_model_auto_map
        # Written beside the folder and moved in once complete: a half-written folder never loads as a model.
        with staged_folder(save_directory, stale=WEIGHT_FILES) as staging:
            super().save_pretrained(staging, *args, state_dict=self.canonical_state_dict(state_dict), **kwargs)
            write_remote_code([type(self), type(self.config)], staging)
            for name, text in language_model_code.items():
                Path(staging, name).write_text(text)
        if push_to_hub:
            push_folder(save_directory, **hub_kwargs)
