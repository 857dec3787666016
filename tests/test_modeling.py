import pytest
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from visionbridge import VisionBridgeForConditionalGeneration

PAIRS = [(v, lm) for v in ("clip", "siglip") for lm in ("llama", "qwen2", "opt")]


def _images(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(32, 32, 3, generator=generator) * 255).byte().numpy()) for _ in range(n)]


@pytest.mark.parametrize(("vision", "language"), PAIRS)
def test_every_encoder_and_language_model_pair_runs_and_backpropagates(make_model, vision, language):
    model, processor = make_model(vision, language)
    inputs = processor(images=_images(1), text="<image> What is this? A picture.")
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
    model.train()
    output = model(**inputs, labels=labels)
    assert output.logits.shape[:2] == inputs["input_ids"].shape
    assert torch.isfinite(output.loss)
    output.loss.backward()
    assert model.connector[0].weight.grad.abs().sum() > 0


def test_samples_with_zero_one_and_three_images_in_one_batch(make_model):
    model, processor = make_model()
    texts = ["no image at all, just words", "<image> one image", "<image> a <image> b <image> c"]
    images = _images(4)
    batch = processor(images=[[], images[:1], images[1:]], text=texts, padding_side="right")
    with torch.no_grad():
        logits = model(**batch).logits
        for row, (text, sample_images) in enumerate(zip(texts, [[], images[:1], images[1:]], strict=True)):
            single = processor(images=sample_images or None, text=text)
            expected = model(**single).logits[0]
            assert torch.allclose(logits[row, : expected.shape[0]], expected, atol=1e-5)


def test_placeholder_feature_mismatch_names_both_numbers(make_model):
    model, processor = make_model()
    inputs = processor(images=_images(2), text=["<image> a", "<image> b"])
    with pytest.raises(ValueError, match="tokens: 32, features: 16"):
        model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][:1])
    with pytest.raises(ValueError, match="tokens: 32, features: 0"):
        model(input_ids=inputs["input_ids"])


def test_inputs_embeds_path_finds_the_placeholders(make_model):
    model, processor = make_model()
    inputs = processor(images=_images(1), text="<image> describe")
    with torch.no_grad():
        by_ids = model(**inputs).logits
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        by_embeds = model(inputs_embeds=embeds, pixel_values=inputs["pixel_values"]).logits
    assert torch.allclose(by_ids, by_embeds, atol=1e-6)


@pytest.mark.parametrize("language", ["llama", "opt"])
def test_batched_left_padded_generation_equals_one_by_one(make_model, language):
    model, processor = make_model("clip", language)
    texts = ["<image> short", "<image> a much longer question about <image> two pictures"]
    images = _images(3)
    per_text = [images[:1], images[1:]]
    batch = processor(images=per_text, text=texts)
    assert batch["attention_mask"][0, 0] == 0  # left padded
    settings = dict(max_new_tokens=6, do_sample=False, min_new_tokens=6)
    batched = model.generate(**batch, **settings)[:, batch["input_ids"].shape[1] :]
    for row, (text, sample_images) in enumerate(zip(texts, per_text, strict=True)):
        single = processor(images=sample_images, text=text)
        alone = model.generate(**single, **settings)[:, single["input_ids"].shape[1] :]
        assert batched[row].tolist() == alone[0].tolist()


def test_vision_tower_runs_once_per_generate_call(make_model):
    model, processor = make_model()
    calls = []
    # A pre-hook: the tower's forward ends at the block its features come from, before forward hooks would run.
    handle = model.vision_tower.register_forward_pre_hook(lambda *args: calls.append(1))
    inputs = processor(images=_images(2), text=["<image> a", "<image> bb"])
    model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    handle.remove()
    assert len(calls) == 1


def test_a_sampled_placeholder_id_is_decoded_as_a_token(make_model):
    """A decoding step that feeds the image placeholder's id (sampled, or forced as here) reads the images from the
    KV cache like any other step instead of encoding them again."""
    model, processor = make_model()
    inputs = processor(images=_images(1), text="<image> hi")
    prompt = inputs["input_ids"].shape[1]

    class PlaceholderFirst(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] == prompt:
                scores = torch.full_like(scores, -1e9)
                scores[:, model.config.image_token_id] = 0.0
            return scores

    forced = LogitsProcessorList([PlaceholderFirst()])
    new = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, logits_processor=forced)
    assert new[0, prompt].item() == model.config.image_token_id and new.shape[1] == prompt + 3


def test_gradient_checkpointing_with_frozen_tower_and_embeddings(make_model):
    model, processor = make_model()
    model.vision_tower.requires_grad_(False)
    model.get_input_embeddings().requires_grad_(False)
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.train()
    first_layer = model.language_model.model.layers[0].self_attn.q_proj.weight
    # A text-only batch: nothing entering the checkpointed blocks needs grad, which reentrant checkpointing
    # answers by dropping the blocks' gradients.
    text_only = processor(text="caption words only")
    model(**text_only, labels=text_only["input_ids"]).loss.backward()
    assert first_layer.grad is not None and first_layer.grad.abs().sum() > 0
    first_layer.grad = None
    inputs = processor(images=_images(1), text="<image> caption words")
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert first_layer.grad is not None and first_layer.grad.abs().sum() > 0
    assert model.connector[0].weight.grad.abs().sum() > 0
    assert model.vision_tower.get_input_embeddings().weight.grad is None


def test_device_map_auto_loads(make_model, tmp_path):
    model, processor = make_model()
    model.save_pretrained(tmp_path)
    loaded = VisionBridgeForConditionalGeneration.from_pretrained(tmp_path, device_map="auto")
    assert loaded.device.type == "cpu"
    inputs = processor(images=_images(1), text="<image> hi")
    with torch.no_grad():
        assert torch.allclose(loaded(**inputs).logits, model(**inputs).logits, atol=1e-6)


