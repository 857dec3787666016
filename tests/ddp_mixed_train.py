"""Mixed batches under DDP: one rank trains on image batches, the other only on text-only batches.

    torchrun --nproc_per_node 2 ddp_mixed_train.py OUT   # two gloo ranks, 2 samples per rank and step
    python ddp_mixed_train.py OUT                        # the reference: one process, the same 4 samples per step
                                                         # as 2 accumulated micro-batches of 2

Batches are taken in order (no shuffling), so accelerate hands rank 0 the even batches (an image sample and a text
sample) and rank 1 the odd ones (text only); the reference accumulates batch 2k and 2k+1 in step k. With the loss
normalised by the supervised tokens of the whole step on both lines (`average_tokens_across_devices`, and the
model taking `num_items_in_batch`), both compute the same gradient. Writes OUT/<mode>-initial.safetensors and
OUT/<mode>.safetensors (the trainable weights before and after training) and OUT/<mode>-<rank>.json (images seen per
batch, whether the model takes the loss kwargs, the logged losses).
"""

import json
import os
import sys
from pathlib import Path

import torch
from cpu_args import cpu_args
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch.utils.data import SequentialSampler

import visionbridge
from visionbridge.modeling.tiny_components import build_tiny_components
from visionbridge.trainer import VisionBridgeTrainer
from visionbridge.trainer.collator import VisionBridgeCollator

STEPS = 2


class InOrderTrainer(VisionBridgeTrainer):
    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def mixed_samples(steps: int = STEPS) -> list[dict]:
    """4 samples per step, in order: an image sample, then three text-only ones."""
    digits = load_digits()
    samples = []
    for index in range(steps * 4):
        label = int(digits.target[index])
        with_image = index % 4 == 0  # the first sample of each even batch
        question = "<image>\nWhat digit is this?" if with_image else f"Say the digit {label}."
        samples.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": f"It is {label}."},
                ],
                "images": [Image.fromarray((digits.images[index] * 255 / 16).astype("uint8")).resize((32, 32))]
                if with_image
                else [],
            }
        )
    return samples


def main(out: str) -> None:
    distributed = "RANK" in os.environ
    mode, rank = ("ddp", int(os.environ["RANK"])) if distributed else ("single", 0)
    torch.manual_seed(0)
    components = build_tiny_components(Path(out) / f"components-{mode}-{rank}")
    model, processor = visionbridge.from_components(*components, mm_use_im_start_end=True)
    seen = []
    collator = VisionBridgeCollator(processor)

    def collate(samples: list[dict]) -> dict:
        seen.append(sum(len(sample["images"]) for sample in samples))
        return collator(samples)

    args = cpu_args(
        Path(out) / f"run-{mode}",
        stage="instruct",
        lora_dropout=0.0,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1 if distributed else 2,
        average_tokens_across_devices=True,
        ddp_find_unused_parameters=False,  # strict: every trainable tensor must take part on every rank
        optim="sgd",  # plain SGD: the weights move by exactly -lr x gradient, with no Adam normalisation of noise
        learning_rate=0.1,
        connector_lr=0.2,
        max_steps=STEPS,
        logging_steps=1,
        ddp_backend="gloo" if distributed else None,
    )
    trainer = InOrderTrainer(
        model=model, args=args, train_dataset=mixed_samples(), processing_class=processor, data_collator=collate
    )
    trainable = {name: p for name, p in trainer.model.named_parameters() if p.requires_grad}
    if trainer.is_world_process_zero():
        save_file(
            {name: p.detach().clone() for name, p in trainable.items()}, Path(out) / f"{mode}-initial.safetensors"
        )
    trainer.train()
    report = {
        "world_size": trainer.args.world_size,
        "images_per_batch": seen,
        "accepts_loss_kwargs": trainer.model_accepts_loss_kwargs,
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
    }
    (Path(out) / f"{mode}-{rank}.json").write_text(json.dumps(report))
    if trainer.is_world_process_zero():
        save_file({name: p.detach().contiguous() for name, p in trainable.items()}, Path(out) / f"{mode}.safetensors")


if __name__ == "__main__":
    main(sys.argv[1])
    # Every collective has completed; skip interpreter teardown, where gloo's worker threads can abort the
    # process ("terminate called without an active exception") while the other rank is still exiting.
    sys.stdout.flush()
    os._exit(0)
