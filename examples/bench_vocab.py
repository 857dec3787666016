"""Training at real vocabularies: VisionBridge against transformers' Llava + peft and against TRL's SFTTrainer.

In a LLaVA-style batch few positions carry a label (here 60 answer tokens of 661); VisionBridge's training steps
compute the LM head and the loss at those alone (`loss_only`), where Llava and TRL score every position. The
models: a CLIP-shaped tower at 336 px (ViT-L/14's widths, 576 patches, 2 layers, layer -2 read as in LLaVA), an
mlp2x_gelu connector and one of two language models, 2 layers at real widths, random weights:
- LLaMA-shaped at TinyLlama-1.1B's widths (2048 hidden, 5632 intermediate, 32 heads, 4 KV heads), vocab 32,000;
- Qwen2-shaped at Qwen2-0.5B's widths (896 hidden, 4864 intermediate, 14 heads, 2 KV heads), tied head, vocab
  151,936.
The batch: 4 samples of <s>, 576 image placeholders, 24 prompt and 60 answer tokens (random ids), labels on the
answer. The VisionBridge model is converted to a Llava with every weight copied (`to_llava`), and the two must
give the same logits before anything is timed. The sides, each in its own process, take turns a step at a time
(lockstep.py):
- against Llava + peft: bench_speed's Worker on each model, the same peft LoRA (r=16 on the LLM's linear layers,
  connector / projector trained fully) and AdamW; ours with `loss_only`, as VisionBridgeTrainer trains; beside them
  ours with no LM head or loss at all (`BodyWorker`, the same weights and batch as ours): the floor that a step
  with any head and loss stays above, which says what ratios the lean head can reach at a shape; and (LLaMA-shaped
  LM) ours and Llava again with gradient checkpointing, as LLaVA's and TRL's training scripts run
  (`CheckpointedWorker`);
- against TRL (the Qwen2-shaped LM): VisionBridgeTrainer at its defaults (fp32) and trl.SFTTrainer on the Llava
  with the same LoRA as its `peft_config`, at SFTConfig's defaults (bf16 autocast where the device has it, gradient
  checkpointing, its fused LM head) and with `bf16=False`, each a step of the trainer's own loop
  (lockstep.TrainerTurns);
- packing (the Qwen2-shaped LM): VisionBridgeTrainer with `packing=True` against SFTTrainer's defaults on padded
  batches (TRL refuses to pack vision data), on bench_packing's LLaVA-1.5-like mix of samples, 4 per batch.
Every side gets the same batches as tensors (the trainers through a data_collator), so the first step's losses,
before any update, must agree (BodyWorker's is zero). Every side runs with glibc handing freed blocks of 64 KiB
and more back to the system (MALLOC_MMAP_THRESHOLD_), so that its peak RSS, counted from after loading (the
weights included), follows its live tensors. Needs TRL: pip install "visionbridge[trl]".

    python examples/bench_vocab.py --size tiny
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from bench_packing import llava_mix_samples
from bench_speed import LORA_TARGETS, SEED, SIDES, Worker, side_process
from datasets import Dataset
from lockstep import Side, TrainerTurns, alternate, running, serve
from measure import paired_ratio, peak_memory_mib, reset_peak, resident_mib
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlavaForConditionalGeneration,
)

import visionbridge
from visionbridge import VisionBridgeForConditionalGeneration, VisionBridgeTrainer, VisionBridgeTrainingArguments
from visionbridge.modeling import modeling_visionbridge, to_llava
from visionbridge.modeling.labelled_loss import IGNORE_INDEX
from visionbridge.modeling.tiny_components import train_tiny_tokenizer
from visionbridge.trainer.collator import VisionBridgeCollator

try:
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer
except ImportError as error:
    raise ImportError('The vocabulary benchmark compares with TRL: pip install "visionbridge[trl]".') from error

SIZES = {
    "tiny": {
        "vision": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, patch_size=8, image_size=32),
        "models": [
            {
                "name": "Qwen2-shaped, tiny",
                "type": "qwen2",
                "text": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2),
                "vocab": 2000,
                "goals": None,  # not judged at the tiny size
                "compared": ("llava", "llava checkpointed", "trl", "packing"),
            }
        ],
        "prompt_answer": (4, 6),
        "steps": 2,  # timed, after one warm-up step
    },
    "100m": {
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, patch_size=14, image_size=336),
        "models": [
            {
                "name": "LLaMA-shaped, TinyLlama-1.1B widths",
                "type": "llama",
                "text": dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4),
                "vocab": 32000,
                "goals": {"time": 0.7, "memory": 0.6},
                "compared": ("llava", "llava checkpointed"),
            },
            {
                "name": "Qwen2-shaped, Qwen2-0.5B widths",
                "type": "qwen2",
                "text": dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2)
                | {"tie_word_embeddings": True},
                "vocab": 151936,
                "goals": {"time": 0.35, "memory": 0.4},
                "compared": ("llava", "trl", "packing"),
            },
        ],
        "prompt_answer": (24, 60),
        "steps": 4,  # timed, after one warm-up step: with TRL's padded batches, about 35 minutes on 2 idle CPU cores
    },
}
LAYERS, BATCH, MODEL_MAX_LENGTH = 2, 4, 2048
# Throughput against SFTTrainer at its defaults and at fp32; memory against its defaults.
TRL_GOALS = {"throughput": 2.0, "memory": 0.6}
TRL_DEFAULTS = "at SFTConfig's defaults (bf16 autocast, gradient checkpointing)"
TRL_FP32 = "with bf16=False (gradient checkpointing as by default)"
# Trainer sides: name -> (trainer, batches). Each trainer is given more steps than any run asks for (TrainerTurns).
TRAINERS = {
    "visionbridge trainer": ("visionbridge", "fixed"),
    "trl": ("trl", "fixed"),
    "trl fp32": ("trl fp32", "fixed"),
    "visionbridge packed": ("visionbridge", "packed"),
    "trl padded": ("trl", "padded"),
}
BF16_SIDES = ("trl",)  # its first-step loss differs from the fp32 sides' by bf16's noise
BODY = "visionbridge body"  # BodyWorker
FLOOR = "ours without LM head or loss (the floor of any head)"
LORA = "peft LoRA r=16 + connector, AdamW; ours with loss_only"
CHECKPOINTED = {"visionbridge checkpointed": "visionbridge", "llava checkpointed": "llava"}  # CheckpointedWorker
MAX_STEPS = 100
# The sides of each comparison, ours first; each comparison's sides take turns.
COMPARED = {
    "llava": ("visionbridge", "llava", BODY),
    "trl": ("visionbridge trainer", "trl", "trl fp32"),
    "packing": ("visionbridge packed", "trl padded"),
    "llava checkpointed": tuple(CHECKPOINTED),
}


def write_components(folder: Path, size: str, model: dict) -> tuple[str, str]:
    """A random CLIP-shaped tower and the `model` LM with the tiny BPE tokenizer, under `folder`."""
    torch.manual_seed(SEED)
    vision = SIZES[size]["vision"]
    AutoModel.from_config(CLIPVisionConfig(num_hidden_layers=LAYERS, **vision)).save_pretrained(folder / "vision")
    side = vision["image_size"]
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size=side).save_pretrained(folder / "vision")
    tokenizer = train_tiny_tokenizer()
    ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}
    text = AutoConfig.for_model(
        model["type"], vocab_size=model["vocab"], num_hidden_layers=LAYERS, **model["text"], **ids
    )
    AutoModelForCausalLM.from_config(text).save_pretrained(folder / "language")
    tokenizer.save_pretrained(folder / "language")
    return str(folder / "vision"), str(folder / "language")


def fixed_batch(config, size: str) -> dict[str, torch.Tensor]:
    """BATCH samples of <s>, the image's placeholders, prompt and answer ids; labels on the answer only."""
    prompt, answer = SIZES[size]["prompt_answer"]
    generator = torch.Generator().manual_seed(SEED)
    text = torch.randint(4, config.text_config.vocab_size, (BATCH, prompt + answer), generator=generator)
    text[text == config.image_token_id] = 4
    bos = torch.full((BATCH, 1), config.text_config.bos_token_id)
    image = torch.full((BATCH, config.image_seq_length), config.image_token_id)
    input_ids = torch.cat([bos, image, text], dim=1)  # [B, T]
    labels = input_ids.clone()
    labels[:, : input_ids.shape[1] - answer] = IGNORE_INDEX
    side = config.vision_config.image_size
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(BATCH, 3, side, side, generator=generator),
        "labels": labels,
    }


