"""Packed vs padded batches: real (non-pad) training tokens per second, and per-sample losses that must agree.

    python examples/bench_packing.py --size tiny      # smoke run, seconds
    python examples/bench_packing.py --size 100m      # ViT-B/16-shaped tower + 6-layer 768-wide LLaMA, minutes

Both sides train the same model (LoRA on the LLM + connector, AdamW) on the same seeded samples in the same
batches; only the collator's layout differs. The samples are synthetic chats in the shares of the mix LLaVA-1.5
fine-tunes on (665K samples, as listed in "Improved Baselines with Visual Instruction Tuning"): 70% academic VQA,
each image's short questions merged into one multi-turn chat; 24% LLaVA-Instruct, one image with a few long
answers; 6% ShareGPT, text-only chats of long answers. Turn counts and lengths are drawn, not taken from the data;
samples are cut at LLaVA's model_max_length, 2048. Each layout runs in its own process, the two taking turns a
step at a time (lockstep.py); a step is forward + backward + optimizer, and throughput is the real tokens of the
timed steps over their time (padding excluded), so both sides are credited the same tokens. Components have random
weights and are built locally (bench_speed.build_components).
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import lockstep
import numpy as np
import torch
from bench_speed import build_components
from measure import timed
from PIL import Image
from transformers.utils import is_flash_attn_2_available

import visionbridge
from visionbridge import VisionBridgeTrainingArguments
from visionbridge.trainer.collator import VisionBridgeCollator
from visionbridge.trainer.lora import prepare_model
from visionbridge.trainer.packing import assign_rows, per_sample_losses

# size: (samples per batch, warm-up steps, timed steps)
SETTINGS = {"tiny": (8, 1, 3), "100m": (8, 1, 12)}
MODEL_MAX_LENGTH = 2048
WORDS = (
    "a the picture shows temple lake blue sky red flower green leaves sun digit number one two three four five six "
    "seven eight nine zero assistant helpful detailed polite answers questions human curious what is in this"
).split()
GOAL = 1.5
LAYOUTS = ("padded", "packed")  # reference, ours


def llava_mix_samples(count: int, image_side: int, seed: int = 0) -> list[dict]:
    """`count` chats from LLaVA-1.5's three kinds of samples, each with its share, its number of turns (geometric)
    and its question and answer lengths in words (uniform or lognormal); random pixels for the image samples."""
    rng = np.random.default_rng(seed)

    def words(number: float) -> str:
        return " ".join(rng.choice(WORDS, max(1, int(number))))

    samples = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.70:  # VQAv2, GQA, OCR-VQA, ...: many short answers about one image
            turns = [
                (words(rng.integers(5, 14)), words(rng.integers(1, 4))) for _ in range(min(rng.geometric(0.25), 20))
            ]
        elif kind < 0.94:  # LLaVA-Instruct-158K: conversation, detailed description, complex reasoning
            turns = [
                (words(rng.integers(5, 20)), words(rng.lognormal(np.log(45), 0.6)))
                for _ in range(min(rng.geometric(0.5), 8))
            ]
        else:  # ShareGPT: text-only, long
            turns = [
                (words(rng.lognormal(np.log(20), 0.9)), words(rng.lognormal(np.log(150), 0.7)))
                for _ in range(min(rng.geometric(0.35), 8))
            ]
        has_image = kind < 0.94
        messages = []
        for turn, (question, answer) in enumerate(turns):
            image = "<image>\n" if has_image and turn == 0 else ""
            messages += [{"role": "user", "content": image + question + "?"}, {"role": "assistant", "content": answer}]
        pixels = rng.integers(0, 256, (image_side, image_side, 3), dtype=np.uint8)
        samples.append({"messages": messages, "images": [Image.fromarray(pixels)] if has_image else []})
    return samples


class Layout:
    """One layout's process (see lockstep.py): builds the model and its batches, then answers `losses` (the first
    batch's per-sample losses in sample order, before any step) and `step` (trains on the next batch)."""

    def __init__(self, packing: bool, size: str, device: str, vision_path: str, language_path: str):
        batch_size, warmup, steps = SETTINGS[size]
        torch.manual_seed(0)
        # Flash attention runs packed samples as separate sequences; sdpa masks a dense square over each row.
        self.attention = "flash_attention_2" if device.startswith("cuda") and is_flash_attn_2_available() else "sdpa"
        dtype = torch.bfloat16 if self.attention == "flash_attention_2" else None
        model, processor = visionbridge.from_components(
            vision_path, language_path, attn_implementation=self.attention, dtype=dtype
        )
        with tempfile.TemporaryDirectory() as output_dir:
            args = VisionBridgeTrainingArguments(
                output_dir=output_dir, stage="instruct", lora_dropout=0.0, report_to=[]
            )
            self.model = prepare_model(model, args).to(device).train()
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        padding = VisionBridgeCollator(processor, model_max_length=MODEL_MAX_LENGTH)
        collator = VisionBridgeCollator(processor, model_max_length=MODEL_MAX_LENGTH, packing=packing)
        samples = llava_mix_samples(batch_size * (warmup + steps), self.model.config.vision_config.image_size)
        chunks = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
        self.batches = [collator(chunk) for chunk in chunks]
        # Both sides are credited the tokens of their samples (after the cut), whatever padding their layout adds.
        self.lengths = [padding(chunk)["attention_mask"].sum(-1).tolist() for chunk in chunks]
        self.packing, self.device, self.done = packing, device, 0

    def __call__(self, request: dict) -> dict:
        return getattr(self, request["do"])()

    def _forward(self, batch: dict):
        with torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.device != "cpu"):
            return self.model(**batch)

    def losses(self) -> dict:
        batch = {key: value.to(self.device) for key, value in self.batches[0].items()}
        with torch.no_grad():
            logits = self._forward(batch).logits
        losses = per_sample_losses(logits, batch["labels"], batch.get("position_ids"))
        lengths = self.lengths[0]
        order = [i for row in assign_rows(lengths) for i in row] if self.packing else range(len(lengths))
        in_sample_order = [0.0] * len(order)
        for position, sample in enumerate(order):
            in_sample_order[sample] = losses[position].item()
        return {"losses": in_sample_order, "attention": self.attention}

    def step(self) -> dict:
        batch = {key: value.to(self.device) for key, value in self.batches[self.done].items()}
        lengths = self.lengths[self.done]
        self.done += 1

        def step():
            self._forward(batch).loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

        seconds = timed(step, self.device)
        return {
            "seconds": seconds,
            "tokens": sum(lengths),
            "slots": batch["input_ids"].numel(),
            "longest": max(lengths),
        }


