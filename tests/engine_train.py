"""One engine on two processes, one of which trains and evaluates on text-only batches only, against one process.

    torchrun --nproc_per_node 2 with_cpu_engines.py engine_train.py OUT zero2|zero3
    accelerate launch --config_file ../examples/fsdp2.yaml --num_processes 2 --mixed_precision no \\
        with_cpu_engines.py engine_train.py OUT fsdp2
    python engine_train.py OUT single     # the reference: the same 4 samples per step, 2 micro-batches of 2

On CPU over gloo, in fp32; with a last argument `cuda`, on GPUs in bf16 (gpu_engines.py launches it so, one process
per GPU, two at most, without with_cpu_engines.py). The samples and their order are ddp_mixed_train.py's: with two
processes, rank 0 gets an image in every batch and rank 1 none; the image start/end embeddings are on. Each run
trains STEPS steps of 4 samples with AdamW (the connector at twice the LoRA rate) and a linear schedule,
checkpointing half-way, saves the adapter and scores the same samples as evaluation data; the engines then train
again from the half-way checkpoint in the same process. Writes OUT/base-<mode> (the base model, saved before
training), OUT/adapter-<mode> (and OUT/adapter-single-initial, the adapter before training) and
OUT/<mode>-<rank>.json: what ran, images seen per batch, the logged losses, those after resuming, the evaluation loss,
the weights held whole when training starts, the optimizer groups' learning rates at the first step and the number
of sample answers given during training (SampleAnswersCallback, at the last step).
"""

import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from cpu_args import cpu_args
from ddp_mixed_train import InOrderTrainer, mixed_samples
from torch.distributed.fsdp import FSDPModule
from transformers import TrainerCallback

import visionbridge
from visionbridge.modeling import labelled_loss
from visionbridge.modeling.tiny_components import build_tiny_components
from visionbridge.trainer import SampleAnswersCallback
from visionbridge.trainer.collator import VisionBridgeCollator

STEPS = 4
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def deepspeed_config(mode: str) -> dict | None:
    """The shipped config; under ZeRO-3 every tensor is partitioned, as a real model's large ones are (the tiny
    model's would all fall under the "auto" persistence threshold and stay whole on each process)."""
    if not mode.startswith("zero"):
        return None
    config = json.loads((EXAMPLES / f"ds_{mode}.json").read_text())
    if mode == "zero3":
        config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    return config


class FirstStep(TrainerCallback):
    """The weights held whole when training starts (under ZeRO-3 outside any module's forward: none) and the optimizer
    groups' learning rates at the first step."""

    def __init__(self):
        self.whole, self.rates = None, None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.whole = [name for name, parameter in model.named_parameters() if parameter.numel()]

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if self.rates is None:
            self.rates = [[group["name"], group["lr"]] for group in optimizer.param_groups]


def with_longer_text_answers(samples: list[dict]) -> list[dict]:
    """The samples with longer answers where there is no image: in training the processes then hold different
    numbers of labels (the evaluation loss, a mean over batches, is compared on answers of one length)."""
    return [
        sample
        if sample["images"]
        else {**sample, "messages": [*sample["messages"][:-1], {"role": "assistant", "content": "Yes. That digit."}]}
        for sample in samples
    ]


def _engine(trainer) -> dict:
    """What ran: the distributed type, the engine, and the blocks FSDP shards on their own."""
    accelerator, model = trainer.accelerator, trainer.model
    plugin = accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
    sharded_blocks = Counter(  # FSDP2 makes each module it shards an instance of FSDP<its class>
        type(module).__name__.removeprefix("FSDP")
        for module in model.modules()
        if isinstance(module, FSDPModule) and module is not model
    )
    return {
        "distributed_type": str(accelerator.distributed_type),
        "zero_stage": plugin.zero_stage if plugin is not None else None,
        "fsdp_version": accelerator.state.fsdp_plugin.fsdp_version if trainer.is_fsdp_enabled else None,
        "world_size": trainer.args.world_size,
        "sharded_blocks": dict(sharded_blocks),
    }