def save_batches(path: Path, batches: list[dict]) -> None:
    save_file({f"{index}.{key}": value for index, batch in enumerate(batches) for key, value in batch.items()}, path)


def load_batches(path: Path) -> list[dict]:
    batches = {}
    for key, value in load_file(path).items():
        index, name = key.split(".", 1)
        batches.setdefault(int(index), {})[name] = value
    return [batches[index] for index in sorted(batches)]


def build(folder: Path, size: str, model_spec: dict) -> dict:
    """Write visionbridge/ (model and processor), llava/, the fixed batch (batch.safetensors for bench_speed's
    Worker, fixed.safetensors for the trainers) and, for a packing comparison, the mix's padded and packed batches;
    returns the max |logit difference| of the two models on the first sample, checked here, and the real tokens of
    each batch."""
    model, processor = visionbridge.from_components(*write_components(folder, size, model_spec))
    model.eval().save_pretrained(folder / "visionbridge")
    processor.save_pretrained(folder / "visionbridge")
    llava = to_llava(model)
    llava.save_pretrained(folder / "llava")

    batch = fixed_batch(model.config, size)
    save_file(batch, folder / "batch.safetensors")
    save_batches(folder / "fixed.safetensors", [batch])
    first = {key: value[:1] for key, value in batch.items() if key != "labels"}
    with torch.no_grad():
        ours, theirs = (side(**first).logits for side in (model, llava))
    difference = (ours - theirs).abs().max().item()
    if not torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4):
        raise AssertionError(f"VisionBridge and Llava disagree on the same weights and batch: max |diff| {difference}")
    tokens = {"fixed": [int(batch["attention_mask"].sum())]}
    if "packing" in model_spec["compared"]:
        samples = llava_mix_samples(BATCH * (1 + SIZES[size]["steps"]), model.config.vision_config.image_size, SEED)
        chunks = [samples[start : start + BATCH] for start in range(0, len(samples), BATCH)]
        for layout in ("padded", "packed"):
            collate = VisionBridgeCollator(processor, model_max_length=MODEL_MAX_LENGTH, packing=layout == "packed")
            save_batches(folder / f"{layout}.safetensors", [collate(chunk) for chunk in chunks])
        padded = load_batches(folder / "padded.safetensors")
        tokens["mix"] = [int(batch["attention_mask"].sum()) for batch in padded]
        tokens["longest"] = [int(batch["attention_mask"].sum(-1).max()) for batch in padded]
        tokens["slots"] = [batch["input_ids"].numel() for batch in padded]
    return {"logit_difference": difference, "tokens": tokens}


