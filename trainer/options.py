"""What a VisionBridge fine-tune adds to the Trainer's arguments: stage, per-part learning rates, LoRA, data handling.

Kept apart from `VisionBridgeTrainingArguments` (which adds them to transformers' `TrainingArguments`) so that the
`visionbridge train` command can list them without loading the Trainer.
"""

from dataclasses import dataclass, field

STAGES = ("align", "instruct", "full", "qformer_pretrain")
ON_BAD_SAMPLE = ("raise", "skip")


@dataclass
class VisionBridgeOptions:
    stage: str = field(
        default="instruct",
        metadata={
            "help": "align: train the connector only (LLaVA stage 1); instruct: connector + LoRA on the LLM "
            "(stage 2); full: connector + every LLM weight; qformer_pretrain: BLIP-2's first stage, the Q-Former "
            "and its queries against the frozen tower by image-text contrast, no LLM (saves the whole model).",
            "choices": list(STAGES),
        },
    )
    connector_lr: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the connector, e.g. 1e-4 vs 3e-5. Default: the connector's own (qformer and "
            "resampler: 1e-3), else learning_rate."
        },
    )
    vision_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the vision tower's trainable part (default: learning_rate)."}
    )
    freeze_vision_tower: bool = field(
        default=True, metadata={"help": "Keep the vision tower's own weights frozen (LoRA on it is still allowed)."}
    )
    freeze_language_model: bool | None = field(
        default=None,
        metadata={"help": "Keep the LLM's own weights frozen. Default: frozen for align and instruct, not for full."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": "Names of the modules to adapt (the last part of their name), separated by commas or '|': "
            "q_proj,v_proj or c_attn|w1|w2. Applied inside the LLM only (and the vision tower with "
            "--lora_vision); default: every linear layer of the LLM except its output head."
        },
    )
    lora_vision: bool = field(default=False, metadata={"help": "Also put LoRA adapters on the vision tower."})
    use_qlora: bool = field(
        default=False, metadata={"help": "Train LoRA over a 4-bit LLM (bitsandbytes, needs a CUDA GPU)."}
    )
    model_max_length: int | None = field(
        default=None,
        metadata={
            "help": "Longest sample in tokens; longer ones are cut after their last image or dropped. "
            "Default: the tokenizer's model_max_length."
        },
    )
    on_bad_sample: str = field(
        default="raise",
        metadata={
            "help": "What a sample that fails to load or encode (missing or corrupt image, placeholder mismatch, ...) "
            "does: raise (stop, naming the record and file) or skip (leave it out, count it, report it at the end).",
            "choices": list(ON_BAD_SAMPLE),
        },
    )
    packing: bool = field(
        default=False,
        metadata={
            "help": "Lay each batch's samples end to end in rows no longer than its longest sample (one unpadded row "
            "under flash attention), padding only at the end of a row; attention stays within each sample (LLaMA, "
            "Mistral, Qwen2, Qwen3 language models; eager, sdpa, flex or flash attention)."
        },
    )
    packing_row_length: int | None = field(
        default=None,
        metadata={
            "help": "With packing, rows of up to this many tokens instead of the default (eager and sdpa attention "
            "cost the square of a row's length); not under flash attention, which packs each batch into one row."
        },
    )
