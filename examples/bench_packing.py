"""Packed vs padded batches: real (non-pad) training tokens per second, and per-sample losses that must agree.

    python examples/bench_packing.py --size tiny      # smoke run, seconds
    python examples/bench_packing.py --size 100m      # ViT-B/16-shaped tower + 6-layer 768-wide LLaMA, minutes

Both sides train the same model (LoRA on the LLM + connector, AdamW) on the same seeded samples in the same
batches; only the collator's layout differs. Sample lengths are long-tailed like LLaVA-Instruct's: one image each,
then mostly a single short exchange and sometimes many long turns. Each side runs in its own process; a step is
forward + backward + optimizer, timed after warm-up, and its throughput counts the tokens of the samples only
(padding excluded), so the two sides are credited the same tokens per batch. Components have random weights and
are built locally (the tiny BPE tokenizer of modeling/tiny_components.py, about 400 tokens, in both sizes).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, AutoModelForCausalLM, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig
from transformers.utils import is_flash_attn_2_available

import visionbridge
from visionbridge import VisionBridgeTrainingArguments
from visionbridge.modeling.tiny_components import SPECIAL_TOKENS, build_tiny_components, train_tiny_tokenizer
from visionbridge.trainer.collator import VisionBridgeCollator
from visionbridge.trainer.lora import prepare_model
from visionbridge.trainer.packing import per_sample_losses

# size: (samples per batch, warm-up steps, timed steps, image side, longest answer in words)
SETTINGS = {"tiny": (8, 1, 4, 32, 120), "100m": (8, 1, 3, 224, 160)}
WORDS = (
    "a the picture shows temple lake blue sky red flower green leaves sun digit number one two three four five six "
    "seven eight nine zero assistant helpful detailed polite answers questions human curious what is in this"
).split()
GOAL = 1.5
# Packed rows for eager/sdpa, whose mask is a dense square over a row; flash attention takes the batch as one row.
ROW_LENGTH = 1024


def build_100m_components(directory: Path) -> tuple[str, str]:
    """A ViT-B/16-shaped CLIP vision tower (12 x 768, 224 px) and a 6-layer 768-wide LLaMA, random weights."""
    torch.manual_seed(0)
    vision_path, language_path = directory / "vit-b16", directory / "llama-6x768"
    vision = CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
    )
    AutoModel.from_config(vision).save_pretrained(vision_path)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size=224).save_pretrained(vision_path)
    tokenizer = train_tiny_tokenizer()
    ids = {f"{name}_id": tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[name]) for name in ("bos_token", "eos_token")}
    language = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=6,
        num_attention_heads=12,
        max_position_embeddings=4096,
        **ids,
    )
    AutoModelForCausalLM.from_config(language).save_pretrained(language_path)
    tokenizer.save_pretrained(language_path)
    return str(vision_path), str(language_path)


def long_tailed_samples(count: int, image_side: int, longest_answer: int, seed: int = 0) -> list[dict]:
    """Chats with one image each: turns ~ 1 + geometric (mean about 2), answer words ~ lognormal (median 12)."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        messages = []
        for turn in range(min(rng.geometric(0.55), 10)):
            question = " ".join(rng.choice(WORDS, rng.integers(4, 12)))
            words = int(min(rng.lognormal(np.log(12), 1.0), longest_answer)) + 1
            messages.append({"role": "user", "content": ("<image>\n" if turn == 0 else "") + question + "?"})
            messages.append({"role": "assistant", "content": " ".join(rng.choice(WORDS, words))})
        pixels = rng.integers(0, 256, (image_side, image_side, 3), dtype=np.uint8)
        samples.append({"messages": messages, "images": [Image.fromarray(pixels)]})
    return samples


