import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cpu_args import cpu_args
from peft import PeftModel
from transformers import AutoModelForImageTextToText, HfArgumentParser

from visionbridge.trainer import SampleAnswersCallback, VisionBridgeTrainer, VisionBridgeTrainingArguments
from visionbridge.trainer.lora import part_of


def _args(tmp_path, **kwargs) -> VisionBridgeTrainingArguments:
    settings = dict(per_device_train_batch_size=4, learning_rate=1e-3, connector_lr=3e-3, max_steps=4, logging_steps=1)
    return cpu_args(tmp_path / "out", **(settings | kwargs))


def _trainer(make_model, digit_samples, tmp_path, model_kwargs=None, **kwargs):
    model, processor = make_model(**(model_kwargs or {}))
    return VisionBridgeTrainer(
        model=model, args=_args(tmp_path, **kwargs), train_dataset=digit_samples[:16], processing_class=processor
    )


@pytest.mark.parametrize(
    ("stage", "extra", "trained_parts"),
    [
        ("align", {}, {"connector"}),
        ("instruct", {}, {"connector", "language_model"}),
        ("full", {}, {"connector", "language_model"}),
        ("instruct", {"lora_vision": True, "vision_lr": 5e-4}, {"connector", "language_model", "vision_tower"}),
    ],
)
def test_optimizer_groups_hold_exactly_the_trainable_tensors(
    make_model, digit_samples, tmp_path, stage, extra, trained_parts
):
    trainer = _trainer(make_model, digit_samples, tmp_path, stage=stage, **extra)
    optimizer = trainer.create_optimizer()
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    trainable = {id(p): name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert len(grouped) == len(set(grouped)), "a tensor sits in two groups"
    assert set(grouped) == set(trainable)
    assert {part_of(name) for name in trainable.values()} == trained_parts
    expected_lr = {"connector": 3e-3, "language_model": 1e-3, "vision_tower": extra.get("vision_lr", 1e-3)}
    for group in optimizer.param_groups:
        part = group["name"].split(" ")[0]
        assert group["lr"] == expected_lr[part]
        assert group["weight_decay"] == (0.0 if "no decay" in group["name"] else trainer.args.weight_decay)
        names = [trainable[id(p)] for p in group["params"]]
        assert all(part_of(name) == part for name in names)
        if "no decay" not in group["name"]:
            assert not any(name.endswith("bias") or "norm" in name for name in names)
    if stage == "instruct":
        assert all("lora_" in name or part_of(name) != "language_model" for name in trainable.values())
    if stage == "full":
        assert any("lora_" not in name and part_of(name) == "language_model" for name in trainable.values())


def test_suffix_targets_reach_only_the_llm_unless_lora_vision(make_model, digit_samples, tmp_path):
    trainer = _trainer(make_model, digit_samples, tmp_path, lora_target_modules="q_proj,v_proj")
    names = [name for name, _ in trainer.model.named_parameters() if "lora_" in name]
    assert names and all(part_of(name) == "language_model" for name in names)  # CLIP has q_proj/v_proj too
    assert all(".q_proj." in name or ".v_proj." in name for name in names)
    with_vision = _trainer(make_model, digit_samples, tmp_path, lora_target_modules="q_proj", lora_vision=True)
    parts = {part_of(name) for name, _ in with_vision.model.named_parameters() if "lora_" in name}
    assert parts == {"language_model", "vision_tower"}
    # LLaVA reads layer -2: the last encoder layer never reaches the features, so it carries no adapter.
    assert not any("layers.1." in n for n, _ in with_vision.model.named_parameters() if "lora_" in n and "vision" in n)


def test_adapters_in_a_frozen_part_are_refused(make_model, digit_samples, tmp_path):
    from visionbridge.trainer.lora import check_adapters

    trainer = _trainer(make_model, digit_samples, tmp_path, lora_vision=True, lora_target_modules="q_proj")
    with pytest.raises(ValueError, match="keeps frozen"):
        check_adapters(trainer.model, _args(tmp_path, lora_vision=False))


def test_training_lowers_the_loss_and_the_adapter_restores_the_trained_model(make_model, digit_samples, tmp_path):
    model, processor = make_model()
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    processor.save_pretrained(base_dir)
    trainer = VisionBridgeTrainer(
        model=model, args=_args(tmp_path, max_steps=12), train_dataset=digit_samples[:16], processing_class=processor
    )
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
    assert 0 < trainer.state.log_history[0]["supervised_share"] < 1
    assert result.metrics["dropped_samples"] == 0
    adapter_dir = tmp_path / "adapter"
    trainer.save_model(adapter_dir)
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    assert (adapter_dir / "training_args.json").is_file() and not (adapter_dir / "training_args.bin").exists()

    batch = trainer.data_collator(digit_samples[16:20])
    batch.pop("labels")
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**batch).logits
    base = AutoModelForImageTextToText.from_pretrained(base_dir, trust_remote_code=True)
    restored = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        assert torch.allclose(restored(**batch).logits, expected, atol=1e-5)

    merged = restored.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    assert (tmp_path / "merged" / "modeling_visionbridge.py").is_file()
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged", trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, expected, atol=1e-4)


