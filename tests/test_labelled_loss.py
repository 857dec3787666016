"""Training computes the LM head only at labelled positions (`loss_only`), with the loss and gradients of the full
computation, for each kind of language model; evaluation and generation still see full logits."""

import pytest
import torch
from cpu_args import cpu_args
from test_remote_llm import build_remote_lm
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

import visionbridge
from visionbridge.modeling import labelled_loss
from visionbridge.trainer import VisionBridgeTrainer
from visionbridge.trainer.collator import VisionBridgeCollator


def _batch(processor, samples, packing=False) -> dict:
    return VisionBridgeCollator(processor, packing=packing)(samples)


def _loss_and_gradients(model, batch: dict, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    torch.manual_seed(0)  # the same dropout masks in both paths (OPT drops out in training)
    loss = model(**batch, **kwargs).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_same(model, batch: dict, **kwargs) -> None:
    """The loss and every gradient of `loss_only` equal the full computation's, to 1e-5 relative."""
    model.train()
    full_loss, full_grads = _loss_and_gradients(model, batch, **kwargs)
    lean = model(**batch, **kwargs, loss_only=True)
    assert lean.logits is None
    lean_loss, lean_grads = _loss_and_gradients(model, batch, loss_only=True, **kwargs)
    assert model._head_reproduces_the_logits, "the labelled-only path was not taken"
    torch.testing.assert_close(lean_loss, full_loss, rtol=1e-5, atol=1e-7)
    assert lean_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(lean_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


# OPT does not pack: its mask ignores position_ids (trainer/packing.py).
@pytest.mark.parametrize(
    ("language", "packing"), [("llama", False), ("llama", True), ("qwen2", False), ("qwen2", True), ("opt", False)]
)
def test_loss_and_gradients_equal_the_full_logits_path(make_model, digit_samples, language, packing):
    model, processor = make_model(language=language)
    _assert_same(model, _batch(processor, digit_samples[:6], packing))


def test_tied_embeddings_get_the_same_gradient(components, digit_samples, tmp_path):
    vision_path, language_path = components("clip", "qwen2")
    tied = AutoModelForCausalLM.from_pretrained(language_path, tie_word_embeddings=True)
    tied.save_pretrained(tmp_path / "tied")
    AutoTokenizer.from_pretrained(language_path).save_pretrained(tmp_path / "tied")
    torch.manual_seed(0)
    model, processor = visionbridge.from_components(vision_path, tmp_path / "tied")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    _assert_same(model, _batch(processor, digit_samples[:4]))


def test_gradient_accumulation_divides_by_the_whole_steps_tokens(make_model, digit_samples):
    """The Trainer passes the labelled tokens of the whole accumulated step; both paths divide the sum by them."""
    model, processor = make_model()
    _assert_same(model, _batch(processor, digit_samples[:4]), num_items_in_batch=torch.tensor(97))


def test_chunks_recompute_their_logits_with_the_same_result(make_model, digit_samples, monkeypatch):
    model, processor = make_model()
    batch = _batch(processor, digit_samples[:6])
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(labelled_loss, "CHUNK_BYTES", 4 * vocab * 5)  # chunks of 5 positions
    calls = []
    # Chunks of labelled positions are [K, V]; the first call's check of the head runs on [1, K, V].
    hook = model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: calls.append(out.shape[0]) if out.dim() == 2 else None
    )
    model.train()
    loss = model(**batch, loss_only=True).loss
    in_forward = list(calls)
    loss.backward()
    hook.remove()
    assert labelled > 10 and max(calls) <= 5
    # Each chunk's logits are computed in the forward pass and again in the backward pass.
    assert sum(in_forward) == labelled and sum(calls) == 2 * labelled
    _assert_same(model, batch)
    # Processes in step (ZeRO-3, FSDP) run the head once, whatever their numbers of labels.
    calls.clear()
    hook = model.get_output_embeddings().register_forward_hook(lambda module, args, out: calls.append(out.shape[0]))
    hidden = model.language_model.base_model(input_ids=batch["input_ids"]).last_hidden_state
    labelled_loss.labelled_loss(model.language_model, hidden, batch["labels"], lockstep=True)
    hook.remove()
    assert calls == [labelled]


def test_a_batch_without_labels_runs_the_head_and_adds_nothing(make_model, digit_samples):
    """The head takes part in every step (its weights get an exact zero gradient): DDP without
    find_unused_parameters needs every trained weight used, and a sharded engine every process to run it."""
    model, processor = make_model()
    model.get_output_embeddings().weight.requires_grad_(True)
    batch = _batch(processor, digit_samples[:2])
    batch["labels"] = torch.full_like(batch["labels"], -100)
    model.train()
    loss = model(**batch, loss_only=True).loss
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(model.get_output_embeddings().weight.grad) == 0


def test_the_check_of_the_head_scores_a_few_positions(make_model, digit_samples):
    """The one-time check compares the LM's own logits with the lean head's at CHECKED_POSITIONS positions of one
    row, not at all positions of the batch: at a large vocabulary a full row's logits outweigh a training step's."""
    model, processor = make_model()
    batch = _batch(processor, digit_samples[:4])
    vocab = model.get_output_embeddings().weight.shape[0]
    shapes = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: shapes.append(tuple(out.shape))
    )
    model.train()
    model(**batch, loss_only=True).loss.backward()
    first_step = len(shapes)
    model(**batch, loss_only=True).loss.backward()
    hook.remove()
    assert model._head_reproduces_the_logits and batch["input_ids"].shape[1] > labelled_loss.CHECKED_POSITIONS
    # The LM's own logits and the lean head's, then the labelled positions' chunk, [K, V].
    assert shapes[:2] == [(1, labelled_loss.CHECKED_POSITIONS, vocab)] * 2
    assert all(len(shape) == 2 for shape in shapes[2:])
    assert len(shapes) - first_step == first_step - 2  # checked once: the second step scores its chunk alone


