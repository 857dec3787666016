"""Run as a script: a short seeded LoRA run of the tiny model on digits, checkpointing every 3 steps; writes the
final adapter to OUT/final and the logged losses to OUT/losses.json.

usage: fault_train.py VISION LANGUAGE OUT [hang|resume]
  hang:   stop after the first checkpoint is saved, until a test kills the process
  resume: continue from the latest checkpoint in OUT/run
"""

import json
import sys
import time
from pathlib import Path

import torch
from cpu_args import cpu_args
from digit_chats import digit_chats
from transformers import TrainerCallback

import visionbridge
from visionbridge.trainer import VisionBridgeTrainer


class _HangAfterCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        time.sleep(600)  # until the test kills the process


def main(vision: str, language: str, out: str, mode: str = "") -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model, processor = visionbridge.from_components(vision, language)
    samples = digit_chats(16)
    args = cpu_args(
        Path(out) / "run",
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        connector_lr=3e-3,
        lora_dropout=0.3,  # its masks come from the RNG state that resuming must restore
        max_steps=6,
        logging_steps=1,
        save_strategy="steps",
        save_steps=3,
    )
    trainer = VisionBridgeTrainer(model=model, args=args, train_dataset=samples, processing_class=processor)
    if mode == "hang":
        trainer.add_callback(_HangAfterCheckpoint())
    trainer.train(resume_from_checkpoint=mode == "resume" or None)
    trainer.save_model(str(Path(out) / "final"))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    (Path(out) / "losses.json").write_text(json.dumps(losses))


if __name__ == "__main__":
    main(*sys.argv[1:5])
