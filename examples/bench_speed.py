"""Speed and memory of VisionBridge against transformers' LlavaForConditionalGeneration, one process per side.

One VisionBridge model (CLIP-shaped tower, mlp2x_gelu connector, LLaMA-shaped LM, random weights) is written to
disk and converted to a Llava with every weight copied (`to_llava`); the two must give the same logits on the
benchmark batch before anything is timed. Each side then runs in its own process on the same batch, with the same
seed, thread count and peft LoRA (on the LLM's linear layers; connector / projector trained fully):
a training step (forward + backward + AdamW), greedy generation of 64 new tokens with the KV cache (batch 1
and 8), and the process's peak memory. On CPU, memory is measured in a second process per side that does the
same work once, with glibc handing blocks of 64 KiB and more back to the system when freed
(MALLOC_MMAP_THRESHOLD_): peak RSS then follows the live tensors, not what the allocator happens to keep cached
(without it the same run's peak moves by 10% from run to run), and the timed process keeps the default allocator.

    python examples/bench_speed.py --size tiny
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# Encoder and LM shapes; "100m" is a ViT-B/16 tower (86M) and a 6-layer, 768-wide LLaMA (43M).
SIZES = {
    "tiny": {
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=8),
        "image_size": 32,
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        "warmup": 1,
        "steps": 5,
        "generations": 3,
        "rounds": 2,
    },
    "100m": {
        "vision": dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16
        ),
        "image_size": 224,
        "text": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=12),
        "warmup": 1,
        "steps": 3,
        "generations": 2,
        "rounds": 3,
    },
}
BATCH, TEXT_TOKENS, NEW_TOKENS, SEED = 8, 32, 64, 0
LORA_TARGETS = r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
SIDES = {"visionbridge": "connector", "llava": "multi_modal_projector"}  # side -> module trained fully


def build_components(folder: Path, size: str) -> tuple[str, str]:
    """Write a random-weight CLIP vision tower to `folder`/vision and a LLaMA with the tiny BPE tokenizer to
    `folder`/language, shaped as SIZES[size]; returns the two paths."""
    from transformers import AutoModel, AutoModelForCausalLM, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig

    from visionbridge.modeling.tiny_components import train_tiny_tokenizer

    spec = SIZES[size]
    torch.manual_seed(SEED)
    vision_config = CLIPVisionConfig(image_size=spec["image_size"], **spec["vision"])
    AutoModel.from_config(vision_config).save_pretrained(folder / "vision")
    CLIPImageProcessor(size={"shortest_edge": spec["image_size"]}, crop_size=spec["image_size"]).save_pretrained(
        folder / "vision"
    )
    tokenizer = train_tiny_tokenizer()
    ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}
    text_config = LlamaConfig(vocab_size=len(tokenizer), **spec["text"], **ids)
    AutoModelForCausalLM.from_config(text_config).save_pretrained(folder / "language")
    tokenizer.save_pretrained(folder / "language")
    return str(folder / "vision"), str(folder / "language")


def build(folder: Path, size: str) -> float:
    """Write visionbridge/, llava/ and batch.safetensors under `folder`; returns the max |logit difference| of
    the two models on the batch, checked here before any timing."""
    import visionbridge
    from visionbridge.modeling import to_llava

    model, _ = visionbridge.from_components(*build_components(folder, size))
    model.eval().save_pretrained(folder / "visionbridge")
    llava = to_llava(model)
    llava.save_pretrained(folder / "llava")

    batch = _batch(model.config)
    save_file(batch, folder / "batch.safetensors")
    with torch.no_grad():
        ours, theirs = (side(**_model_inputs(batch)).logits for side in (model, llava))
    difference = (ours - theirs).abs().max().item()
    if not torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4):
        raise AssertionError(f"VisionBridge and Llava disagree on the same weights and batch: max |diff| {difference}")
    return difference


def _batch(config) -> dict[str, torch.Tensor]:
    """BATCH samples of <s> + image placeholders + TEXT_TOKENS random text ids; labels skip the image."""
    generator = torch.Generator().manual_seed(SEED)
    vocab = config.text_config.vocab_size
    text = torch.randint(4, vocab, (BATCH, TEXT_TOKENS), generator=generator)
    text[text == config.image_token_id] = 4
    image = torch.full((BATCH, config.image_seq_length), config.image_token_id)
    bos = torch.full((BATCH, 1), config.text_config.bos_token_id)
    input_ids = torch.cat([bos, image, text], dim=1)  # [B, 1 + S + T]
    side = config.vision_config.image_size
    return {
        "input_ids": input_ids,
        "pixel_values": torch.randn(BATCH, 3, side, side, generator=generator),
        "labels": input_ids.masked_fill(input_ids == config.image_token_id, -100),
    }


def _model_inputs(batch: dict, rows: int = BATCH, labels: bool = False) -> dict:
    inputs = {key: value[:rows] for key, value in batch.items() if labels or key != "labels"}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    return inputs


def _timed(function, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _resident_mib() -> float:
    """Resident memory of this process now (Linux), MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _generation(model, inputs: dict, settings: dict, runs: int, device: str) -> tuple[list[float], torch.Tensor]:
    """(seconds of `runs` generate calls after one warm-up call, or of that call alone, the last output ids)."""
    outputs = []

    def once():
        outputs.append(model.generate(**inputs, **settings))

    times = [_timed(once, device) for _ in range(1 + runs)]
    return times[1:] if runs else times, outputs[-1]