class Batches:
    """A data_collator that hands out prepared batches in turn, whatever rows the data loader gives it, so that
    every side trains on the same tensors in the same order."""

    def __init__(self, batches: list[dict], packing: bool):
        self.batches, self.packing, self.given = batches, packing, 0

    def __call__(self, rows: list) -> dict:
        batch = self.batches[self.given % len(self.batches)]
        self.given += 1
        return dict(batch)


def _visionbridge_trainer(folder: Path, batches: Batches, device: str, output_dir: Path) -> VisionBridgeTrainer:
    model = VisionBridgeForConditionalGeneration.from_pretrained(folder / "visionbridge", attn_implementation="sdpa")
    # Our defaults but for the harness.
    args = VisionBridgeTrainingArguments(
        output_dir=str(output_dir),
        stage="instruct",
        packing=batches.packing,
        **_harness(device),
    )
    return VisionBridgeTrainer(model=model, args=args, train_dataset=_rows(), data_collator=batches)


def _trl_trainer(folder: Path, batches: Batches, device: str, output_dir: Path, fp32: bool) -> SFTTrainer:
    model = LlavaForConditionalGeneration.from_pretrained(folder / "llava", attn_implementation="sdpa")
    # SFTConfig's defaults but for the harness; fp32 sets bf16=False, the defaults leave it unset (True unless fp16).
    args = SFTConfig(
        output_dir=str(output_dir),
        dataset_kwargs={"skip_prepare_dataset": True},
        **({"bf16": False} if fp32 else {}),
        **_harness(device),
    )
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS, modules_to_save=["multi_modal_projector"]
    )
    tokenizer = AutoTokenizer.from_pretrained(folder / "visionbridge")
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=_rows(),
        data_collator=batches,
        processing_class=tokenizer,
        peft_config=lora,
    )