def test_a_remote_code_lm(components, digit_samples, tmp_path):
    language_path = build_remote_lm(tmp_path / "remote-lm")
    torch.manual_seed(0)
    model, processor = visionbridge.from_components(components()[0], language_path, trust_remote_code=True)
    _assert_same(model, _batch(processor, digit_samples[:4]))


def test_logit_soft_capping_is_applied(components, digit_samples, tmp_path):
    """Gemma 2 caps its logits after the head; the labelled-only path applies the same cap."""
    from visionbridge.modeling.tiny_components import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer()
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        final_logit_softcapping=2.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    Gemma2ForCausalLM(config).save_pretrained(tmp_path / "gemma2")
    tokenizer.save_pretrained(tmp_path / "gemma2")
    model, processor = visionbridge.from_components(components()[0], tmp_path / "gemma2")
    _assert_same(model, _batch(processor, digit_samples[:4]))


def test_an_lm_whose_logits_are_not_reproduced_trains_on_its_full_logits(make_model, digit_samples, monkeypatch):
    model, processor = make_model()
    batch = _batch(processor, digit_samples[:4])
    original = labelled_loss.head_logits
    monkeypatch.setattr(labelled_loss, "head_logits", lambda lm, hidden: original(lm, hidden) * 1.5)
    model.train()
    full = model(**batch).loss
    lean = model(**batch, loss_only=True)
    assert model._head_reproduces_the_logits is False
    assert lean.logits is not None and torch.allclose(lean.loss, full)


def _digits_trainer(model, processor, args, digit_samples) -> VisionBridgeTrainer:
    """A trainer on 8 digits, evaluating on the 4 after them."""
    return VisionBridgeTrainer(
        model=model,
        args=args,
        train_dataset=digit_samples[:8],
        eval_dataset=digit_samples[8:12],
        processing_class=processor,
    )


def test_the_trainer_trains_on_labelled_positions_and_evaluates_on_full_logits(make_model, digit_samples, tmp_path):
    model, processor = make_model()
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs.get("loss_only")), with_kwargs=True)
    args = cpu_args(tmp_path, per_device_train_batch_size=4, max_steps=2, eval_strategy="no")
    trainer = _digits_trainer(model, processor, args, digit_samples)
    trainer.train()
    assert seen == [True, True]
    metrics = trainer.evaluate()
    assert seen[2:] and not any(seen[2:]) and torch.isfinite(torch.tensor(metrics["eval_loss"]))
    predictions = trainer.predict(digit_samples[8:12])
    assert predictions.predictions.shape[-1] == model.get_output_embeddings().weight.shape[0]  # full logits


def test_evaluation_and_generation_after_lean_steps_read_the_full_logits(make_model, digit_samples, photos, tmp_path):
    """After training steps on labelled positions only, `evaluate`'s loss is the cross-entropy of the full logits
    over the batch's labels, and `generate` picks each greedy token from the full logits of the last position."""
    model, processor = make_model()
    args = cpu_args(tmp_path, per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=2)
    trainer = _digits_trainer(model, processor, args, digit_samples)
    trainer.train()
    assert model._head_reproduces_the_logits  # the steps took the lean path
    metrics = trainer.evaluate()
    model.eval()
    batch = _batch(processor, digit_samples[8:12])
    with torch.no_grad():
        logits = model(**batch).logits  # [B, T, V]
        expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())
    assert logits.shape == (*batch["input_ids"].shape, model.get_output_embeddings().weight.shape[0])
    assert metrics["eval_loss"] == pytest.approx(expected.item(), rel=1e-5)

    inputs = processor(images=[photos[0]], text="<image> what is it?")
    generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    ids = inputs["input_ids"]
    with torch.no_grad():
        for _ in range(4):  # [1, T] -> [1, T + 1]: the argmax of the full logits at the last position
            logits = model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert generated.tolist() == ids.tolist()


@pytest.mark.parametrize("own_loss", ["compute_loss_func", "label_smoothing_factor"])
def test_a_loss_of_ones_own_gets_the_full_logits(make_model, digit_samples, tmp_path, own_loss):
    """Label smoothing and a `compute_loss_func` read the logits: their training steps get them all."""
    model, processor = make_model()
    vocab = model.get_output_embeddings().weight.shape[0]
    seen = []

    def loss_of_ones_own(outputs, labels, num_items_in_batch=None):
        seen.append(outputs.logits.shape)
        return torch.nn.functional.cross_entropy(outputs.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())

    settings = {"label_smoothing_factor": 0.1} if own_loss == "label_smoothing_factor" else {}
    args = cpu_args(tmp_path, per_device_train_batch_size=4, max_steps=2, **settings)
    trainer = VisionBridgeTrainer(
        model=model,
        args=args,
        train_dataset=digit_samples[:8],
        processing_class=processor,
        compute_loss_func=loss_of_ones_own if own_loss == "compute_loss_func" else None,
    )
    model.register_forward_hook(lambda module, args, output: seen.append(output.logits.shape))
    trainer.train()
    assert len(seen) >= 2 and all(shape[-1] == vocab for shape in seen)