def worker(side: str, folder: Path, size: str, device: str, threads: int, output: Path, once: bool) -> None:
    """Load one side from `folder`, record its logits on the batch, then time generation and training (`once`:
    one generate call per batch size and two training steps, for the memory measurement)."""
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    load = {"dtype": torch.bfloat16 if device == "cuda" else torch.float32, "attn_implementation": "sdpa"}
    if side == "visionbridge":
        from visionbridge import VisionBridgeForConditionalGeneration as model_class
    else:
        from transformers import LlavaForConditionalGeneration as model_class
    # Memory is counted from here: what the package imports weighs is not the model's.
    resident_before = _resident_mib()
    model = model_class.from_pretrained(folder / side, **load).to(device).eval()
    batch = {key: value.to(device) for key, value in load_file(folder / "batch.safetensors").items()}
    spec, result = SIZES[size], {}
    if once:
        spec = spec | {"generations": 0, "warmup": 1, "steps": 1}

    with torch.no_grad():
        logits = model(**_model_inputs(batch)).logits.float().cpu()
    save_file({"logits": logits}, output.with_suffix(".logits.safetensors"))

    settings = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True)
    settings["pad_token_id"] = model.config.text_config.pad_token_id
    for rows in (1, BATCH):
        inputs = _model_inputs(batch, rows)
        result[f"generate_{rows}"], tokens = _generation(model, inputs, settings, spec["generations"], device)
        result[f"tokens_{rows}"] = tokens[:, -NEW_TOKENS:].tolist()

    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS)
    model = get_peft_model(model, LoraConfig(**lora.to_dict() | {"modules_to_save": [SIDES[side]]}))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    inputs = _model_inputs(batch, labels=True)

    def step():
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = [_timed(step, device) for _ in range(spec["warmup"] + spec["steps"])]
    result["train_step"] = times[spec["warmup"] :]
    result["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if device == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - resident_before
    output.write_text(json.dumps(result))


def _run_sides(folder: Path, size: str, device: str, threads: int) -> dict[str, tuple[dict, torch.Tensor]]:
    """Each side's timings, pooled over SIZES[size]["rounds"] processes that alternate between the sides (so a slow
    spell of the machine falls on both), its logits, and its peak memory: on CPU from a further, untimed process."""
    results = {}
    for _ in range(SIZES[size]["rounds"]):
        for side in SIDES:
            result, logits = _worker_process(side, folder, size, device, threads, once=False)
            if side in results:
                for key in ("train_step", "generate_1", f"generate_{BATCH}"):
                    results[side][0][key] += result[key]
            else:
                results[side] = result, logits
    if device == "cpu":
        for side in SIDES:
            memory, _ = _worker_process(side, folder, size, device, threads, once=True)
            results[side][0]["peak_memory_mib"] = memory["peak_memory_mib"]
    return results


def _worker_process(side: str, folder: Path, size: str, device: str, threads: int, once: bool):
    output = folder / f"{side}.json"
    command = [sys.executable, __file__, "--worker", side, "--folder", str(folder), "--size", size]
    command += ["--device", device, "--threads", str(threads), "--output", str(output)] + (["--once"] if once else [])
    environment = os.environ | ({"MALLOC_MMAP_THRESHOLD_": "65536"} if once else {})
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode:
        raise RuntimeError(f"The {side} benchmark process failed:\n{done.stderr[-3000:]}")
    return json.loads(output.read_text()), load_file(output.with_suffix(".logits.safetensors"))["logits"]


def _row(metric: str, ours: float, reference: float | None, ratio: float | None, goal: str, met, note: str) -> dict:
    return dict(
        section="speed", metric=metric, ours=ours, reference=reference, ratio=ratio, goal=goal, met=met, note=note
    )


def run(size: str, device: str) -> list[dict]:
    """Rows for each size asked for (`tiny`, `100m` or `all`): logit agreement, training step, generation, memory."""
    threads = torch.get_num_threads()
    rows = []
    for name in SIZES if size == "all" else [size]:
        with tempfile.TemporaryDirectory() as directory:
            folder = Path(directory)
            built_difference = build(folder, name)
            (ours, our_logits), (theirs, their_logits) = _run_sides(folder, name, device, threads).values()
        for side in (ours, theirs):
            for key in ("train_step", "generate_1", f"generate_{BATCH}"):
                side[key] = statistics.median(side[key])
        loaded_difference = (our_logits - their_logits).abs().max().item()
        tolerance = 1e-4 if device == "cpu" else 5e-2 * their_logits.abs().max().item()
        where = f"{name}, {device}, {threads} threads"
        rows.append(
            _row(
                f"max |logit difference| before timing ({name})",
                max(built_difference, loaded_difference),
                None,
                None,
                f"<= {tolerance:.2g}",
                max(built_difference, loaded_difference) <= tolerance,
                f"same weights and batch; in one process {built_difference:.2g}, "
                f"loaded per side {loaded_difference:.2g}",
            )
        )
        ratio = ours["train_step"] / theirs["train_step"]
        spec = SIZES[name]
        pooled = f"median of {spec['rounds'] * spec['steps']} steps ({spec['rounds']} processes per side, alternating)"
        note = f"{where}; batch {BATCH}, {pooled}; {ours['trainable']} trainable"
        rows.append(
            _row(
                f"training step, s ({name})",
                ours["train_step"],
                theirs["train_step"],
                ratio,
                "<= 1.0",
                ratio <= 1.0,
                note,
            )
        )
        for batch in (1, BATCH):
            our_time, their_time = ours[f"generate_{batch}"], theirs[f"generate_{batch}"]
            same = ours[f"tokens_{batch}"] == theirs[f"tokens_{batch}"]
            rows.append(
                _row(
                    f"generation, new tokens/s, batch {batch} ({name})",
                    batch * NEW_TOKENS / our_time,
                    batch * NEW_TOKENS / their_time,
                    our_time / their_time,
                    "time ratio <= 1.0",
                    our_time <= their_time,
                    f"{where}; greedy, KV cache, {NEW_TOKENS} new tokens, median of "
                    f"{spec['rounds'] * spec['generations']} calls; same tokens: {same}",
                )
            )
        ratio = ours["peak_memory_mib"] / theirs["peak_memory_mib"]
        measured = "torch.cuda.max_memory_allocated" if device == "cuda" else "peak RSS above the RSS after imports"
        measured += (
            "" if device == "cuda" else " (separate untimed pass, freed blocks >= 64 KiB returned to the system)"
        )
        rows.append(
            _row(
                f"peak memory, MiB ({name})",
                ours["peak_memory_mib"],
                theirs["peak_memory_mib"],
                ratio,
                "<= 1.0",
                ratio <= 1.0,
                f"{measured}: load, generation and training",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=[*SIZES, "all"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--worker", choices=list(SIDES), help="internal: run one side")
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", type=Path)
    parser.add_argument("--once", action="store_true", help="internal: one pass, for the memory measurement")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.folder, args.size, args.device, args.threads, args.output, args.once)
    else:
        print(json.dumps(run(args.size, args.device), indent=1))


if __name__ == "__main__":
    main()
