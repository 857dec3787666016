"""from_llava / from_blip2 on tiny random transformers models: same logits (fp32, < 1e-5), same greedy tokens."""

import subprocess
import sys

import pytest
import torch
from tokenizers import AddedToken
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    OPTConfig,
    T5Config,
)

import visionbridge
from visionbridge.modeling.tiny_components import train_tiny_tokenizer

LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% elif item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def _tokenizer_with_image_token():
    tokenizer = train_tiny_tokenizer()
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    return tokenizer


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    tokenizer = _tokenizer_with_image_token()
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=32, patch_size=8, **SIZES),
        text_config=LlamaConfig(vocab_size=len(tokenizer), num_key_value_heads=2, **SIZES),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=16,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llava")
    LlavaForConditionalGeneration(config).save_pretrained(path)
    LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    ).save_pretrained(path)
    return path


def _blip2_config(tokenizer, text_config) -> Blip2Config:
    return Blip2Config(
        vision_config=Blip2VisionConfig(image_size=32, patch_size=8, **SIZES).to_dict(),
        qformer_config=Blip2QFormerConfig(encoder_hidden_size=32, **SIZES).to_dict(),
        text_config=text_config.to_dict(),
        num_query_tokens=8,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory):
    tokenizer = _tokenizer_with_image_token()
    text = OPTConfig(
        vocab_size=len(tokenizer), ffn_dim=64, word_embed_proj_dim=32, **{**SIZES, "intermediate_size": None}
    )
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(_blip2_config(tokenizer, text))
    with torch.no_grad():
        model.query_tokens.normal_(std=0.5)  # BLIP-2 starts them at zero; random ones make the check meaningful
    path = tmp_path_factory.mktemp("blip2")
    model.save_pretrained(path)
    Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer, num_query_tokens=8
    ).save_pretrained(path)
    return path


def _assert_same_outputs(original, converted, inputs):
    inputs = {key: value for key, value in inputs.items() if key != "token_type_ids"}  # 4.x tokenizers add them
    with torch.no_grad():
        expected = original(**inputs).logits
        actual = converted(**inputs).logits
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() < 1e-5
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    expected_tokens = original.generate(**inputs, **settings)[:, -6:]
    assert torch.equal(converted.generate(**inputs, **settings)[:, -6:], expected_tokens)


def test_from_llava_gives_the_same_logits_and_tokens(llava_dir, photos):
    original = LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()
    llava_processor = LlavaProcessor.from_pretrained(llava_dir)
    model, processor = visionbridge.from_llava(llava_dir)
    assert (model.config.vision_feature_layer, model.config.vision_feature_select) == (-2, "patch")
    assert model.config.image_seq_length == 16

    prompt = llava_processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert processor.apply_chat_template(MESSAGES, add_generation_prompt=True) == prompt
    inputs = llava_processor(images=photos[0], text=prompt, return_tensors="pt")
    assert torch.equal(processor(images=photos[0], text=prompt)["input_ids"], inputs["input_ids"])
    _assert_same_outputs(original, model, inputs)


def test_from_blip2_gives_the_same_logits_and_tokens(blip2_dir, photos):
    original = Blip2ForConditionalGeneration.from_pretrained(blip2_dir).eval()
    blip2_processor = Blip2Processor.from_pretrained(blip2_dir)
    model, processor = visionbridge.from_blip2(blip2_dir)
    assert (model.config.connector, model.config.image_seq_length) == ("qformer", 8)
    inputs = blip2_processor(images=photos[1], text="Question: what is this? Answer:", return_tensors="pt")
    _assert_same_outputs(original, model, inputs)
    ours = processor(images=photos[1], text="<image>Question: what is this? Answer:")
    assert (ours["input_ids"] == model.config.image_token_id).sum() == 8


def test_blip2_with_t5_is_refused_clearly():
    tokenizer = _tokenizer_with_image_token()
    text = T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, num_layers=1, num_heads=4, d_kv=8)
    with pytest.raises(ValueError, match="only decoder-only"):
        visionbridge.from_blip2(Blip2ForConditionalGeneration(_blip2_config(tokenizer, text)))


@pytest.mark.parametrize("source_format", ["llava", "blip2"])
def test_convert_command_writes_a_hub_ready_folder(request, source_format, tmp_path, photos):
    source = request.getfixturevalue(f"{source_format}_dir")
    destination = tmp_path / "converted"
    run = subprocess.run(
        [sys.executable, "-m", "visionbridge", "convert", "--from", source_format, str(source), str(destination)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert (destination / "modeling_visionbridge.py").is_file() and (destination / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".*partial"))
    reloaded = AutoModelForImageTextToText.from_pretrained(destination).eval()
    if source_format == "llava":
        original = LlavaForConditionalGeneration.from_pretrained(source).eval()
        original_processor = LlavaProcessor.from_pretrained(source)
        prompt = original_processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    else:
        original = Blip2ForConditionalGeneration.from_pretrained(source).eval()
        original_processor = Blip2Processor.from_pretrained(source)
        prompt = "Question: what is this? Answer:"
    _assert_same_outputs(original, reloaded, original_processor(images=photos[0], text=prompt, return_tensors="pt"))


def test_convert_command_refuses_a_non_empty_destination(llava_dir, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    run = subprocess.run(
        [sys.executable, "-m", "visionbridge", "convert", "--from", "llava", str(llava_dir), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0 and "not empty" in run.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_to_llava_gives_the_same_logits_and_tokens(make_model, photos):
    model, processor = make_model()
    llava = visionbridge.modeling.to_llava(model)
    assert isinstance(llava, LlavaForConditionalGeneration)
    assert (llava.config.image_token_id, llava.config.vision_feature_layer) == (model.config.image_token_id, -2)
    _assert_same_outputs(model, llava, processor(images=photos[:1], text="<image> What is this?"))


def test_to_llava_refuses_a_query_connector(make_model):
    model, _ = make_model(connector="resampler")
    with pytest.raises(ValueError, match="Only an mlp2x_gelu connector"):
        visionbridge.modeling.to_llava(model)


def test_convert_to_llava_writes_a_folder_transformers_llava_loads(make_model, tmp_path, photos):
    model, processor = make_model()
    source, destination = tmp_path / "visionbridge", tmp_path / "llava"
    model.save_pretrained(source)
    processor.save_pretrained(source)
    run = subprocess.run(
        [sys.executable, "-m", "visionbridge", "convert", "--to", "llava", str(source), str(destination)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    llava = LlavaForConditionalGeneration.from_pretrained(destination).eval()
    llava_processor = AutoProcessor.from_pretrained(destination)
    assert isinstance(llava_processor, LlavaProcessor)
    # A square photo: VisionBridge pads to a square first, which then changes nothing.
    photo = photos[0].crop((0, 0, 427, 427))
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    ours, theirs = (
        processor(images=[photo], text=prompt),
        llava_processor(images=photo, text=prompt, return_tensors="pt"),
    )
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.allclose(ours["pixel_values"], theirs["pixel_values"], atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(model(**ours).logits, llava(**theirs).logits, atol=1e-5)


def test_convert_to_llava_refuses_what_llava_cannot_express(make_model, tmp_path):
    model, processor = make_model(connector="resampler")
    model.save_pretrained(tmp_path / "resampler")
    processor.save_pretrained(tmp_path / "resampler")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "visionbridge",
            "convert",
            "--to",
            "llava",
            str(tmp_path / "resampler"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2  # after loading it (its loading bar comes first): one line, no traceback
    assert "cannot be written as a llava-hf model: Only an mlp2x_gelu connector" in run.stderr.splitlines()[-1]
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()
