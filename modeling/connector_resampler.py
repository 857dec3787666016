"""Qwen-VL's connector: one cross-attention layer of learned queries over the vision features."""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..compat import fan_in_normal_, normal_


@functools.lru_cache(maxsize=8)
def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions of a grid x grid layout, row-major: [grid * grid, dim]."""
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # [dim/4]
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )
    angles_y = rows.reshape(-1, 1) * frequencies  # [grid^2, dim/4]
    angles_x = cols.reshape(-1, 1) * frequencies
    table = torch.cat([angles_y.sin(), angles_y.cos(), angles_x.sin(), angles_x.cos()], dim=1)  # [grid^2, 4*(dim/4)]
    return F.pad(table, (0, dim - table.shape[1])).float()


def resize_positions(table: torch.Tensor, grid: int) -> torch.Tensor:
    """Bicubic interpolation of a square position table [g*g, dim] to [grid*grid, dim]."""
    source = math.isqrt(table.shape[0])
    if source == grid:
        return table
    square = table.reshape(1, source, source, -1).permute(0, 3, 1, 2)  # [1, dim, g, g]
    square = F.interpolate(square, size=(grid, grid), mode="bicubic", align_corners=False)
    return square.permute(0, 2, 3, 1).reshape(grid * grid, -1)


class ResamplerConnector(nn.Module):
    """`num_queries` learned queries (a square grid) cross-attend once to the projected vision features, with 2-D
    sin-cos positions on queries and keys (the key positions are the query table resized to the feature grid),
    then a projection to the LLM width. The token count is fixed whatever the image resolution.

    Settings: `num_query_tokens` (Qwen-VL: 256; a square number), `hidden_size` of the attention (default: the LLM
    width) and `num_heads` (default: hidden_size // 128, at least 1).

    forward: vision features [N, P, D_vision] (P a square) -> LLM tokens [N, num_queries, D_text]
    """

    settings = {"num_query_tokens": 256, "hidden_size": None, "num_heads": None}
    # Its learning rate from fresh weights (see connectors.py): the resampler learned the digits task at 1e-3
    # beside LoRA at 1e-3, and less well at 3e-3 (README, Connectors).
    default_lr = 1e-3

    def __init__(
        self, num_queries: int, hidden_size: int, num_heads: int, vision_hidden_size: int, text_hidden_size: int
    ):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(num_queries, hidden_size))
        self.kv_proj = nn.Linear(vision_hidden_size, hidden_size, bias=False)
        self.ln_q, self.ln_kv, self.ln_post = (nn.LayerNorm(hidden_size) for _ in range(3))
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(hidden_size, hidden_size) for _ in range(4))
        self.proj = nn.Linear(hidden_size, text_hidden_size)

    @classmethod
    def from_config(cls, config) -> "ResamplerConnector":
        settings = config.connector_config
        return cls(
            settings.num_query_tokens,
            settings.hidden_size,
            settings.num_heads,
            config.vision_config.hidden_size,
            config.text_config.hidden_size,
        )

    @classmethod
    def complete_settings(cls, settings: dict, config) -> dict:
        count = settings["num_query_tokens"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1 or math.isqrt(count) ** 2 != count:
            raise ValueError(f"The resampler's num_query_tokens must be a square number >= 1, got {count!r}.")
        if config.vision_feature_select == "full" and config.num_prefix_tokens:
            raise ValueError("The resampler places features on a square grid: use vision_feature_select='patch'.")
        hidden_size = settings["hidden_size"] or config.text_config.hidden_size
        num_heads = settings["num_heads"] or max(1, hidden_size // 128)
        if hidden_size % num_heads:
            raise ValueError(f"The resampler's hidden_size={hidden_size} is not divisible by num_heads={num_heads}.")
        return {**settings, "hidden_size": hidden_size, "num_heads": num_heads}

    @staticmethod
    def image_tokens(settings: dict, features: int) -> int:
        return settings["num_query_tokens"]

    def init_weights(self, std: float) -> None:
        """Linear layers at fan-in scale, as Qwen-VL's final projection: at the model's `std` (0.02) the output
        varies between images by a fifth of its size and the queries look alike (at fan-in scale: about 40%). The
        queries are a bare parameter, at `std`: they are normalised first."""
        fan_in_normal_(self)
        normal_(self.query, std=std)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [N, L, E] -> [N, heads, L, E / heads]
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, patches, _ = features.shape
        grid = math.isqrt(patches)
        if grid * grid != patches:
            raise ValueError(f"The resampler needs a square grid of vision features, got {patches} per image.")
        query_positions = sincos_2d(math.isqrt(self.query.shape[0]), self.query.shape[1]).to(self.query)  # [Q, E]
        key_positions = resize_positions(query_positions, grid)  # [P, E]

        keys = self.ln_kv(self.kv_proj(features))  # [N, P, E]
        queries = self.ln_q(self.query).expand(batch, -1, -1)  # [N, Q, E]
        attended = F.scaled_dot_product_attention(
            self._heads(self.q_proj(queries + query_positions)),
            self._heads(self.k_proj(keys + key_positions)),
            self._heads(self.v_proj(keys)),
        )  # [N, heads, Q, E / heads]
        attended = self.out_proj(attended.transpose(1, 2).flatten(2))  # [N, Q, E]
        return self.proj(self.ln_post(attended))  # [N, Q, D_text]
