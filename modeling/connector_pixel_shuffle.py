"""nanoVLM's connector: pixel shuffle folds each `scale_factor` x `scale_factor` block of patches into one token,
then one linear layer maps it to the LLM width. Fewer image tokens per image: CLIP ViT-L/14 at 336 px gives 576
patches and 144 tokens at factor 2."""

import math

import torch
from torch import nn


class PixelShuffleConnector(nn.Module):
    """Settings: `scale_factor` (2), the side of the block of patches that becomes one token.

    forward: vision features [N, P, D_vision] (P a square whose side `scale_factor` divides)
        -> LLM tokens [N, P / scale_factor^2, D_text]
    """

    settings = {"scale_factor": 2}
    default_lr = None  # without a connector_lr, the connector trains at learning_rate

    def __init__(self, vision_hidden_size: int, text_hidden_size: int, scale_factor: int):
        super().__init__()
        self.scale_factor = scale_factor
        self.proj = nn.Linear(vision_hidden_size * scale_factor**2, text_hidden_size, bias=False)

    @classmethod
    def from_config(cls, config) -> "PixelShuffleConnector":
        scale = config.connector_config.scale_factor
        return cls(config.vision_config.hidden_size, config.text_config.hidden_size, scale)

    @classmethod
    def complete_settings(cls, settings: dict, config) -> dict:
        scale = settings["scale_factor"]
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"The pixel_shuffle connector's scale_factor must be a whole number >= 1, got {scale!r}.")
        if config.vision_feature_select == "full" and config.num_prefix_tokens:
            raise ValueError("pixel_shuffle folds a square grid of patches: use vision_feature_select='patch'.")
        side = config.vision_config.image_size // config.vision_config.patch_size
        if side % scale:
            raise ValueError(
                f"pixel_shuffle's scale_factor={scale} does not divide the encoder's {side}x{side} patch grid "
                f"({config.vision_config.model_type} at {config.vision_config.image_size} px)."
            )
        return settings

    @staticmethod
    def image_tokens(settings: dict, features: int) -> int:
        return features // settings["scale_factor"] ** 2

    def init_weights(self, std: float) -> None:
        """Nothing beyond the model's initialisation of linear layers (normal weights of `std`)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, patches, width = features.shape
        side, scale = math.isqrt(patches), self.scale_factor
        if side * side != patches or side % scale:
            raise ValueError(
                f"pixel_shuffle needs a square grid of patches whose side {scale} divides, got {patches} per image."
            )
        blocks = features.view(batch, side // scale, scale, side // scale, scale, width)  # [N, h, s, w, s, D]
        blocks = blocks.permute(0, 1, 3, 2, 4, 5)  # [N, h, w, s, s, D]: each block's patches together
        tokens = blocks.reshape(batch, (side // scale) ** 2, scale * scale * width)  # [N, P / s^2, s^2 * D]
        return self.proj(tokens)  # [N, P / s^2, D_text]
