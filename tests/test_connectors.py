import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from visionbridge.modeling.connector_resampler import resize_positions, sincos_2d

CONNECTORS = ["linear", "mlp2x_gelu", "pixel_shuffle", "qformer", "resampler"]


def _batch(processor, model):
    """Four random images, the same question, a different one-token answer each: only the image tells them apart."""
    generator = torch.Generator().manual_seed(1)
    images = [Image.fromarray((torch.rand(32, 32, 3, generator=generator) * 255).byte().numpy()) for _ in range(4)]
    texts = [f"<image> Which is it? {digit}" for digit in "2468"]
    batch = processor(images=images, text=texts, padding_side="right")
    labels = torch.full_like(batch["input_ids"], -100)
    lengths = batch["attention_mask"].sum(dim=1)
    rows = torch.arange(4)
    labels[rows, lengths - 1] = batch["input_ids"][rows, lengths - 1]  # supervise the answer only
    assert len(set(labels[rows, lengths - 1].tolist())) == 4
    return batch, labels


@pytest.mark.parametrize("connector", CONNECTORS)
def test_every_connector_trains(make_model, connector):
    """Without image information the best loss is ln 4 = 1.39 (a uniform guess among the four answers); going
    clearly below it shows the connector carries what the image says. (A Q-Former trained from scratch is the
    slowest to get there; BLIP-2 pretrains it.)"""
    model, processor = make_model("clip", "llama", connector)
    batch, labels = _batch(processor, model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2, losses[::8]
    assert losses[-1] < 1.1, losses[::8]


@pytest.mark.parametrize("connector", ["qformer", "resampler"])
def test_query_connectors_take_num_query_tokens_placeholders(make_model, connector):
    model, processor = make_model("clip", "llama", connector)
    count = model.config.connector_config.num_query_tokens
    assert model.config.image_seq_length == count == processor.image_seq_length
    inputs = processor(images=Image.new("RGB", (40, 30)), text="<image> hi")
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == count
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_resampler_gives_the_same_token_count_at_two_resolutions(make_model):
    model, _ = make_model("clip", "llama", "resampler")
    with torch.no_grad():
        low = model.get_image_features(torch.rand(2, 3, 32, 32))  # a 4x4 patch grid, as built
        high = model.get_image_features(torch.rand(2, 3, 64, 64))  # an 8x8 grid: positions are interpolated
    assert low.shape == high.shape == (2, 9, model.config.text_config.hidden_size)
    assert torch.isfinite(high).all()


def test_resampler_positions_are_2d_sincos_and_resize_smoothly():
    table = sincos_2d(4, 16)
    assert table.shape == (16, 16)
    assert torch.equal(table[0, :4], torch.tensor([0.0, 0.0, 0.0, 0.0]))  # sin(0) for row frequencies
    assert torch.equal(table[1, :8], table[0, :8])  # same row, so the row half is unchanged
    assert torch.equal(resize_positions(table, 4), table)
    resized = resize_positions(table, 8)
    assert resized.shape == (64, 16)
    assert torch.allclose(resized[0], table[0], atol=0.3) and torch.allclose(resized[-1], table[-1], atol=0.3)


def test_qformer_settings_are_checked_against_the_encoder():
    from transformers import CLIPVisionConfig, LlamaConfig

    from visionbridge import VisionBridgeConfig

    vision = CLIPVisionConfig(hidden_size=32, num_attention_heads=4)
    config = VisionBridgeConfig(
        vision, LlamaConfig(), connector="qformer", qformer_config={"hidden_size": 64, "num_attention_heads": 4}
    )
    qformer = config.connector_config.qformer_config
    assert qformer.encoder_hidden_size == 32 and qformer.hidden_size == 64
    assert config.image_seq_length == 32
    with pytest.raises(ValueError, match="encoder_hidden_size=48 must equal the vision encoder's hidden_size=32"):
        VisionBridgeConfig(vision, LlamaConfig(), connector="qformer", qformer_config={"encoder_hidden_size": 48})
    with pytest.raises(ValueError, match="square number"):
        VisionBridgeConfig(vision, LlamaConfig(), connector="resampler", num_query_tokens=10)
    with pytest.raises(ValueError, match="square grid"):
        VisionBridgeConfig(vision, LlamaConfig(), connector="resampler", vision_feature_select="full")


# How folders saved before connector_config held a connector's settings: top-level keys of config.json.
FLAT_KEYS = {
    "qformer": {"num_query_tokens": "num_query_tokens", "qformer_config": "qformer_config"},
    "resampler": {"num_query_tokens": "num_query_tokens", "resampler_hidden_size": "hidden_size"},
    "mlp2x_gelu": {},
}


@pytest.mark.parametrize("connector", sorted(FLAT_KEYS))
def test_a_folder_saved_with_top_level_connector_settings_still_loads(make_model, photos, tmp_path, connector):
    model, processor = make_model("clip", "llama", connector)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    settings = config.pop("connector_config")
    config.update({key: settings[setting] for key, setting in FLAT_KEYS[connector].items()})
    if connector == "resampler":
        config["resampler_num_heads"] = settings["num_heads"]
    (tmp_path / "config.json").write_text(json.dumps(config))

    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert loaded.config.image_seq_length == model.config.image_seq_length
    inputs = processor(images=photos[0], text="<image> what is it?")
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)