def _harness(device: str) -> dict:
    """Training arguments that only run the benchmark: batch size, steps, no saving or reporting, the device, and
    the placeholder rows kept (the collator ignores them)."""
    return dict(
        per_device_train_batch_size=BATCH,
        max_steps=MAX_STEPS,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        use_cpu=device == "cpu",
    )


def _rows() -> Dataset:
    return Dataset.from_dict({"row": list(range(BATCH * MAX_STEPS))})


class TrainerSide:
    """One trainer side in its own process (lockstep.py; TRAINERS names it): answers `train` (one optimizer step
    of the trainer's own loop: seconds, loss, trainable parameters), `reset_peak` and `memory`, as bench_speed's
    Worker does."""

    def __init__(self, name: str, folder: Path, device: str, threads: int):
        torch.set_num_threads(threads)
        torch.manual_seed(SEED)
        self.resident_before, self.device = resident_mib(), device
        trainer_name, layout = TRAINERS[name]
        batches = Batches(load_batches(folder / f"{layout}.safetensors"), packing=layout == "packed")
        output_dir = folder / name.replace(" ", "-")
        if trainer_name.startswith("visionbridge"):
            trainer = _visionbridge_trainer(folder, batches, device, output_dir)
        else:
            trainer = _trl_trainer(folder, batches, device, output_dir, fp32=trainer_name == "trl fp32")
        self.trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        self.turns = TrainerTurns(trainer)

    def __call__(self, request: dict) -> dict:
        if request["do"] == "train":
            return self.turns.step() | {"trainable": self.trainable}
        if request["do"] == "reset_peak":
            reset_peak(self.device)
            return {}
        return {"peak_memory_mib": peak_memory_mib(self.device, self.resident_before)}


def _no_head_or_loss(
    language_model, hidden: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None, lockstep: bool = False
) -> torch.Tensor:
    """In place of labelled_loss: zero times the sum of the body's output [B, T, D] at the positions whose next
    token is labelled (labels [B, T]), a scalar whose backward pass runs through the whole body, as a real loss's
    does, with no LM head in between."""
    return hidden[:, :-1][labels[:, 1:] != IGNORE_INDEX].sum() * 0.0


class BodyWorker(Worker):
    """bench_speed's Worker on our model, training with `loss_only`, whose loss at the labelled positions is
    `_no_head_or_loss` instead of the head and the LM's loss: everything else of the step (tower, connector, LM
    body forward and backward, AdamW) as the `visionbridge` side runs it. Its time and memory are the least that a
    step with any LM head and loss can take."""

    def __init__(self, folder: Path, device: str, threads: int):
        super().__init__("visionbridge", folder, device, threads, loss_only=True)
        modeling_visionbridge.labelled_loss = _no_head_or_loss  # this process only


