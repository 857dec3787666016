"""Run under torchrun: a short VisionBridgeTrainer run on CPU with the gloo backend, checkpointing every 4 steps into
OUT/run; rank 0 writes the first and last logged loss to OUT/losses.txt.

usage: torchrun --nproc_per_node 2 ddp_train.py OUT
"""

import os
import sys
from pathlib import Path

import torch
from cpu_args import cpu_args
from digit_chats import digit_chats

import visionbridge
from visionbridge.modeling.tiny_components import build_tiny_components
from visionbridge.trainer import VisionBridgeTrainer


def main(out: str) -> None:
    rank = int(os.environ["RANK"])
    components = Path(out) / f"components-{rank}"  # each rank builds the same seeded components
    torch.manual_seed(0)
    model, processor = visionbridge.from_components(*build_tiny_components(components))
    samples = digit_chats(32)
    args = cpu_args(
        Path(out) / "run",
        per_device_train_batch_size=4,
        learning_rate=2e-3,
        connector_lr=5e-3,
        max_steps=8,
        logging_steps=1,
        ddp_backend="gloo",
        save_strategy="steps",
        save_steps=4,
    )
    trainer = VisionBridgeTrainer(model=model, args=args, train_dataset=samples, processing_class=processor)
    trainer.train()
    if trainer.is_world_process_zero():
        assert trainer.args.world_size == 2, trainer.args.world_size
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        (Path(out) / "losses.txt").write_text(f"{losses[0]} {losses[-1]}")


if __name__ == "__main__":
    main(sys.argv[1])
    # Every collective has completed; skip interpreter teardown, where gloo's worker threads can abort the
    # process ("terminate called without an active exception") while the other rank is still exiting.
    sys.stdout.flush()
    os._exit(0)