def test_resume_gives_the_same_loss_curve_and_groups(make_model, digit_samples, tmp_path):
    settings = dict(max_steps=6, save_strategy="steps", save_steps=3, per_device_train_batch_size=2)
    full = _trainer(make_model, digit_samples, tmp_path, **settings)
    full.train()
    full_losses = [entry["loss"] for entry in full.state.log_history if "loss" in entry]

    resumed = _trainer(make_model, digit_samples, tmp_path, **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    resumed_losses = [entry["loss"] for entry in resumed.state.log_history if "loss" in entry]
    assert resumed_losses[-3:] == pytest.approx(full_losses[-3:], abs=1e-5)
    assert [g["name"] for g in resumed.optimizer.param_groups] == [g["name"] for g in full.optimizer.param_groups]
    # The optimizer state was restored into the same groups: the final moments match the uninterrupted run's.
    for full_group, resumed_group in zip(full.optimizer.param_groups, resumed.optimizer.param_groups, strict=True):
        for full_param, resumed_param in zip(full_group["params"], resumed_group["params"], strict=True):
            expected = full.optimizer.state[full_param]["exp_avg"]
            assert torch.allclose(resumed.optimizer.state[resumed_param]["exp_avg"], expected, atol=1e-6)


def test_gradient_checkpointing_with_frozen_embeddings_trains(make_model, digit_samples, tmp_path):
    # A text-only batch enters the checkpointed layers through frozen embeddings: no input requires grad, which
    # reentrant checkpointing (transformers 4.x's default) cannot handle.
    text_only = [{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}] * 4
    model, processor = make_model()
    args = _args(tmp_path, gradient_checkpointing=True, max_steps=3)
    data = text_only + digit_samples[:8]
    trainer = VisionBridgeTrainer(model=model, args=args, train_dataset=data, processing_class=processor)
    trainer._get_train_sampler = lambda *args, **kwargs: torch.utils.data.SequentialSampler(data)
    trainer.train()  # the gradient check would stop a run whose LoRA or connector got no gradient
    assert trainer.state.global_step == 3 and not trainer.gradient_check.pending


def test_a_trainable_tensor_without_gradient_stops_training(make_model, digit_samples, tmp_path):
    trainer = _trainer(make_model, digit_samples, tmp_path, stage="full")
    # LLaVA's layer -2 is read, so the tower's final norm never reaches the loss.
    post_layernorm = [p for n, p in trainer.model.named_parameters() if "post_layernorm" in n]
    assert post_layernorm and not any(p.requires_grad for p in post_layernorm)
    post_layernorm[0].requires_grad_(True)
    with pytest.raises(RuntimeError, match="post_layernorm"):
        trainer.train()


def test_nan_loss_stops_with_the_step_number(make_model, digit_samples, tmp_path):
    trainer = _trainer(make_model, digit_samples, tmp_path, stage="align")
    with torch.no_grad():
        trainer.model.connector[0].weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="at step 1"):
        trainer.train()


