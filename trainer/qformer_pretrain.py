"""BLIP-2's first stage for the `qformer` connector: the query tokens and the Q-Former learn from image-text pairs
against the frozen vision tower, with no LLM, by image-text contrastive learning (ITC).

BLIP-2 trains this stage with three losses: ITC, image-text matching (ITM) and image-grounded text generation.
ITC alone is used here: it is what makes the queries carry what tells one image from another, which is what the
LLM stage needs; on the digits task ITM added beside it changed nothing measurable (0.841 with it, 0.844 without,
300 + 1,700 steps) and costs a second pass, and generation needs a text decoder that the LLM replaces anyway.

As in BLIP-2, the text goes through the Q-Former's own layers, sharing their self-attention with the queries
(with a feed-forward block of its own, the `use_qformer_text_input` layers of transformers' Q-Former), and is read
at a [CLS] token; the image-text similarity is the best match over the queries. The text of a sample is its
answer (the labelled tokens: a caption in caption data); samples with the same text are all positives of each
other. Everything this stage adds (text embeddings and feed-forward blocks, projections, temperature) lives here
and is never part of the model, so neither the saved model nor an adapter holds it.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel
from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

from ..modeling.connector_qformer import QFormerConnector
from ..modeling.modeling_visionbridge import VisionBridgeForConditionalGeneration

# The longest text read, in tokens with the [CLS] token (BLIP-2: 32).
MAX_TEXT_TOKENS = 32
# Width of the space where images and texts are compared (BLIP-2: 256), at most the Q-Former's.
EMBEDDING_SIZE = 256


class QFormerPretraining(nn.Module):
    """The stage's own modules around the model's Q-Former, and its loss on a collated batch."""

    def __init__(self, model: VisionBridgeForConditionalGeneration):
        super().__init__()
        connector = model.connector
        if model.config.connector == "qformer" and not isinstance(connector, QFormerConnector):
            raise ValueError(
                "stage='qformer_pretrain' trains the Q-Former of a model without adapters: pass the model itself, "
                "not a peft model."
            )
        if not isinstance(connector, QFormerConnector):
            raise ValueError(
                f"stage='qformer_pretrain' trains a Q-Former: the model's connector is {model.config.connector!r}, "
                "not 'qformer'."
            )
        qformer = connector.qformer
        self._shared = {id(parameter) for parameter in qformer.parameters()}
        vocab = model.get_input_embeddings().num_embeddings
        config = Blip2QFormerConfig.from_dict(
            {
                **qformer.config.to_dict(),
                "use_qformer_text_input": True,
                "vocab_size": vocab + 1,  # the last row is [CLS]
                "pad_token_id": None,
                "max_position_embeddings": MAX_TEXT_TOKENS,
            }
        )
        self.cls_token_id = vocab
        self.text_embeddings = Blip2TextEmbeddings(config)
        self.text_qformer = Blip2QFormerModel(config)
        # The text path is the model's Q-Former but for its feed-forward blocks: every other module is shared.
        self.text_qformer.layernorm = qformer.layernorm
        for text_layer, layer in zip(self.text_qformer.encoder.layer, qformer.encoder.layer, strict=True):
            text_layer.attention = layer.attention
            text_layer.intermediate_query, text_layer.output_query = layer.intermediate_query, layer.output_query
            if layer.has_cross_attention:
                text_layer.crossattention = layer.crossattention
        hidden = config.hidden_size
        self.image_projection = nn.Linear(hidden, min(EMBEDDING_SIZE, hidden))
        self.text_projection = nn.Linear(hidden, min(EMBEDDING_SIZE, hidden))
        self.temperature = nn.Parameter(torch.tensor(0.07))  # BLIP-2's starting temperature
        self._init_own_weights()

    def _init_own_weights(self) -> None:
        """The text blocks at the scale of the query blocks they sit beside, the text embeddings at unit scale (the
        Q-Former normalises its input first)."""
        with torch.no_grad():
            for layer in self.text_qformer.encoder.layer:
                for own, twin in ((layer.intermediate, layer.intermediate_query), (layer.output, layer.output_query)):
                    own.dense.weight.normal_(0.0, twin.dense.weight.std().item())
                    own.dense.bias.zero_()
                    if hasattr(own, "LayerNorm"):
                        own.LayerNorm.load_state_dict(twin.LayerNorm.state_dict())
            nn.init.normal_(self.text_embeddings.word_embeddings.weight, std=1.0)
            nn.init.normal_(self.text_embeddings.position_embeddings.weight, std=1.0)

    def own_parameters(self) -> list[nn.Parameter]:
        """The stage's own parameters, without the Q-Former's that the text path shares."""
        return [parameter for parameter in self.parameters() if id(parameter) not in self._shared]

    def texts(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's labelled tokens after [CLS], cut at MAX_TEXT_TOKENS: (ids [B, L], mask [B, L])."""
        rows = [
            torch.cat([ids.new_tensor([self.cls_token_id]), ids[row_labels != -100]])[:MAX_TEXT_TOKENS]
            for ids, row_labels in zip(input_ids, labels, strict=True)
        ]
        length = max(len(row) for row in rows)
        ids = input_ids.new_zeros(len(rows), length)
        mask = input_ids.new_zeros(len(rows), length)
        for index, row in enumerate(rows):
            ids[index, : len(row)], mask[index, : len(row)] = row, 1
        return ids, mask

    def loss(self, model: VisionBridgeForConditionalGeneration, inputs: dict) -> torch.Tensor:
        """ITC loss of a collated batch whose every sample has one image, `model` the one this stage was made for."""
        input_ids, labels, pixel_values = inputs["input_ids"], inputs["labels"], inputs.get("pixel_values")
        placeholders = (input_ids == model.config.image_token_id).sum(1) // model.config.image_seq_length  # [B]
        if pixel_values is None or (placeholders != 1).any():
            counts = placeholders.tolist()
            raise ValueError(
                "stage='qformer_pretrain' pairs each sample's image with its answer: every sample needs exactly "
                f"one image; this batch's samples have {counts} images."
            )
        features = model.get_vision_features(pixel_values)  # [B, P, D_vision]
        queries = model.connector.query_outputs(features)  # [B, Q, H]
        ids, mask = self.texts(input_ids, labels)  # [B, L]
        text = self.text_qformer(
            query_embeds=self.text_embeddings(input_ids=ids), query_length=0, attention_mask=mask
        ).last_hidden_state  # [B, L, H]
        image_embeddings = F.normalize(self.image_projection(queries), dim=-1)  # [B, Q, E]
        text_embeddings = F.normalize(self.text_projection(text[:, 0]), dim=-1)  # [B, E]
        # image i against text j: the best of i's queries
        similarity = torch.einsum("iqe,je->ijq", image_embeddings, text_embeddings).amax(-1)  # [B, B]
        similarity = similarity / self.temperature.clamp(min=1e-3)
        tokens = torch.cat([ids * mask, mask], dim=1)  # [B, 2L]: padding is no token
        same = (tokens[:, None] == tokens[None]).all(-1).float()  # [B, B]: samples with the same text
        targets = same / same.sum(1, keepdim=True)
        image_to_text = -(targets * F.log_softmax(similarity, dim=1)).sum(1).mean()
        text_to_image = -(targets * F.log_softmax(similarity.t(), dim=1)).sum(1).mean()
        return (image_to_text + text_to_image) / 2