class CheckpointedWorker(Worker):
    """bench_speed's Worker with gradient checkpointing on (transformers' own, non-reentrant): each decoder layer's
    activations are recomputed in the backward pass instead of kept. Ours trains with `loss_only`."""

    def __init__(self, name: str, folder: Path, device: str, threads: int):
        super().__init__(CHECKPOINTED[name], folder, device, threads, loss_only=CHECKPOINTED[name] == "visionbridge")
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not any(getattr(module, "gradient_checkpointing", False) for module in self.model.modules()):
            raise RuntimeError(f"{name}: gradient_checkpointing_enable left no layer checkpointed")


def start_side(name: str, folder: Path, device: str, threads: int, environment: dict | None = None) -> Side:
    """The process of side `name`: a trainer (TRAINERS), BodyWorker, CheckpointedWorker, or bench_speed's Worker on
    a model, ours with loss_only."""
    if name in SIDES:
        return side_process(name, folder, device, threads, environment, loss_only=name == "visionbridge")
    command = [sys.executable, __file__, "--serve", name, "--folder", str(folder)]
    command += ["--device", device, "--threads", str(threads)]
    return Side(name, command, folder / f"{name.replace(' ', '-')}.log", environment)


def measure(folder: Path, size: str, model_spec: dict, device: str, threads: int) -> dict[str, dict]:
    """Per side: its first step's loss (before any update) and trainable parameters, the seconds of its timed steps
    (the sides of each comparison taking turns, after that first step) and its peak memory over all its steps."""
    # Freed blocks of 64 KiB and more go back to the system, so that peak RSS follows the live tensors.
    environment = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"}
    results = {}
    for group in (COMPARED[comparison] for comparison in model_spec["compared"]):
        with running([start_side(name, folder, device, threads, environment) for name in group]) as sides:
            for side in sides:
                side.ask({"do": "reset_peak"})  # counted from here, after loading
                results[side.name] = side.ask({"do": "train"})  # the warm-up step
            timed = alternate(sides, {"do": "train"}, 0, SIZES[size]["steps"])
            for side in sides:
                seconds = [reply["seconds"] for reply in timed[side.name]]
                results[side.name] |= side.ask({"do": "memory"}) | {"seconds": seconds}
    return results


def _row(metric: str, ours, reference, ratio, goal: str, met, note: str) -> dict:
    return dict(
        section="vocab", metric=metric, ours=ours, reference=reference, ratio=ratio, goal=goal, met=met, note=note
    )


def _judged(ratio: float, goal: float | None, below: bool) -> tuple[str, bool | None]:
    """The goal's text and whether the ratio meets it; not judged without a goal (the tiny size)."""
    if not goal:
        return "reported", None
    return (f"<= {goal}", ratio <= goal) if below else (f">= {goal}x", ratio >= goal)