def _sides(folder: Path, size: str, device: str, vision_path: str, language_path: str) -> list[lockstep.Side]:
    sides = []
    for layout in LAYOUTS:
        command = [sys.executable, __file__, "--side", layout, "--size", size, "--device", device]
        command += ["--vision", vision_path, "--language", language_path]
        sides.append(lockstep.Side(layout, command, folder / f"{layout}.log"))
    return sides


def run(size: str = "tiny", device: str = "cpu") -> list[dict]:
    """Benchmark rows per size (`tiny`, `100m` or `all`): real tokens/s of each side, their ratio (goal >= 1.5x),
    and the per-sample loss gap."""
    if size == "all":
        return [row for name in SETTINGS for row in run(name, device)]
    if size not in SETTINGS:
        raise ValueError(f"size must be one of {', '.join(SETTINGS)} or all, got {size!r}.")
    batch_size, warmup, steps = SETTINGS[size]
    with tempfile.TemporaryDirectory() as directory:
        paths = build_components(Path(directory), size)
        with lockstep.running(_sides(Path(directory), size, device, *paths)) as sides:
            first = {side.name: side.ask({"do": "losses"}) for side in sides}
            steps_by_layout = lockstep.alternate(sides, {"do": "step"}, warmup, steps)
    # Per layout, each reply field as a list over the timed steps.
    padded, packed = (
        {key: [reply[key] for reply in steps_by_layout[name]] for key in steps_by_layout[name][0]} for name in LAYOUTS
    )

    def throughput(side: dict) -> float:
        return sum(side["tokens"]) / sum(side["seconds"])

    ours, reference = throughput(packed), throughput(padded)
    ratio = ours / reference
    gap = max(abs(a - b) for a, b in zip(first["packed"]["losses"], first["padded"]["losses"], strict=True))
    padding_share = 1 - sum(padded["tokens"]) / sum(padded["slots"])
    packed_padding = 1 - sum(packed["tokens"]) / sum(packed["slots"])
    setting = (
        f"size={size}, device={device}, attention={first['packed']['attention']}, {batch_size} samples/batch, "
        f"{steps} steps after {warmup}"
    )
    return [
        {
            "section": "packing",
            "metric": f"real training tokens/s, packed (ours) vs padded (reference) ({size})",
            "ours": round(ours, 1),
            "reference": round(reference, 1),
            "ratio": round(ratio, 3),
            "goal": f">= {GOAL}x",
            "met": ratio >= GOAL,
            "note": f"{setting}; LoRA on the LLM + connector, fwd+bwd+AdamW; synthetic chats in LLaVA-1.5's shares, "
            f"{sum(padded['tokens']) / steps:.0f} real tokens per batch on average, longest sample per batch "
            f"{min(padded['longest'])}-{max(padded['longest'])}; padding is {padding_share:.0%} of the padded "
            f"batches' tokens and {packed_padding:.0%} of the packed rows'",
        },
        {
            "section": "packing",
            "metric": f"max |per-sample loss packed - padded|, first step ({size})",
            "ours": gap,
            "reference": None,
            "ratio": None,
            "goal": "float noise (< 1e-3 on CPU fp32)",
            "met": gap < 1e-3 if device == "cpu" else None,
            "note": f"{len(first['packed']['losses'])} samples; same weights, same batch, loss from each layout's "
            "logits before any step",
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=[*SETTINGS, "all"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--side", choices=LAYOUTS, help=argparse.SUPPRESS)
    parser.add_argument("--vision", help=argparse.SUPPRESS)
    parser.add_argument("--language", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        lockstep.serve(lambda: Layout(args.side == "packed", args.size, args.device, args.vision, args.language))
        return
    for row in run(args.size, args.device):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
