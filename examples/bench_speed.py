"""Speed and memory of VisionBridge against transformers' LlavaForConditionalGeneration, one process per side.

One VisionBridge model (CLIP-shaped tower, mlp2x_gelu connector, LLaMA-shaped LM, random weights) is written to
disk and converted to a Llava with every weight copied (`to_llava`); the two must give the same logits on the
benchmark batch before anything is timed. Each side then runs in its own process on the same batch, with the same
seed, thread count and peft LoRA (on the LLM's linear layers; connector / projector trained fully): greedy
generation of 64 new tokens with the KV cache (batch 1 and 8), a training step (forward + backward + AdamW), and
the process's peak memory. The two processes are loaded side by side and take turns, one timed unit at a time
(lockstep.py), so that the machine's drift falls on both. On CPU, memory is measured in a further process per side
that does the same work once, alone, with glibc handing blocks of 64 KiB and more back to the system when freed
(MALLOC_MMAP_THRESHOLD_): peak RSS then follows the live tensors, not what the allocator happens to keep cached
(without it the same run's peak moves by 10% from run to run); the timed processes keep the default allocator.

    python examples/bench_speed.py --size tiny
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from lockstep import Side, alternate, running, serve
from measure import paired_ratio, peak_memory_mib, reset_peak, resident_mib, timed
from safetensors.torch import load_file, save_file

# Encoder and LM shapes; "100m" is a ViT-B/16 tower (86M) and a 6-layer, 768-wide LLaMA (43M).
SIZES = {
    "tiny": {
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=8),
        "image_size": 32,
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        "warmup": 1,
        "steps": 16,
        "generations": 12,
    },
    "100m": {
        "vision": dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16
        ),
        "image_size": 224,
        "text": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=12),
        "warmup": 1,
        "steps": 16,
        "generations": 10,
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


class Worker:
    """One side in its own process (see lockstep.py): loads its model from `folder`, then answers requests:
    `logits` on the batch (written beside the model), `generate` (rows: 1 or BATCH), `train` (one step, its seconds
    and loss; the first one puts LoRA on the model, so generation is asked for before training), `reset_peak` and
    `memory` (the peak above the RSS after the imports, since the start or the last `reset_peak`)."""

    def __init__(self, side: str, folder: Path, device: str, threads: int, loss_only: bool = False):
        torch.set_num_threads(threads)
        torch.manual_seed(SEED)
        load = {"dtype": torch.bfloat16 if device == "cuda" else torch.float32, "attn_implementation": "sdpa"}
        if side == "visionbridge":
            from visionbridge import VisionBridgeForConditionalGeneration as model_class
        else:
            from transformers import LlavaForConditionalGeneration as model_class
        # Memory is counted from here: what the package imports weighs is not the model's.
        self.resident_before = resident_mib()
        self.side, self.folder, self.device, self.loss_only = side, folder, device, loss_only
        self.model = model_class.from_pretrained(folder / side, **load).to(device).eval()
        self.batch = {key: value.to(device) for key, value in load_file(folder / "batch.safetensors").items()}
        self.optimizer = None

    def __call__(self, request: dict) -> dict:
        return getattr(self, request["do"])(**{key: value for key, value in request.items() if key != "do"})

    def logits(self) -> dict:
        with torch.no_grad():
            logits = self.model(**_model_inputs(self.batch)).logits.float().cpu()
        path = self.folder / f"{self.side}.logits.safetensors"
        save_file({"logits": logits}, path)
        return {"path": str(path)}

    def generate(self, rows: int) -> dict:
        settings = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True)
        settings["pad_token_id"] = self.model.config.text_config.pad_token_id
        inputs, outputs = _model_inputs(self.batch, rows), []
        seconds = timed(lambda: outputs.append(self.model.generate(**inputs, **settings)), self.device)
        return {"seconds": seconds, "tokens": outputs[0][:, -NEW_TOKENS:].tolist()}

    def train(self) -> dict:
        if self.optimizer is None:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS)
            lora = LoraConfig(**lora.to_dict() | {"modules_to_save": [SIDES[self.side]]})
            self.model = get_peft_model(self.model, lora).train()
            self.trainable = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizer = torch.optim.AdamW(self.trainable, lr=1e-4)
        # loss_only: the loss from labelled positions alone, as VisionBridgeTrainer's training steps compute it.
        inputs = _model_inputs(self.batch, labels=True) | ({"loss_only": True} if self.loss_only else {})
        losses = []

        def step():
            loss = self.model(**inputs).loss
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())

        seconds = timed(step, self.device)
        return {"seconds": seconds, "loss": losses[0], "trainable": sum(p.numel() for p in self.trainable)}

    def reset_peak(self) -> dict:
        reset_peak(self.device)
        return {}

    def memory(self) -> dict:
        return {"peak_memory_mib": peak_memory_mib(self.device, self.resident_before)}


def side_process(
    name: str, folder: Path, device: str, threads: int, environment: dict | None = None, loss_only: bool = False
) -> Side:
    """A Worker for side `name` (SIDES) in its own process, loading from `folder`."""
    command = [sys.executable, __file__, "--serve", name, "--folder", str(folder)]
    command += ["--device", device, "--threads", str(threads)] + (["--loss-only"] if loss_only else [])
    return Side(name, command, folder / f"{name}.log", environment)


def _run_sides(folder: Path, size: str, device: str, threads: int) -> tuple[dict, dict]:
    """Per side (in SIDES order): its logits, its timings (generation at batch 1 and BATCH, training steps: the two
    processes take turns, see lockstep.py) and its peak memory, on CPU from a further, untimed pass per side."""
    spec, results = SIZES[size], {name: {} for name in SIDES}
    with running([side_process(name, folder, device, threads) for name in SIDES]) as sides:
        for side in sides:
            results[side.name]["logits"] = load_file(side.ask({"do": "logits"})["path"])["logits"]
        for rows in (1, BATCH):
            request = {"do": "generate", "rows": rows}
            for name, replies in alternate(sides, request, spec["warmup"], spec["generations"]).items():
                results[name][f"generate_{rows}"] = [reply["seconds"] for reply in replies]
                results[name][f"tokens_{rows}"] = replies[-1]["tokens"]
        for name, replies in alternate(sides, {"do": "train"}, spec["warmup"], spec["steps"]).items():
            results[name]["train_step"] = [reply["seconds"] for reply in replies]
            results[name]["trainable"] = replies[-1]["trainable"]
        if device == "cuda":
            for side in sides:
                results[side.name] |= side.ask({"do": "memory"})
    if device == "cpu":
        # The same work once per side, alone, with freed blocks of 64 KiB and more handed back to the system.
        environment = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"}
        for name in SIDES:
            with running([side_process(name, folder, device, threads, environment)]) as (side,):
                for request in ({"do": "logits"}, *({"do": "generate", "rows": rows} for rows in (1, BATCH))):
                    side.ask(request)
                side.ask({"do": "train"})
                side.ask({"do": "train"})
                results[side.name] |= side.ask({"do": "memory"})
    return results["visionbridge"], results["llava"]


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
            ours, theirs = _run_sides(folder, name, device, threads)
        loaded_difference = (ours["logits"] - theirs["logits"]).abs().max().item()
        tolerance = 1e-4 if device == "cpu" else 5e-2 * theirs["logits"].abs().max().item()
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
        spec = SIZES[name]
        ratio, paired = paired_ratio(ours["train_step"], theirs["train_step"])
        note = (
            f"{where}; batch {BATCH}; median of {spec['steps']} steps per side, {paired}; {ours['trainable']} trainable"
        )
        rows.append(
            _row(
                f"training step, s ({name})",
                statistics.median(ours["train_step"]),
                statistics.median(theirs["train_step"]),
                ratio,
                "<= 1.0",
                ratio <= 1.0,
                note,
            )
        )
        for batch in (1, BATCH):
            our_times, their_times = ours[f"generate_{batch}"], theirs[f"generate_{batch}"]
            ratio, paired = paired_ratio(our_times, their_times)
            same = ours[f"tokens_{batch}"] == theirs[f"tokens_{batch}"]
            rows.append(
                _row(
                    f"generation, new tokens/s, batch {batch} ({name})",
                    batch * NEW_TOKENS / statistics.median(our_times),
                    batch * NEW_TOKENS / statistics.median(their_times),
                    ratio,
                    "time ratio <= 1.0",
                    ratio <= 1.0,
                    f"{where}; greedy, KV cache, {NEW_TOKENS} new tokens; median of {spec['generations']} calls "
                    f"per side, {paired}; same tokens: {same}",
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
    parser.add_argument("--serve", choices=list(SIDES), help="internal: run one side, answering requests on stdin")
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--loss-only", action="store_true", help="internal: train with loss_only (VisionBridge)")
    args = parser.parse_args()
    if args.serve:
        serve(lambda: Worker(args.serve, args.folder, args.device, args.threads, args.loss_only))
    else:
        print(json.dumps(run(args.size, args.device), indent=1))


if __name__ == "__main__":
    main()
