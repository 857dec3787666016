"""Callbacks of VisionBridgeTrainer: the first-step gradient check, generation under FSDP2 and sample answers during
training."""

from PIL import Image
from torch import nn
from transformers import TrainerCallback
from transformers.utils import logging

from .lora import part_of

logger = logging.get_logger(__name__)


class GradientCheck(TrainerCallback):
    """Every trainable tensor must hold a gradient, and a non-zero one, at its first optimizer step.

    The text parts are checked at the first step; the connector and the vision tower at the first step whose
    batches held an image (the trainer sets `saw_images`): text-only batches reach them only through the model's
    zero-weighted blank image, whose gradients are exactly zero and so prove nothing either way. A LoRA
    `lora_A` matrix is exempt from the non-zero part: `lora_B` starts at zero, so the gradient reaching `lora_A`
    is exactly zero until `lora_B` has moved once. DeepSpeed and FSDP keep gradients sharded off the parameters,
    so the check is off there (`enabled=False`).
    """

    def __init__(self, enabled: bool = True):
        self.pending = {"text", "image"} if enabled else set()
        self.saw_images = False

    def on_pre_optimizer_step(self, args, state, control, model: nn.Module | None = None, **kwargs):
        due = {"text"} & self.pending if state.global_step == 0 else set()
        if self.saw_images:
            due |= {"image"} & self.pending
        self.saw_images = False
        if not due or model is None:
            return
        self.pending -= due
        missing, zero = [], []
        for name, parameter in model.named_parameters():
            kind = "image" if part_of(name) in ("connector", "vision_tower") else "text"
            if not parameter.requires_grad or kind not in due:
                continue
            if parameter.grad is None:
                missing.append(name)
            elif "lora_A" not in name and not parameter.grad.any():
                zero.append(name)
        if missing or zero:
            raise RuntimeError(
                f"At step {state.global_step + 1} these trainable tensors got no gradient, so they would never "
                f"train: {missing[:8]}{' ...' if len(missing) > 8 else ''}; these got an all-zero gradient: "
                f"{zero[:8]}{' ...' if len(zero) > 8 else ''}. Freeze them, or check that they reach the loss."
            )


class GenerateUnderFsdp(TrainerCallback):
    """Under FSDP2, `generate` runs FSDP's pre- and post-forward hooks as forward does, so that the weights FSDP
    holds at the model's top level are gathered for it (the sample answers below and `visionbridge train
    --eval_data_path` generate with the model being trained). transformers 5's Trainer does this itself."""

    def __init__(self):
        self.registered = set()

    def on_train_begin(self, args, state, control, model: nn.Module | None = None, **kwargs):
        from torch.distributed.fsdp import register_fsdp_forward_method

        if model is not None and id(model) not in self.registered:
            register_fsdp_forward_method(model, "generate")  # nothing for a model that FSDP does not shard
            self.registered.add(id(model))


class SampleAnswersCallback(TrainerCallback):
    """Generate answers to fixed (image, question) pairs every `every_n_steps` steps and log them, as xtuner's
    evaluation_inputs do. `history` keeps (step, question, answer) for every answer given. Every process generates
    (under ZeRO-3 and FSDP each forward gathers the weights from all of them); the first one logs."""

    def __init__(self, processor, samples: list[tuple[Image.Image, str]], every_n_steps: int, max_new_tokens: int = 32):
        self.processor = processor
        self.samples = samples
        self.every_n_steps = every_n_steps
        self.max_new_tokens = max_new_tokens
        self.history: list[tuple[int, str, str]] = []

    def on_step_end(self, args, state, control, model: nn.Module | None = None, **kwargs):
        if state.global_step % self.every_n_steps or model is None:
            return
        was_training = model.training
        model.eval()
        for image, question in self.samples:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            inputs = self.processor(images=image, text=prompt).to(model.device)
            output = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            answer = self.processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            self.history.append((state.global_step, question, answer))
            if state.is_world_process_zero:
                logger.info(f"step {state.global_step} | {question} -> {answer}")
        model.train(was_training)