def main(out: str, mode: str, device: str = "cpu") -> None:
    out, distributed = Path(out), mode != "single"
    rank, processes = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    on_device = (
        {"use_cpu": False, "bf16": True} if device == "cuda" else {"ddp_backend": "gloo" if distributed else None}
    )
    components = build_tiny_components(out / f"components-{mode}-{rank}")
    # Both models are built before any training arguments: under ZeRO-3 those make from_pretrained partition.
    models = []
    for _ in range(2 if distributed else 1):
        torch.manual_seed(0)
        models.append(visionbridge.from_components(*components, mm_use_im_start_end=True))
    (model, processor), samples = models[0], mixed_samples(STEPS)
    # One labelled position per chunk: the processes, holding different numbers of labels, run the LM head a
    # different number of times unless they agree.
    labelled_loss.CHUNK_BYTES = 4 * model.config.text_config.vocab_size * 1
    if rank == 0:
        model.save_pretrained(out / f"base-{mode}")
        processor.save_pretrained(out / f"base-{mode}")
    seen, collator = [], VisionBridgeCollator(processor)

    def collate(batch: list[dict]) -> dict:
        seen.append(sum(len(sample["images"]) for sample in batch))
        return collator(batch)

    def trainer_for(model) -> InOrderTrainer:
        args = cpu_args(
            out / f"run-{mode}",
            stage="instruct",
            lora_dropout=0.0,
            per_device_train_batch_size=2,
            per_device_eval_batch_size=2,
            gradient_accumulation_steps=2 // processes,
            average_tokens_across_devices=True,
            # An optimizer with state, which resuming must restore. Its epsilon at 1 keeps AdamW from scaling float
            # noise in near-zero gradients up to whole steps: the weights move by about -lr x gradient, with momentum.
            optim="adamw_torch",
            adam_epsilon=1.0,
            learning_rate=0.1,
            connector_lr=0.2,
            lr_scheduler_type="linear",
            max_steps=STEPS,
            logging_steps=1,
            save_strategy="steps",
            save_steps=STEPS // 2,
            deepspeed=deepspeed_config(mode),
            **on_device,
        )
        return InOrderTrainer(
            model=model,
            args=args,
            train_dataset=with_longer_text_answers(samples),
            eval_dataset=samples,
            processing_class=processor,
            data_collator=collate,
        )

    first_step = FirstStep()
    # Sample answers at the last step, from every process (the first one logs them).
    answers = SampleAnswersCallback(processor, [(samples[0]["images"][0], "What digit?")], STEPS, max_new_tokens=2)
    trainer = trainer_for(model)
    trainer.add_callback(first_step)
    trainer.add_callback(answers)
    if not distributed:
        trainer.save_model(str(out / "adapter-single-initial"))
    trainer.train()
    trainer.save_model(str(out / f"adapter-{mode}"))
    images_per_batch = list(seen)
    eval_loss = trainer.evaluate()["eval_loss"]
    report = {
        **_engine(trainer),
        "images_per_batch": images_per_batch,
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "eval_loss": eval_loss,
        "whole_at_start": first_step.whole,
        "first_step_rates": first_step.rates,
        "sample_answers": len(answers.history),
    }
    if distributed:
        resumed = trainer_for(models[1][0])
        resumed.train(resume_from_checkpoint=str(out / f"run-{mode}" / f"checkpoint-{STEPS // 2}"))
        report["resumed_losses"] = [entry["loss"] for entry in resumed.state.log_history if "loss" in entry]
    (out / f"{mode}-{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
    # Every collective has completed; skip interpreter teardown, where gloo's worker threads can abort the
    # process ("terminate called without an active exception") while the other rank is still exiting.
    sys.stdout.flush()
    os._exit(0)
