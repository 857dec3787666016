"""VisionBridgeTrainingArguments: `TrainingArguments` plus what a VLM fine-tune needs (stage, LoRA, per-part LRs)."""

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..compat import CHECKPOINTING_IS_REENTRANT_BY_DEFAULT, TRAINING_ARGUMENTS_HAVE_WARMUP_RATIO
from .bad_samples import ON_BAD_SAMPLE

STAGES = ("align", "instruct", "full")


@dataclass
class VisionBridgeTrainingArguments(TrainingArguments):
    stage: str = field(
        default="instruct",
        metadata={
            "help": "align: train the connector only (LLaVA stage 1); instruct: connector + LoRA on the LLM "
            "(stage 2); full: connector + every LLM weight.",
            "choices": list(STAGES),
        },
    )
    connector_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the connector (default: learning_rate), e.g. 1e-4 vs 3e-5."}
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
            "cost the square of a row's length; under flash attention the model lays the rows end to end)."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: samples are chat records that only the collator reads."}
    )
    if not TRAINING_ARGUMENTS_HAVE_WARMUP_RATIO:  # LLaVA's scripts still pass it
        warmup_ratio: float | None = field(
            default=None, metadata={"help": "Share of the training steps spent warming up (sets warmup_steps)."}
        )

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}.")
        if self.on_bad_sample not in ON_BAD_SAMPLE:
            raise ValueError(f"on_bad_sample must be one of {', '.join(ON_BAD_SAMPLE)}, got {self.on_bad_sample!r}.")
        if self.freeze_language_model is None:
            self.freeze_language_model = self.stage != "full"
        if self.stage == "full" and self.freeze_language_model:
            raise ValueError("stage='full' trains the LLM's weights: it cannot be combined with freeze_language_model.")
        # A LoRA run saves an adapter (LoRA + connector): weights trained outside it would be lost.
        if self.uses_lora and not self.freeze_vision_tower:
            raise ValueError(
                "freeze_vision_tower=False trains the tower's own weights, which a LoRA adapter does not save: "
                "use lora_vision to adapt the tower, or stage='full' without lora_vision to train it fully."
            )
        if self.stage == "instruct" and not self.freeze_language_model:
            raise ValueError(
                "stage='instruct' saves a LoRA adapter, which would not hold LLM weights trained with "
                "freeze_language_model=False: use stage='full' to train every LLM weight."
            )
        if self.stage == "full" and self.lora_vision:
            raise ValueError(
                "stage='full' with lora_vision would save only an adapter and lose the trained LLM weights: "
                "train the tower with freeze_vision_tower=False instead."
            )
        if not TRAINING_ARGUMENTS_HAVE_WARMUP_RATIO and self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
            if self.warmup_steps:
                raise ValueError("Pass warmup_ratio or warmup_steps, not both.")
            self.warmup_steps = self.warmup_ratio
        if self.use_qlora and self.stage != "instruct":
            raise ValueError("use_qlora trains LoRA over a frozen 4-bit LLM: it needs stage='instruct'.")
        # Reentrant checkpointing fails on a text-only batch: behind frozen embeddings no input of the checkpointed
        # layers requires grad.
        if CHECKPOINTING_IS_REENTRANT_BY_DEFAULT and self.gradient_checkpointing_kwargs is None:
            self.gradient_checkpointing_kwargs = {"use_reentrant": False}
        super().__post_init__()

    @property
    def uses_lora(self) -> bool:
        return self.stage == "instruct" or self.lora_vision
