"""VisionBridgeForConditionalGeneration: vision tower -> connector -> placeholder scatter -> causal LM.

The language model is kept whole (any `AutoModelForCausalLM`, with its own head, tying and loss), so every
causal LM that transformers can build works here unchanged.
"""

import inspect

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    Blip2VisionConfig,
    Blip2VisionModel,
    GenerationMixin,
    PreTrainedModel,
)
from transformers.cache_utils import Cache
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.integrations.fsdp import is_fsdp_managed_module
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..compat import CHECKPOINTING_IS_REENTRANT_BY_DEFAULT, copy_, legacy_vision_prefix
from ..configuration.checkpoint_code import code_from, connector_class, resolved
from ..configuration.configuration_visionbridge import VisionBridgeConfig
from .chat import chat as _chat
from .image_boundary import ImageBoundary
from .labelled_loss import head_reproduces_the_logits, labelled_loss
from .load_checks import check_connector_loaded, check_loaded_state_dict
from .quantization import with_unquantized_parts
from .vision_features import hidden_layer


def _vision_tower_from_config(config) -> PreTrainedModel:
    """A randomly initialised encoder for `config`; BLIP-2's vision config is not in AutoModel's mapping."""
    if isinstance(config, Blip2VisionConfig):
        return Blip2VisionModel._from_config(config)
    return AutoModel.from_config(config)


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
    _no_split_modules = []  # the parts' own, set in __init__
    # The connector (and the image start/end embeddings, where the model has them) train and run in fp32 whatever
    # the LLM's dtype, as BLIP-2 keeps its Q-Former; image features enter the LLM in its own dtype.
    _keep_in_fp32_modules_strict = ["connector"]
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
        self.vision_tower = (
            vision_tower if vision_tower is not None else _vision_tower_from_config(config.vision_config)
        )
        config.text_config = resolved(config.text_config)
        self.language_model = (
            language_model if language_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        )
        # One config object per part, so that resizing or retuning a part is seen by the whole model.
        config.vision_config = self.vision_tower.config
        config.text_config = self.language_model.config
        connector = connector_class(config.connector, config.connector_config.shipped_class)
        config.complete_connector_config(connector)
        self.connector = connector.from_config(config).float()
        self.image_boundary = (
            ImageBoundary(config.text_config.hidden_size).float() if config.mm_use_im_start_end else None
        )
        if self.image_boundary is not None:  # transformers 4.x refuses a name the model does not hold
            self._keep_in_fp32_modules_strict = [*self._keep_in_fp32_modules_strict, "image_boundary"]
        lm_parameters = inspect.signature(self.language_model.forward).parameters
        self._lm_keeps_logits = "logits_to_keep" in lm_parameters
        # The LM's own name for the KV cache argument (see forward).
        self._lm_cache_argument = "cache" if "cache" in lm_parameters else "past_key_values"
        self._head_reproduces_the_logits = None  # checked at the first loss_at_labels
        # Weights come back in the layout save_pretrained writes; an adapter or checkpoint made for another base fails
        # with one clear message, not a page of size mismatches.
        self.register_load_state_dict_pre_hook(_read_saved_vision_layout)
        self.register_load_state_dict_pre_hook(check_loaded_state_dict)
        self.post_init()
        self._no_split_modules = self._blocks_of_the_parts()

    def _blocks_of_the_parts(self) -> set[str]:
        """The classes the tower and the LM keep whole (their `_no_split_modules`) that this model holds: what
        device_map keeps on one device and FSDP's default auto-wrap shards as one unit. A part lists classes of its
        whole family (a CLIP vision tower names CLIPTextEmbeddings), and FSDP refuses a name it cannot find;
        transformers 5 gathers the parts' lists in post_init, 4.x does not."""
        held = {type(module).__name__ for module in self.modules()}
        listed = {name for part in (self.vision_tower, self.language_model) for name in part._no_split_modules or []}
        return listed & held

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *args, quantization_config=None, output_loading_info: bool = False, **kwargs
    ):
        """As transformers loads a model, with three additions: a folder without connector weights is refused (which
        transformers would only warn about while it initialised the connector at random); under
        `trust_remote_code=True`, code saved with the model (a language model's own classes, a connector that is not
        built in) is loaded from the folder or repo; and a bitsandbytes `quantization_config` without
        `llm_int8_skip_modules` quantizes only the language model's body (quantization.py lists what stays
        unquantized)."""
        if quantization_config is not None:
            kwargs["quantization_config"] = with_unquantized_parts(quantization_config)
        with code_from(pretrained_model_name_or_path, kwargs, kwargs.get("trust_remote_code")):
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        check_connector_loaded(pretrained_model_name_or_path, info)
        return (model, info) if output_loading_info else model

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self.connector:  # after its layers: the connector's own initialisation comes last
            module.init_weights(self.config.initializer_range)
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

    if CHECKPOINTING_IS_REENTRANT_BY_DEFAULT:

        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
            # Non-reentrant by default, as transformers 5 does: with a frozen tower and embeddings, reentrant
            # checkpointing sees inputs that need no grad and drops the gradients of the checkpointed blocks.
            super().gradient_checkpointing_enable(gradient_checkpointing_kwargs or {"use_reentrant": False})

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, 3, H, W] -> image tokens [N, image_seq_length, D] in the connector's dtype."""
        return self.connector(self.get_vision_features(pixel_values))  # [N, S, D_text]

    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, 3, H, W] -> the features the connector reads [N, P, D_vision], in its dtype."""
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
        return features.to(next(self.connector.parameters()).dtype)

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
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor | None
    ) -> torch.Tensor:
        """Write image tokens [N, S, D] (None: no image) into the placeholder positions of inputs_embeds [B, T, D],
        in order, after checking that placeholders and features match."""
        if image_features is None and inputs_embeds.shape[1] == 1:
            return inputs_embeds  # a decoding step may sample the placeholder id like any other token
        mask = self._image_token_mask(input_ids, inputs_embeds)
        num_features = 0 if image_features is None else image_features.shape[0] * image_features.shape[1]
        num_tokens = int(mask.sum())
        if num_tokens != num_features:
            images = "no images" if image_features is None else f"{image_features.shape[0]} images"
            raise ValueError(
                "Image features and image tokens do not match: "
                f"tokens: {num_tokens}, features: {num_features} ({images} x {self.config.image_seq_length} tokens)."
            )
        if image_features is None:
            return inputs_embeds
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
        loss_only: bool = False,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """input_ids [B, T] with `image_seq_length` placeholders per image, pixel_values [N, 3, H, W] for the N
        images of the batch in reading order (any number per sample, none included), labels [B, T] -> logits
        [B, T, V] and the LM loss. A packed batch (samples end to end, see trainer/packing.py) has position_ids
        restarting at each sample and no attention_mask. With `loss_only` and labels, only the loss is computed,
        from the labelled positions alone (see labelled_loss.py), and `logits` is None."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        # The KV cache is `cache` from transformers 5.24 on, `past_key_values` before (deprecated, removed in 5.40).
        cache = cache if cache is not None else past_key_values
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # [B, T, D_text]
        image_features = None if pixel_values is None else self.get_image_features(pixel_values)
        inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, image_features)
        if pixel_values is None and self._runs_a_blank_image(cache):
            # Where the image features would enter: every rank's backward reaches the image path in the same order.
            inputs_embeds = inputs_embeds + self._unused_image_path(inputs_embeds)
        if self.image_boundary is not None:
            start = self._image_token_mask(input_ids, inputs_embeds, self.config.image_start_token_id)
            end = self._image_token_mask(input_ids, inputs_embeds, self.config.image_end_token_id)
            inputs_embeds = self.image_boundary(inputs_embeds, start, end)
        if attention_mask is None and position_ids is not None and cache is None:
            # Packed samples are kept apart by their restarting position_ids only while no KV cache is being built.
            kwargs.setdefault("use_cache", False)
            self._check_packed_rows(position_ids)
        lm_inputs = dict(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{self._lm_cache_argument: cache},
            **kwargs,
        )
        if loss_only and labels is not None:
            return self.loss_at_labels(labels, **lm_inputs)
        if logits_to_keep and self._lm_keeps_logits:
            lm_inputs["logits_to_keep"] = logits_to_keep
        return self.language_model(labels=labels, **lm_inputs)

    def loss_at_labels(self, labels: torch.Tensor, num_items_in_batch=None, **lm_inputs) -> CausalLMOutputWithPast:
        """The LM loss from the positions whose next token is labelled, its head run on those alone; `logits` is
        None. An LM whose logits `labelled_loss.head_logits` does not reproduce (checked once, on the first batch)
        computes its full logits and its own loss instead."""
        if self._head_reproduces_the_logits is None:
            self._head_reproduces_the_logits = head_reproduces_the_logits(
                self.language_model, lm_inputs, self._lm_keeps_logits
            )
        if not self._head_reproduces_the_logits:
            return self.language_model(labels=labels, num_items_in_batch=num_items_in_batch, **lm_inputs)
        hidden = self.language_model.base_model(**{**lm_inputs, "use_cache": False}).last_hidden_state  # [B, T, D]
        # Processes in step run the body and the head once each, on either path, as the full computation does.
        loss = labelled_loss(self.language_model, hidden, labels, num_items_in_batch, self._ranks_run_in_lockstep())
        return CausalLMOutputWithPast(loss=loss)

    @property
    def is_gradient_checkpointing(self) -> bool:
        # peft reads this name, which transformers 5 deprecated (warning on each read) for is_activation_checkpointing.
        return any(getattr(module, "gradient_checkpointing", False) for module in self.modules())

    def _check_packed_rows(self, position_ids: torch.Tensor) -> None:
        attention = self.language_model.config._attn_implementation
        if position_ids.shape[0] > 1 and attention.startswith("flash_attention"):
            raise ValueError(
                f"{attention} finds packed samples in a batch of one row only, and this one has "
                f"{position_ids.shape[0]} rows: lay them end to end ([1, rows * length]), as the trainer packs."
            )

    def _runs_a_blank_image(self, cache: Cache | None) -> bool:
        """Whether a forward without images runs a blank image through the vision tower and connector, weighted by
        zero: in training, when those hold weights that train, so that every DDP rank reduces the same tensors; and
        wherever the processes gather each module's weights as it runs (ZeRO-3, FSDP), in every forward but a
        decoding step (where no rank feeds images), so that every rank runs the same modules."""
        if self.training and torch.is_grad_enabled():
            parts = (self.vision_tower, self.connector)
            if any(parameter.requires_grad for part in parts for parameter in part.parameters()):
                return True
        decoding = cache is not None and (not isinstance(cache, Cache) or cache.get_seq_length() > 0)
        return not decoding and self._ranks_run_in_lockstep()

    def _ranks_run_in_lockstep(self) -> bool:
        """Whether this is one of several processes whose engine gathers each module's weights as it runs (ZeRO-3,
        FSDP): the test transformers' generate makes to keep such processes in step (`synced_gpus`)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return False
        return torch.distributed.get_world_size() > 1 and (is_deepspeed_zero3_enabled() or is_fsdp_managed_module(self))

    def _unused_image_path(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """A zero that depends on every weight of the tower and connector: a blank image through both. Added to a
        batch without images, it gives those weights an exact zero gradient instead of none. The image start/end
        embeddings need no such term: their own forward runs on every batch (a sharded engine holds their weights
        only there)."""
        side = self.config.vision_config.image_size
        blank = inputs_embeds.new_zeros(1, 3, side, side)  # [1, 3, H, W]
        return (0.0 * self.get_image_features(blank).float().mean()).to(inputs_embeds.dtype)

    def prepare_inputs_for_generation(self, *args, pixel_values: torch.Tensor | None = None, **kwargs) -> dict:
        model_inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        # Images are encoded when their placeholders are fed with a prompt (the prefill, or a new turn over a reused
        # cache); decoding steps feed one token, which may be a sampled placeholder id, and read the images from the
        # KV cache.
        input_ids = model_inputs.get("input_ids")
        if input_ids is not None:
            feeds_images = input_ids.shape[1] > 1 and bool((input_ids == self.config.image_token_id).any())
        else:
            cache = model_inputs.get("cache", model_inputs.get("past_key_values"))
            feeds_images = not isinstance(cache, Cache) or cache.get_seq_length() == 0
        model_inputs["pixel_values"] = pixel_values if feeds_images else None
        return model_inputs

    def chat(self, processor, query: str, images=None, history: list[dict] | None = None, **generate_kwargs):
        """Qwen-VL's chat: (response, history) for `query` about `images` (PIL images or local paths, labelled
        `Picture N:`), `history` a list of chat messages from an earlier call. See modeling/chat.py."""
        return _chat(self, processor, query, images, history, **generate_kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """With visionbridge installed, the folder is written whole (staged beside it, then moved into place) with
        the flat remote code that loads it with only transformers and torch, and uploaded once complete under
        push_to_hub (repo_id, token, private, ... as in transformers). Run as a saved folder's remote code without
        visionbridge, transformers' own save."""
        try:
            from visionbridge.modeling.saving import save_model
        except ImportError:
            return super().save_pretrained(save_directory, *args, **kwargs)
        return save_model(self, save_directory, *args, **kwargs)