def test_deepspeed_optimizer_block_is_refused(make_model, digit_samples, tmp_path):
    model, processor = make_model()
    args = _args(tmp_path)
    args.deepspeed = {"optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "zero_optimization": {"stage": 2}}
    with pytest.raises(ValueError, match="per-part learning rates"):
        VisionBridgeTrainer(model=model, args=args, train_dataset=digit_samples, processing_class=processor)


def test_qlora_without_cuda_is_a_clear_error(make_model, digit_samples, tmp_path):
    with pytest.raises(ValueError, match="CUDA GPU"):
        _trainer(make_model, digit_samples, tmp_path, use_qlora=True)


def test_connector_stays_fp32_when_the_model_is_bf16(make_model, digit_samples, tmp_path):
    trainer = _trainer(make_model, digit_samples, tmp_path, model_kwargs={"dtype": torch.bfloat16}, max_steps=2)
    connector = [p for n, p in trainer.model.named_parameters() if part_of(n) == "connector" and p.requires_grad]
    assert connector and all(p.dtype == torch.float32 for p in connector)
    assert trainer.model.get_base_model().language_model.dtype == torch.bfloat16
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))


def test_every_argument_parses_from_the_command_line(tmp_path):
    (args,) = HfArgumentParser(VisionBridgeTrainingArguments).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--stage",
            "align",
            "--connector_lr",
            "1e-4",
            "--vision_lr",
            "2e-5",
            "--lora_r",
            "8",
            "--lora_alpha",
            "16",
            "--lora_dropout",
            "0.1",
            "--lora_target_modules",
            "c_attn|w1|w2",
            "--lora_vision",
            "--freeze_vision_tower",
            "true",
            "--use_cpu",
            "--model_max_length",
            "512",
        ]
    )
    assert (args.stage, args.connector_lr, args.vision_lr, args.lora_r) == ("align", 1e-4, 2e-5, 8)
    assert args.lora_vision and args.freeze_vision_tower and args.freeze_language_model
    assert args.lora_target_modules == "c_attn|w1|w2" and args.model_max_length == 512
    if "activation_checkpointing_kwargs" not in VisionBridgeTrainingArguments.__dataclass_fields__:  # 4.x
        assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}


def test_sample_answers_are_generated_during_training(make_model, digit_samples, tmp_path):
    trainer = _trainer(make_model, digit_samples, tmp_path, max_steps=4)
    callback = SampleAnswersCallback(
        trainer.processing_class,
        [(digit_samples[0]["images"][0], "What digit is this?")],
        every_n_steps=2,
        max_new_tokens=4,
    )
    trainer.add_callback(callback)
    trainer.train()
    assert [step for step, _, _ in callback.history] == [2, 4]
    assert all(isinstance(answer, str) for _, _, answer in callback.history)


