"""VisionBridgeTrainingArguments: `TrainingArguments` plus what a VLM fine-tune needs (stage, LoRA, per-part LRs)."""

from dataclasses import dataclass, field

from transformers import TrainingArguments

STAGES = ("align", "instruct", "full")
_REENTRANT_BY_DEFAULT = "activation_checkpointing_kwargs" not in TrainingArguments.__dataclass_fields__


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
            "help": "Module names to adapt, as a regex over the last name part or a comma list (q_proj,v_proj; "
            "c_attn|w1|w2). Applied inside the LLM only (and the vision tower with --lora_vision); default: "
            "every linear layer of the LLM except its output head."
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
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: samples are chat records that only the collator reads."}
    )

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}.")
        if self.freeze_language_model is None:
            self.freeze_language_model = self.stage != "full"
        if self.stage == "full" and self.freeze_language_model:
            raise ValueError("stage='full' trains the LLM's weights: it cannot be combined with freeze_language_model.")
        if self.use_qlora and self.stage != "instruct":
            raise ValueError("use_qlora trains LoRA over a frozen 4-bit LLM: it needs stage='instruct'.")
        # Non-reentrant checkpointing keeps gradients flowing when the tower and embeddings are frozen;
        # transformers 5 (which renamed the field) already defaults to it.
        if _REENTRANT_BY_DEFAULT and self.gradient_checkpointing_kwargs is None:
            self.gradient_checkpointing_kwargs = {"use_reentrant": False}
        super().__post_init__()

    @property
    def uses_lora(self) -> bool:
        return self.stage == "instruct" or self.lora_vision