def train_side(packing: bool, size: str, device: str, vision_path: str, language_path: str) -> dict:
    """One side's run: per-step seconds and real tokens, and the first step's per-sample losses."""
    batch_size, warmup, steps, image_side, longest_answer = SETTINGS[size]
    torch.manual_seed(0)
    # Flash attention runs a packed row as separate sequences; sdpa masks a dense (sum T)^2 block-diagonal square.
    attention = "flash_attention_2" if device.startswith("cuda") and is_flash_attn_2_available() else "sdpa"
    dtype = torch.bfloat16 if attention == "flash_attention_2" else None
    model, processor = visionbridge.from_components(
        vision_path, language_path, attn_implementation=attention, dtype=dtype
    )
    with tempfile.TemporaryDirectory() as output_dir:
        args = VisionBridgeTrainingArguments(output_dir=output_dir, stage="instruct", lora_dropout=0.0, report_to=[])
        model = prepare_model(model, args).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    row_length = ROW_LENGTH if packing and attention == "sdpa" else None
    collator = VisionBridgeCollator(processor, packing=packing, packing_row_length=row_length)
    samples = long_tailed_samples(batch_size * (warmup + steps), image_side, longest_answer)
    chunks = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
    batches = [collator(chunk) for chunk in chunks]
    # Both sides are credited the tokens of their samples, whatever padding their layout adds (rows end padded too).
    real_tokens = [sum(len(collator.encode(s["messages"], len(s["images"]))[0]) for s in chunk) for chunk in chunks]

    seconds, tokens, slots, first_losses = [], [], [], None
    for batch, real in zip(batches, real_tokens, strict=True):
        batch = {key: value.to(device) for key, value in batch.items()}
        sync()
        start = time.perf_counter()
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device != "cpu"):
            outputs = model(**batch)
        outputs.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        seconds.append(time.perf_counter() - start)
        tokens.append(real)
        slots.append(batch["input_ids"].numel())
        if first_losses is None:
            losses = per_sample_losses(outputs.logits.detach(), batch["labels"], batch.get("position_ids"))
            first_losses = losses.tolist()
    return {
        "attention": attention,
        "row_length": row_length,
        "seconds": seconds[warmup:],
        "tokens": tokens[warmup:],
        "slots": slots[warmup:],
        "first_losses": first_losses,
    }


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _side_in_subprocess(side: str, size: str, device: str, vision_path: str, language_path: str) -> dict:
    command = [sys.executable, __file__, "--side", side, "--size", size, "--device", device]
    command += ["--vision", vision_path, "--language", language_path]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"The {side} side failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(size: str = "tiny", device: str = "cpu") -> list[dict]:
    """Benchmark rows: real tokens/s of each side, their ratio (goal >= 1.5x), and the per-sample loss gap."""
    if size not in SETTINGS:
        raise ValueError(f"size must be one of {', '.join(SETTINGS)}, got {size!r}.")
    with tempfile.TemporaryDirectory() as directory:
        if size == "tiny":
            paths = build_tiny_components(directory, "clip", "llama")
        else:
            paths = build_100m_components(Path(directory))
        padded = _side_in_subprocess("padded", size, device, *paths)
        packed = _side_in_subprocess("packed", size, device, *paths)

    def throughput(side: dict) -> float:
        return statistics.median(n / s for n, s in zip(side["tokens"], side["seconds"], strict=True))

    ours, reference = throughput(packed), throughput(padded)
    ratio = ours / reference
    gap = max(abs(a - b) for a, b in zip(packed["first_losses"], padded["first_losses"], strict=True))
    batch_size, warmup, steps = SETTINGS[size][:3]
    setting = (
        f"size={size}, device={device}, attention={packed['attention']}, packing_row_length="
        f"{packed['row_length']}, {batch_size} samples/batch, "
        f"median of {steps} steps after {warmup}"
    )
    return [
        {
            "section": "packing",
            "metric": "real training tokens/s, packed (ours) vs padded (reference)",
            "ours": round(ours, 1),
            "reference": round(reference, 1),
            "ratio": round(ratio, 3),
            "goal": f">= {GOAL}x",
            "met": ratio >= GOAL,
            "note": f"{setting}; LoRA on the LLM + connector, fwd+bwd+AdamW; "
            f"{statistics.mean(padded['tokens']):.0f} real tokens per batch on average, "
            f"{1 - sum(padded['tokens']) / sum(padded['slots']):.0%} of the padded batches' tokens are padding",
        },
        {
            "section": "packing",
            "metric": "max |per-sample loss packed - padded| (first step)",
            "ours": gap,
            "reference": None,
            "ratio": None,
            "goal": "float noise (< 1e-3 on CPU fp32)",
            "met": gap < 1e-3 if device == "cpu" else None,
            "note": f"{len(packed['first_losses'])} samples; same weights, same batch, loss from each layout's logits",
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=list(SETTINGS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--side", choices=["padded", "packed"], help=argparse.SUPPRESS)
    parser.add_argument("--vision", help=argparse.SUPPRESS)
    parser.add_argument("--language", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        result = train_side(args.side == "packed", args.size, args.device, args.vision, args.language)
        print(json.dumps(result))
        return
    for row in run(args.size, args.device):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