@pytest.mark.parametrize("language", ["llama", "opt"])
def test_resize_and_tied_weights_behave_like_transformers(make_model, language, tmp_path):
    model, _ = make_model("clip", language)
    tied = model.config.text_config.tie_word_embeddings
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    old = model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(old + 8)
    assert model.get_input_embeddings().num_embeddings == old + 8
    assert model.get_output_embeddings().weight.shape[0] == old + 8
    assert model.config.text_config.vocab_size == old + 8
    model.save_pretrained(tmp_path)
    loaded = VisionBridgeForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.get_input_embeddings().num_embeddings == old + 8
    assert (loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight) == tied
    assert torch.equal(loaded.get_output_embeddings().weight, model.get_output_embeddings().weight)


@pytest.mark.parametrize("connector", ["mlp2x_gelu", "qformer", "resampler"])
def test_loaded_tensors_equal_the_saved_ones(make_model, tmp_path, connector):
    from safetensors.torch import load_file

    model, _ = make_model("siglip", "qwen2", connector)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    from visionbridge.modeling.saving import canonical_state_dict

    loaded = canonical_state_dict(VisionBridgeForConditionalGeneration.from_pretrained(tmp_path))
    assert saved and set(saved) <= set(loaded)
    for key, tensor in saved.items():
        assert torch.equal(loaded[key], tensor), key


@pytest.mark.parametrize("vision", ["clip", "siglip"])
def test_load_state_dict_reads_the_saved_key_layout(make_model, tmp_path, vision):
    """The Trainer restores a full checkpoint with load_state_dict: every saved tensor, the vision tower's included,
    must land in the model, whichever key layout this transformers line builds the tower with."""
    from safetensors.torch import load_file

    model, _ = make_model(vision, "llama")
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    other, _ = make_model(vision, "llama")
    with torch.no_grad():
        for parameter in other.vision_tower.parameters():
            parameter.add_(1.0)
    result = other.load_state_dict(saved, strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == []
    for name, tensor in other.vision_tower.state_dict().items():
        assert torch.equal(tensor, model.vision_tower.state_dict()[name]), name


def test_from_components_keeps_the_pretrained_weights(components):
    from transformers import AutoModel, AutoModelForCausalLM

    import visionbridge

    vision_path, language_path = components("clip", "llama")
    model, _ = visionbridge.from_components(vision_path, language_path)
    assert 0.015 < model.connector[0].weight.std() < 0.025  # initialised as transformers does, once
    assert not model.connector[0].bias.any()
    vision = AutoModel.from_pretrained(vision_path).state_dict()
    for key, tensor in vision.items():
        assert torch.equal(model.vision_tower.state_dict()[key], tensor), key
    language = AutoModelForCausalLM.from_pretrained(language_path).state_dict()
    for key, tensor in language.items():
        mine = model.language_model.state_dict()[key]
        assert torch.equal(mine[: tensor.shape[0]], tensor), key  # the image token row is new


def test_from_components_passes_dtype_and_attention_implementation(components):
    import visionbridge

    model, _ = visionbridge.from_components(
        *components("siglip", "qwen2"), dtype=torch.bfloat16, attn_implementation="eager"
    )
    assert model.language_model.dtype == model.vision_tower.dtype == torch.bfloat16
    assert model.config.text_config._attn_implementation == "eager"
    assert model.config.vision_config._attn_implementation == "eager"


def test_a_new_image_over_a_reused_cache_is_encoded(make_model):
    """A second turn with a new image, generated over the first turn's KV cache, matches a run without cache."""
    model, processor = make_model()
    images = _images(2)
    first = processor(images=images[:1], text="<image> first picture")
    out = model.generate(**first, max_new_tokens=1, do_sample=False, return_dict_in_generate=True)
    second = processor(images=images[1:], text=" and now <image> this one")
    ids = torch.cat([out.sequences, second["input_ids"]], dim=1)
    settings = dict(attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    reused = model.generate(
        input_ids=ids, pixel_values=second["pixel_values"], past_key_values=out.past_key_values, **settings
    )
    both = torch.cat([first["pixel_values"], second["pixel_values"]])
    fresh = model.generate(input_ids=ids, pixel_values=both, **settings)
    assert reused[:, ids.shape[1] :].tolist() == fresh[:, ids.shape[1] :].tolist()
    with pytest.raises(ValueError, match="tokens: 16, features: 0"):
        model(input_ids=second["input_ids"])


def test_connector_stays_fp32_beside_a_bf16_language_model(make_model, tmp_path):
    model, processor = make_model(dtype=torch.bfloat16, mm_use_im_start_end=True)
    fp32_parts = [*model.connector.parameters(), *model.image_boundary.parameters()]
    assert model.language_model.dtype == model.vision_tower.dtype == torch.bfloat16
    assert {parameter.dtype for parameter in fp32_parts} == {torch.float32}
    inputs = processor(images=_images(1), text="<image> what?")
    with torch.no_grad():
        assert model(**inputs).logits.dtype == torch.bfloat16
    model.save_pretrained(tmp_path)
    loaded = VisionBridgeForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.language_model.dtype == torch.bfloat16
    assert {parameter.dtype for parameter in [*loaded.connector.parameters(), *loaded.image_boundary.parameters()]} == {
        torch.float32
    }
    assert torch.equal(loaded.connector[0].weight, model.connector[0].weight)


def test_a_custom_image_token(components):
    import visionbridge

    model, processor = visionbridge.from_components(*components(), image_token="<img>")
    inputs = processor(images=_images(1), text="<img> what?")
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 16
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]