def rows_for(size: str, model_spec: dict, built: dict, sides: dict, threads: int) -> list[dict]:
    """The rows of one language model from `measure`'s results per side: the first-step losses, then each
    comparison's: time and memory against Llava + peft, and of the floor (BodyWorker) against it; both with
    gradient checkpointing; throughput and memory against TRL (defaults and fp32); packing against TRL's padded
    batches."""
    vocab, goals, compared = model_spec["vocab"], model_spec["goals"] or {}, model_spec["compared"]
    tag = f"{model_spec['type']}, {model_spec['text']['hidden_size']} wide, vocab {vocab:,}" + (
        ", tiny" if size == "tiny" else ""
    )
    vision, (prompt, answer) = SIZES[size]["vision"], SIZES[size]["prompt_answer"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    length = 1 + patches + prompt + answer
    models = (
        f"{model_spec['name']}, {LAYERS} layers, vocab {vocab:,}; CLIP-shaped tower {vision['image_size']} px, "
        f"{patches} patches, {LAYERS} layers; threads: {threads}"
    )
    setting = f"{models}; batch {BATCH} x {length} tokens, {answer} labelled per sample ({answer / length:.0%})"

    if sides[BODY]["loss"] != 0.0:  # the head and loss ran: labelled_loss was not the one replaced
        raise AssertionError(f"{BODY}: first-step loss {sides[BODY]['loss']}, not 0: its LM head ran")
    losses = {
        name: sides[name]["loss"]
        for comparison in ("llava", "llava checkpointed", "trl")
        if comparison in compared
        for name in COMPARED[comparison]
        if name != BODY
    }
    gap = max(abs(loss - losses["llava"]) for name, loss in losses.items() if name not in BF16_SIDES)
    rows = [
        _row(
            f"first-step loss, max |difference| between fp32 sides ({tag})",
            gap,
            None,
            None,
            "<= 0.0001",
            gap <= 1e-4,
            "same weights and batch, before any update: "
            + ", ".join(f"{name} {loss:.6f}" for name, loss in losses.items())
            + (f" ({' and '.join(BF16_SIDES)} at bf16)" if "trl" in losses else "")
            + f"; max |logit difference| ours vs Llava on a sample {built['logit_difference']:.2g}",
        )
    ]

    ours, theirs = sides["visionbridge"], sides["llava"]
    ratio, paired = paired_ratio(ours["seconds"], theirs["seconds"])
    rows.append(
        _row(
            f"training step, s, vs Llava + peft ({tag})",
            statistics.median(ours["seconds"]),
            statistics.median(theirs["seconds"]),
            ratio,
            *_judged(ratio, goals.get("time"), below=True),
            f"{setting}; {LORA}; median of {len(ours['seconds'])} steps per side, {paired}; trainable: ours "
            f"{ours['trainable']}, Llava {theirs['trainable']}",
        )
    )
    rows.append(_memory_row("vs Llava + peft", ours, theirs, tag, goals.get("memory")))
    rows += _floor_rows(sides[BODY], theirs, tag, setting)
    if "llava checkpointed" in compared:
        rows += _checkpointed_rows(sides, tag, setting)
    if "trl" in compared:
        rows += _trl_rows(built["tokens"]["fixed"][0], sides, tag, setting, goals)
    if "packing" in compared:
        rows.append(_packing_row(built["tokens"], sides, tag, models, goals))
    return rows


def _floor_rows(body: dict, theirs: dict, tag: str, setting: str) -> list[dict]:
    """BodyWorker against Llava + peft: the time and memory ratios no LM head and loss can go below."""
    how = "the visionbridge side's step with zero times the body's output at the labelled positions as its loss"
    return _reported_rows(f"{FLOOR}, vs Llava + peft", body, theirs, tag, f"{setting}; {how}")


def _checkpointed_rows(sides: dict, tag: str, setting: str) -> list[dict]:
    """Ours against Llava + peft, both with gradient checkpointing."""
    ours, theirs = (sides[name] for name in CHECKPOINTED)
    how = f"{setting}; {LORA}; transformers' gradient checkpointing (non-reentrant) on both"
    trainable = f"; trainable: ours {ours['trainable']}, Llava {theirs['trainable']}"
    return _reported_rows("vs Llava + peft, both with gradient checkpointing", ours, theirs, tag, how, trainable)


def _reported_rows(versus: str, ours: dict, theirs: dict, tag: str, how: str, trainable: str = "") -> list[dict]:
    """A training step's time and peak memory, ours against theirs, reported without a goal."""
    ratio, paired = paired_ratio(ours["seconds"], theirs["seconds"])
    return [
        _row(
            f"training step, s, {versus} ({tag})",
            statistics.median(ours["seconds"]),
            statistics.median(theirs["seconds"]),
            ratio,
            "reported",
            None,
            f"{how}; median of {len(ours['seconds'])} steps per side, {paired}{trainable}",
        ),
        _memory_row(versus, ours, theirs, tag, None),
    ]


def _trl_rows(tokens: int, sides: dict, tag: str, setting: str, goals: dict) -> list[dict]:
    """Our trainer at its defaults (fp32) against SFTTrainer's defaults and at fp32 (the same precision)."""
    rows, ours = [], sides["visionbridge trainer"]
    for reference, name, how in (
        ("trl", "TRL SFTTrainer defaults", TRL_DEFAULTS),
        ("trl fp32", "TRL SFTTrainer fp32", TRL_FP32),
    ):
        theirs = sides[reference]
        # Their time over ours: our throughput over theirs.
        ratio, paired = paired_ratio(theirs["seconds"], ours["seconds"])
        rows.append(
            _row(
                f"real training tokens/s, vs {name} ({tag})",
                tokens / statistics.median(ours["seconds"]),
                tokens / statistics.median(theirs["seconds"]),
                ratio,
                *_judged(ratio, TRL_GOALS["throughput"] if goals else None, below=False),
                f"{setting}; VisionBridgeTrainer at its defaults (fp32) vs SFTTrainer {how}; {tokens} real tokens "
                f"per step; median of {len(ours['seconds'])} steps per side, {paired}; trainable: ours "
                f"{ours['trainable']}, TRL {theirs['trainable']}",
            )
        )
        goal = TRL_GOALS["memory"] if goals and reference == "trl" else None
        rows.append(_memory_row(f"vs {name}", ours, theirs, tag, goal))
    return rows


def _memory_row(versus: str, ours: dict, theirs: dict, tag: str, goal: float | None) -> dict:
    ratio = ours["peak_memory_mib"] / theirs["peak_memory_mib"]
    return _row(
        f"peak training memory, MiB, {versus} ({tag})",
        ours["peak_memory_mib"],
        theirs["peak_memory_mib"],
        ratio,
        *_judged(ratio, goal, below=True),
        "peak RSS over the side's steps, counted from after loading, above the RSS after imports (the model's "
        "weights included); freed blocks >= 64 KiB returned to the system",
    )


def _packing_row(tokens: dict, sides: dict, tag: str, models: str, goals: dict) -> dict:
    ours, theirs = sides["visionbridge packed"]["seconds"], sides["trl padded"]["seconds"]
    timed = slice(1, 1 + len(ours))  # after the warm-up batch
    real, slots, longest = tokens["mix"][timed], tokens["slots"][timed], tokens["longest"][timed]
    ratio, paired = paired_ratio(theirs, ours)
    return _row(
        f"real training tokens/s, packed (ours) vs TRL SFTTrainer defaults, padded ({tag})",
        sum(real) / sum(ours),
        sum(real) / sum(theirs),
        ratio,
        *_judged(ratio, TRL_GOALS["throughput"] if goals else None, below=False),
        f"{models}; LLaVA-1.5-like mix (bench_packing), {BATCH} samples per batch, cut at {MODEL_MAX_LENGTH} tokens; "
        f"VisionBridgeTrainer with packing=True vs SFTTrainer's defaults on padded batches; {len(ours)} steps per "
        f"side, {paired}; {sum(real) / len(real):.0f} real tokens per batch on average, longest sample per batch "
        f"{min(longest)}-{max(longest)}, padding {1 - sum(real) / sum(slots):.0%} of the padded batches",
    )


def run(size: str, device: str) -> list[dict]:
    """Rows for `tiny`, or for the real vocabularies at `100m` (the full size), or both (`all`)."""
    if size == "all":
        return [row for name in SIZES for row in run(name, device)]
    threads, rows = torch.get_num_threads(), []
    for model_spec in SIZES[size]["models"]:
        with tempfile.TemporaryDirectory() as directory:
            folder = Path(directory)
            built = build(folder, size, model_spec)
            sides = measure(folder, size, model_spec, device, threads)
        rows += rows_for(size, model_spec, built, sides, threads)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=[*SIZES, "all"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--serve", choices=[*TRAINERS, BODY, *CHECKPOINTED], help="internal: run one side")
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if args.serve == BODY:
        serve(lambda: BodyWorker(args.folder, args.device, args.threads))
    elif args.serve in CHECKPOINTED:
        serve(lambda: CheckpointedWorker(args.serve, args.folder, args.device, args.threads))
    elif args.serve:
        serve(lambda: TrainerSide(args.serve, args.folder, args.device, args.threads))
    else:
        print(json.dumps(run(args.size, args.device), indent=1))


if __name__ == "__main__":
    main()