def test_group_by_length_counts_the_image_tokens(make_model, photos, tmp_path):
    import json

    from transformers.trainer_pt_utils import LengthGroupedSampler

    from visionbridge import load_training_data

    photos[0].resize((40, 30)).save(tmp_path / "a.jpg")
    records = [
        {
            "image": ["a.jpg"] * images,
            "conversations": [
                {"from": "human", "value": "<image>" * images + "Hi?"},
                {"from": "gpt", "value": "Hello there, " * words},
            ],
        }
        for images, words in [(0, 9), (1, 1), (2, 1), (0, 1)]
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    data = load_training_data(tmp_path / "data.json", image_folder=tmp_path)
    model, processor = make_model()
    grouping = (
        {"train_sampling_strategy": "group_by_length"}
        if "train_sampling_strategy" in VisionBridgeTrainingArguments.__dataclass_fields__
        else {"group_by_length": True}
    )
    trainer = VisionBridgeTrainer(
        model=model, args=_args(tmp_path, **grouping), train_dataset=data, processing_class=processor
    )
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    # The placeholders per image are read from the processor, which reads them from the model config.
    lengths = data.lengths(model.config.image_seq_length)
    assert sampler.lengths == lengths
    assert lengths[2] > lengths[0] > lengths[3]  # two images outweigh nine phrases
    assert lengths[2] - lengths[3] >= 2 * processor.image_seq_length


def test_two_process_cpu_run_under_torchrun(tmp_path):
    script = Path(__file__).with_name("ddp_train.py")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    first, last = (float(x) for x in (tmp_path / "losses.txt").read_text().split())
    assert last < first
    # Each checkpoint holds both processes' RNG states, and no staging folder is left.
    for step in (4, 8):
        checkpoint = tmp_path / "run" / f"checkpoint-{step}"
        assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt"} <= {path.name for path in checkpoint.iterdir()}
    assert [path.name for path in tmp_path.rglob(".*")] == []


def test_model_card_carries_the_hub_metadata(make_model, digit_samples, tmp_path):
    from huggingface_hub import ModelCard

    trainer = _trainer(make_model, digit_samples, tmp_path, hub_model_id="org/digits-adapter")
    config = trainer.model.get_base_model().config
    assert Path(config.text_config._name_or_path).is_dir()  # a local folder: not a base model on the Hub
    config.vision_config._name_or_path = "openai/clip-vit-large-patch14-336"
    trainer.create_model_card(dataset_tags="sklearn/digits", license="mit", tags=["digits"])
    card = ModelCard.load(tmp_path / "out" / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "peft" and data["pipeline_tag"] == "image-text-to-text"
    assert data["base_model"] == ["openai/clip-vit-large-patch14-336"]
    assert {"visionbridge", "mlp2x_gelu", "lora", "digits"} <= set(data["tags"])
    assert data["license"] == "mit" and data["datasets"] == ["sklearn/digits"]
    for text in (
        "PeftModel.from_pretrained",
        "org/digits-adapter",
        "AutoModelForVision2Seq",
        "from_pretrained(BASE,",  # no Hub repo is known for the base model
        "| stage | instruct |",
        "| connector learning rate | 0.003 |",
        "| language model learning rate | 0.001 (LoRA) |",
        "| vision tower learning rate | frozen |",
        "16 / 32 / 0.05",
    ):
        assert text in card.text, text

    full = _trainer(make_model, digit_samples, tmp_path, stage="full", freeze_vision_tower=False, vision_lr=1e-5)
    full.create_model_card(finetuned_from="org/base")
    text = (tmp_path / "out" / "README.md").read_text()
    assert "| language model learning rate | 0.001 (full) |" in text
    assert "| vision tower learning rate | 1e-05 (full) |" in text
    assert "license" not in ModelCard(text).data.to_dict()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"freeze_vision_tower": False}, "lora_vision to adapt the tower"),
        ({"stage": "align", "lora_vision": True, "freeze_vision_tower": False}, "does not save"),
        ({"freeze_language_model": False}, "use stage='full'"),
        ({"stage": "full", "lora_vision": True}, "lose the trained LLM weights"),
    ],
)
def test_weights_an_adapter_would_not_save_are_refused(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        _args(tmp_path, **settings)


def test_a_text_only_first_batch_defers_the_connector_check(make_model, digit_samples, tmp_path):
    text_only = [{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}] * 4
    data = text_only + digit_samples[:4]  # step 1: text only; step 2: images
    model, processor = make_model()
    trainer = VisionBridgeTrainer(
        model=model, args=_args(tmp_path, max_steps=2), train_dataset=data, processing_class=processor
    )
    trainer._get_train_sampler = lambda *args, **kwargs: torch.utils.data.SequentialSampler(data)
    trainer.train()
    assert trainer.state.global_step == 2 and not trainer.gradient_check.pending

    # A connector tensor that never reaches the loss is still caught, at the first step with images.
    model, processor = make_model()
    model.connector.register_parameter("unused", torch.nn.Parameter(torch.ones(3)))
    trainer = VisionBridgeTrainer(
        model=model, args=_args(tmp_path, max_steps=2), train_dataset=data, processing_class=processor
    )
    trainer._get_train_sampler = lambda *args, **kwargs: torch.utils.data.SequentialSampler(data)
    with pytest.raises(RuntimeError, match=r"At step 2 .*connector\.modules_to_save\.default\.unused"):
        trainer.train()


def test_an_adapter_loaded_frozen_trains_its_connector(make_model, digit_samples, tmp_path):
    trained = _trainer(make_model, digit_samples, tmp_path, max_steps=1)
    trained.save_model(tmp_path / "adapter")
    model, processor = make_model()
    frozen = PeftModel.from_pretrained(model, tmp_path / "adapter")  # is_trainable=False
    trainer = VisionBridgeTrainer(model=frozen, args=_args(tmp_path), processing_class=processor)
    parts = {part_of(name) for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert parts == {"connector", "language_model"}


def test_logged_learning_rate_is_the_language_models(make_model, digit_samples, tmp_path):
    trainer = _trainer(make_model, digit_samples, tmp_path, lr_scheduler_type="constant", max_steps=2)
    assert trainer.create_optimizer().param_groups[0]["name"] == "language_model"
    trainer.train()
    assert [entry["learning_rate"] for entry in trainer.state.log_history if "loss" in entry] == [1e-3, 1e-3]


def test_supervised_share_is_logged_with_dataloader_workers(make_model, digit_samples, tmp_path):
    trainer = _trainer(make_model, digit_samples, tmp_path, max_steps=2, dataloader_num_workers=1)
    trainer.train()
    shares = [entry["supervised_share"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(shares) == 2 and all(0 < share < 1 for share in shares)


def test_supervised_share_covers_the_steps_since_the_previous_log_line(make_model, digit_samples, tmp_path):
    trainer = _trainer(make_model, digit_samples, tmp_path)
    for supervised, total in ((10, 100), (50, 100)):
        trainer._supervised_tokens += torch.tensor(supervised)
        trainer._total_tokens += torch.tensor(total)
        trainer.log({"loss": 1.0})
    assert [entry["supervised_share"] for entry in trainer.state.log_history] == [0.1, 0.5]


def test_optimizers_that_build_their_own_groups_are_refused(make_model, digit_samples, tmp_path, monkeypatch):
    trainer = _trainer(make_model, digit_samples, tmp_path)
    own = lambda *args: (torch.optim.AdamW, {"params": [], "lr": 1e-3})  # noqa: E731  (what GaLore returns)
    monkeypatch.setattr(trainer, "get_optimizer_cls_and_kwargs", own)
    with pytest.raises(ValueError, match="builds its own parameter groups"):
        trainer.create_optimizer()


@pytest.mark.parametrize(
    ("connector", "connector_lr", "expected"),
    [("qformer", None, 2e-4), ("resampler", None, 2e-4), ("mlp2x_gelu", None, 2e-4), ("qformer", 5e-5, 5e-5)],
)
def test_without_connector_lr_the_connector_trains_at_learning_rate(
    make_model, digit_samples, tmp_path, connector, connector_lr, expected
):
    """The trainer cannot tell a fresh connector from a trained one (a converted BLIP-2's Q-Former): both train at
    learning_rate unless told otherwise."""
    trainer = _trainer(
        make_model,
        digit_samples,
        tmp_path,
        model_kwargs={"connector": connector},
        learning_rate=2e-4,
        connector_lr=connector_lr,
    )
    rates = {group["name"]: group["lr"] for group in trainer.create_optimizer().param_groups}
    assert rates["connector"] == expected and rates["language_model"] == 2e-4
    trainer.save_model()
    assert f"| connector learning rate | {expected} |" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--connector", "qformer"], 1e-3),
        (["--connector", "resampler"], 1e-3),
        (["--connector", "mlp2x_gelu"], None),
        (["--connector", "qformer", "--connector_lr", "5e-5"], 5e-5),
        (["--model", "converted-blip2"], None),
    ],
)
def test_the_command_gives_a_fresh_connector_its_own_rate(tmp_path, flags, expected):
    from visionbridge.cli.train import fresh_connector_rate, parse_arguments

    model_args, _, training_args = parse_arguments([*flags, "--output_dir", str(tmp_path), "--use_cpu"])
    fresh_connector_rate(model_args, training_args)
    assert training_args.connector_lr == expected
